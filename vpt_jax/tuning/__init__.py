"""Tuning strategies as rule tables, the optimizer they drive, budgets and per-task artifacts.

The names load on first use, so `python -m vpt_jax.tuning.budget` runs its module once (not also
as a side effect of importing the package).
"""

from __future__ import annotations

from vpt_jax import lazy

_LAZY = {
    "export_artifact": "vpt_jax.tuning.artifact",
    "load_artifact": "vpt_jax.tuning.artifact",
    "label_tree": "vpt_jax.tuning.rules",
    "masked_optimizer": "vpt_jax.tuning.rules",
    "merge": "vpt_jax.tuning.rules",
    "split": "vpt_jax.tuning.rules",
    "STRATEGIES": "vpt_jax.tuning.strategies",
    "Strategy": "vpt_jax.tuning.strategies",
    "get_strategy": "vpt_jax.tuning.strategies",
}

__all__ = sorted(_LAZY)


__getattr__, __dir__ = lazy.exports(__name__, _LAZY)

"""Tuning strategies as rule tables, the optimizer they drive, budgets and per-task artifacts."""

from vpt_jax.tuning.artifact import export_artifact, load_artifact
from vpt_jax.tuning.rules import label_tree, masked_optimizer, merge, split
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy

__all__ = [
    "STRATEGIES",
    "Strategy",
    "export_artifact",
    "get_strategy",
    "label_tree",
    "load_artifact",
    "masked_optimizer",
    "merge",
    "split",
]

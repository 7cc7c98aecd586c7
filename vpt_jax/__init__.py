"""vpt_jax: visual prompt tuning or full finetuning? The ICLR 2024 study in JAX/Flax, as a tool.

The small public API:

    model = vpt_jax.create_model("B/16", num_classes=100)
    params = vpt_jax.load_pretrained("ViT-B_16.npz", model)
    logits, out = model.apply({"params": params}, images)   # out["pre_logits"]: features

The names load on first use, so `import vpt_jax.<command>` does not import JAX before it needs it
(a command's `--help` answers at once).
"""

from __future__ import annotations

import importlib
from typing import Any

from vpt_jax.errors import UserError

_LAZY = {
    "CheckpointError": "vpt_jax.models.checkpoint",
    "load_pretrained": "vpt_jax.models.checkpoint",
    "read_npz": "vpt_jax.models.checkpoint",
    "save_npz": "vpt_jax.models.checkpoint",
    "VisionTransformer": "vpt_jax.models.vit",
    "ViTConfig": "vpt_jax.models.vit",
    "create_model": "vpt_jax.models.vit",
    "init_params": "vpt_jax.models.vit",
}

__all__ = ["UserError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'vpt_jax' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

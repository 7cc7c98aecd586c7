"""vpt_jax: visual prompt tuning or full finetuning? The ICLR 2024 study in JAX/Flax, as a tool.

The small public API:

    model = vpt_jax.create_model("B/16", num_classes=100)
    params = vpt_jax.load_pretrained("ViT-B_16.npz", model)
    logits, out = model.apply({"params": params}, images)   # out["pre_logits"]: features

The names load on first use, so `import vpt_jax.<command>` does not import JAX before it needs it
(a command's `--help` answers at once).
"""

from __future__ import annotations

from vpt_jax import lazy
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


__getattr__, __dir__ = lazy.exports(__name__, _LAZY)

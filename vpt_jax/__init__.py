"""vpt_jax: visual prompt tuning or full finetuning? The ICLR 2024 study in JAX/Flax, as a tool.

The small public API:

    model = vpt_jax.create_model("B/16", num_classes=100)
    params = vpt_jax.load_pretrained("ViT-B_16.npz", model)
    logits, out = model.apply({"params": params}, images)   # out["pre_logits"]: features
"""

from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import CheckpointError, load_pretrained, read_npz, save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, create_model, init_params

__all__ = [
    "CheckpointError",
    "UserError",
    "ViTConfig",
    "VisionTransformer",
    "create_model",
    "init_params",
    "load_pretrained",
    "read_npz",
    "save_npz",
]

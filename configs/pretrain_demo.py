r"""Pretrains the demo's tiny ViT on procedural data (the stand-in for ImageNet-21k).

    python -m vpt_jax.main --config configs/pretrain_demo.py --workdir runs/pretrain_demo
    cp runs/pretrain_demo/checkpoint.npz vpt_jax/assets/vit_tiny_procedural.npz

A ViT with patch 8, width 128, 4 blocks, 4 heads (about 0.8M parameters) learns the 5 texture
classes of `procedural:textures` (whole-image textures on varied colours) at 32x32 from scratch with
AdamW. (The 40-class `procedural:pretrain` task is too hard for a ViT this small to start learning
within a CPU budget: it stays at chance for thousands of steps.) The final model is written in the
google-research checkpoint layout (`checkpoint.npz`, with its 5-way head) and ships as
`vpt_jax/assets/vit_tiny_procedural.npz`. On 2 CPU cores this takes about 5 minutes.
"""

from __future__ import annotations

from vpt_jax.cli import ConfigArgumentError
from vpt_jax.config import base_config


def get_config(arg: str | None = None):
    if arg:
        raise ConfigArgumentError(f"config argument {arg!r}: configs/pretrain_demo.py takes none")
    c = base_config()
    c.model.variant = "custom"
    c.model.patch_size = 8
    c.model.hidden_size = 128
    c.model.num_layers = 4
    c.model.num_heads = 4
    c.model.mlp_dim = 512
    c.model.image_size = 32
    c.data.dataset = "procedural:textures"
    c.data.train_split = "train20000"
    c.data.eval_splits = ("test2000",)
    c.strategy.name = "full"
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.004  # x 64/256 = 0.001 peak
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_epochs = 1
    c.optimizer.scale_lr_by_batch = True
    c.train.epochs = 8
    c.train.batch_size = 64
    c.train.eval_batch_size = 500
    c.train.seed = 0
    c.train.export_checkpoint = True
    return c

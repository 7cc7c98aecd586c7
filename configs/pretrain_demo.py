r"""Pretrains the demo's small ViT on procedural data (the stand-in for ImageNet-21k).

    python -m vpt_jax.main --config configs/pretrain_demo.py --workdir runs/pretrain_demo
    cp runs/pretrain_demo/checkpoint.npz vpt_jax/assets/vit_tiny_procedural.npz

A ViT with patch 8, width 128, 4 blocks, 4 heads (0.83M parameters) learns the 40 classes of
`procedural:pretrain` (10 shapes x 4 textures of an object on a cluttered background, varied
colours, sizes, positions and rotations) at 32x32 from scratch with AdamW: 80,000 images, 24
epochs, batch 128, peak lr 0.002 after 2 warmup epochs, cosine decay. The final model is written
in the google-research checkpoint layout (`checkpoint.npz`, with its 40-way head) and ships as
`vpt_jax/assets/vit_tiny_procedural.npz`. On this project's 2-core CPU machine the shipped model took
28 min 31 s (with other work sharing the cores at times) and reached 29.8% top-1 on test2000 (chance
2.5%; 53.6% on its last training epoch: it overfits the 80,000 images from epoch 16 on, where the
test top-1 stops rising at about 30%).
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
    c.data.dataset = "procedural:pretrain"
    c.data.train_split = "train80000"
    c.data.eval_splits = ("test2000",)
    c.strategy.name = "full"
    c.optimizer.name = "adamw"
    c.optimizer.lr = 0.004  # x 128/256 = 0.002 peak
    c.optimizer.weight_decay = 0.05
    c.optimizer.warmup_epochs = 2
    c.optimizer.scale_lr_by_batch = True
    c.train.epochs = 24
    c.train.batch_size = 128
    c.train.eval_batch_size = 500
    c.train.seed = 0
    c.train.checkpoint_every_epochs = 2  # resumable
    c.train.export_checkpoint = True
    return c

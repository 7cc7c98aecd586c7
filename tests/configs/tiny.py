"""The tiny setting of tests/test_train.py for CLI runs (the checkpoint comes as an override).

python -m vpt_jax.main --config tests/configs/tiny.py --config.model.checkpoint=X.npz --workdir W
"""

from __future__ import annotations

from vpt_jax.config import base_config


def get_config(arg: str | None = None):
    del arg
    c = base_config()
    c.model.variant = "auto"
    c.model.image_size = 16
    c.data.dataset = "procedural:location"
    c.data.train_split = "train64"
    c.data.eval_splits = ("val24", "test40")
    c.strategy.name = "vpt_deep"
    c.strategy.num_prompts = 2
    c.optimizer.lr = 0.5
    c.optimizer.warmup_epochs = 1
    c.train.epochs = 2
    c.train.batch_size = 16
    c.train.eval_batch_size = 16
    return c

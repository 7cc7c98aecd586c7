"""A tiny study for tests: two procedural tasks, two strategies, a 2x2 grid, 2 seeds.

    python -m vpt_jax.main --config tests/configs/tiny_study.py --config.run.model.checkpoint=X.npz \
        --workdir W
"""

from __future__ import annotations

from vpt_jax.study.config import study_config


def get_config(arg: str | None = None):
    del arg
    c = study_config()
    r = c.run
    r.model.variant = "auto"
    r.model.image_size = 16
    r.optimizer.warmup_epochs = 1
    r.train.epochs = 2
    r.train.batch_size = 16
    r.train.eval_batch_size = 32
    r.train.checkpoint_every_epochs = 2
    s = c.study
    s.datasets = ("procedural:location", "procedural:objects")
    s.strategies = ("full", "vpt_deep")
    s.num_prompts = 2
    s.search.train_split = "train32"
    s.search.eval_split = "val16"
    s.final.train_split = "train32val16"
    s.final.eval_split = "test32"
    s.final.seeds = (1, 2)
    s.grids.prompt.lrs = (0.5, 0.1)
    s.grids.prompt.weight_decays = (0.0, 0.001)
    s.grids.finetune.lrs = (0.01, 0.001)
    s.grids.finetune.weight_decays = (0.0, 0.001)
    s.poll_interval_s = 0.2
    return c

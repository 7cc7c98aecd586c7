r"""The embedded offline demo: a small FT-vs-VPT study on procedural tasks (the README's main job).

    python -m vpt_jax.main --config configs/demo.py --workdir runs/demo      # or: bash scripts/demo.sh

The backbone is the tiny ViT shipped in `vpt_jax/assets/vit_tiny_procedural.npz` (pretrained by
`configs/pretrain_demo.py` on procedural textures, saved in the google-research checkpoint layout).
FT, linear probing, VPT-shallow, VPT-deep and Mixed are compared on three procedural tasks: `objects`
(natural-like: textured objects in clutter, close to the pretraining images) and two structured tasks
far from it, `count` and `location`. Protocol as the paper's, scaled down: a 2-point lr grid per
strategy trained on train160 and scored on val40, the best setting retrained on train160val40 and
scored on test300 (one seed: the demo trades the std over seeds for time). 45 runs of 10 epochs; about
3-5 minutes on 2 CPU cores. Writes runs/demo/report/{results.md, results.csv, loss_curves.png, wins.png}.
Arguments (comma-separated): `tiny` shrinks everything to a smoke test (used by the test suite);
`recipe=reference` trains with the official VPT code's recipe instead of the clean one (README,
"Training recipes"; the demo's grids, batch size and warmup stay the same in both).
"""

from __future__ import annotations

import os

import vpt_jax
from vpt_jax import recipe
from vpt_jax.cli import ConfigArgumentError
from vpt_jax.study.config import study_config

DEMO_CHECKPOINT = os.path.join(
    os.path.dirname(vpt_jax.__file__), "assets", "vit_tiny_procedural.npz"
)


def get_config(arg: str | None = None):
    parts = [p for p in (arg or "").split(",") if p]
    tiny = "tiny" in parts
    options = dict(p.split("=", 1) for p in parts if p != "tiny" and "=" in p)
    if any(p != "tiny" and "=" not in p for p in parts) or set(options) - {"recipe"}:
        raise ConfigArgumentError(
            f"config argument {arg!r}: configs/demo.py takes 'tiny' and/or 'recipe=clean|reference'"
        )
    c = study_config()
    r = c.run
    r.recipe = options.get("recipe", recipe.CLEAN)
    if r.recipe not in recipe.RECIPES:
        raise ConfigArgumentError(f"recipe={r.recipe!r}: use one of {', '.join(recipe.RECIPES)}")
    r.model.variant = "auto"  # widths read from the checkpoint
    r.model.checkpoint = DEMO_CHECKPOINT
    r.model.image_size = 32
    r.optimizer.warmup_epochs = 2
    r.train.epochs = 10
    r.train.batch_size = 32
    r.train.eval_batch_size = 300
    r.train.checkpoint_every_epochs = 5

    s = c.study
    s.datasets = ("procedural:objects", "procedural:count", "procedural:location")
    s.strategies = ("full", "linear", "vpt_shallow", "vpt_deep", "mixed")
    s.num_prompts = 5
    s.search.train_split = "train160"
    s.search.eval_split = "val40"
    s.final.train_split = "train160val40"
    s.final.eval_split = "test300"
    s.final.seeds = (42,)
    s.grids.prompt.lrs = (1.0, 0.2)  # x 32/256
    s.grids.prompt.weight_decays = (0.0,)
    s.grids.finetune.lrs = (0.004, 0.001)  # x 32/256
    s.grids.finetune.weight_decays = (0.0,)
    for grid in (s.grids.prompt, s.grids.finetune):  # the same in both recipes
        grid.batch_size, grid.warmup_epochs = r.train.batch_size, r.optimizer.warmup_epochs
    s.poll_interval_s = 0.5
    if tiny:
        r.train.epochs = 2
        r.train.checkpoint_every_epochs = 2
        s.datasets = ("procedural:count",)
        s.strategies = ("full", "vpt_deep")
        s.search.train_split, s.search.eval_split = "train32", "val16"
        s.final.train_split, s.final.eval_split = "train32val16", "test32"
        s.grids.prompt.lrs = (1.0,)
        s.grids.finetune.lrs = (0.001,)
    return c

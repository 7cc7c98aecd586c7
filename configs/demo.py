r"""The embedded offline demo: the paper's study in miniature (the README's main job).

    python -m vpt_jax.main --config configs/demo.py --workdir runs/demo      # or: bash scripts/demo.sh

The backbone is the small ViT shipped in `vpt_jax/assets/vit_tiny_procedural.npz`, pretrained by
`configs/pretrain_demo.py` on `procedural:pretrain` (40 classes: 10 shapes x 4 textures of objects
in clutter; the stand-in for ImageNet-21k) and saved in the google-research checkpoint layout.
Five tasks meant to span the paper's quadrants; the report measures where each one lies (its FID
to the pretraining images in the backbone's own feature space) rather than taking it from here:

| task | disparity | meant to be | what it is |
| --- | --- | --- | --- |
| shapes | low | similar | 6 shapes pretraining never shows, rendered as pretraining's |
| scene_location | high | similar | x position (5 bins) of a pretraining-like object in clutter |
| scene_count | high | similar | number (1-5) of pretraining-like objects in clutter |
| digits | low | dissimilar | real handwritten digit scans (UCI, shipped), light on dark |
| location | high | dissimilar | x position (8 bins) of a white sprite on black |

FT, linear probing, VPT-shallow, VPT-deep and Mixed; the paper's protocol scaled down: a 2-point lr
grid per strategy trained on train160 and scored on val40, the selected setting retrained on
train160val40 with 3 seeds and scored on the 1,000 test images (mean +- std). Beside it, a data-
scaling sweep: FT and VPT-deep on shapes and digits at 800 training images (val 200), against the
160 of the main study. Matmuls run in bfloat16 with float32 accumulation (1.3x faster on the CPU). The report (runs/demo/report) adds the quadrant section: FIDs, quadrant
figure and table, the measured winner with its margin and significance, and the advisor's verdict.
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
TASKS = ("shapes", "scene_location", "scene_count", "digits", "location")
SCALING_TASKS = ("shapes", "digits")


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
    # bfloat16 matmuls with float32 accumulation (vpt_jax.models.precision): 1.3x faster here
    # (997 -> 1319 img/s FT on 1,600 images), the same losses to 3 decimals.
    r.model.precision = "bf16"
    r.optimizer.warmup_epochs = 2
    r.train.epochs = 10
    r.train.batch_size = 32
    r.train.eval_batch_size = 500
    r.train.checkpoint_every_epochs = 0  # runs of seconds: a killed run starts over

    s = c.study
    s.datasets = tuple(f"procedural:{t}" for t in TASKS)
    s.strategies = ("full", "linear", "vpt_shallow", "vpt_deep", "mixed")
    s.num_prompts = 5
    s.search.train_split = "train160"
    s.search.eval_split = "val40"
    s.final.train_split = "train160val40"
    s.final.eval_split = "test"
    s.final.seeds = (42, 44, 82)
    s.final.curve_every_epochs = 2
    s.final.curve_examples = 250
    s.scaling.datasets = tuple(f"procedural:{t}" for t in SCALING_TASKS)
    s.scaling.strategies = ("full", "vpt_deep")
    s.scaling.sizes = (160, 800)  # 160: the main study's runs
    s.quadrants.reference = "procedural:pretrain"
    s.quadrants.reference_split = "test"  # pretraining images the backbone never trained on
    s.quadrants.features = "vit"  # the demo backbone's own features (no Inception weights)
    s.quadrants.num_images = 1000
    s.grids.prompt.lrs = (1.0, 0.25)  # x 32/256
    s.grids.prompt.weight_decays = (0.0,)
    s.grids.finetune.lrs = (0.004, 0.001)  # x 32/256
    s.grids.finetune.weight_decays = (0.0,)
    for grid in (s.grids.prompt, s.grids.finetune):  # the same in both recipes
        grid.batch_size, grid.warmup_epochs = r.train.batch_size, r.optimizer.warmup_epochs
    s.poll_interval_s = 0.5
    if tiny:
        r.train.epochs = 2
        s.datasets = ("procedural:scene_count", "procedural:digits")
        s.strategies = ("full", "vpt_deep")
        s.search.train_split, s.search.eval_split = "train32", "val8"
        s.final.train_split, s.final.eval_split = "train32val8", "test32"
        s.final.seeds = (42, 44)
        s.final.curve_every_epochs, s.final.curve_examples = 1, 16
        s.scaling.datasets = ("procedural:digits",)
        s.scaling.sizes = (32, 64)
        s.quadrants.num_images = 40
        s.grids.prompt.lrs = (1.0,)
        s.grids.finetune.lrs = (0.001,)
    return c

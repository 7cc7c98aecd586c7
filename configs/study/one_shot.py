r"""One-shot (Tables 3-4): FT vs VPT with one training and one validation example per class.

    python -m vpt_jax.main --config configs/study/one_shot.py \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_one_shot

The k-shot draw (data.shots, seeded by data.seed) takes k examples per class from train800 for
training and from val200 for validation; the final runs train on k per class of train800val200.
Trained with the `reference` recipe (as configs/study/vtab.py); argument `recipe=clean` switches.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = vtab_datasets("all")
    c.study.strategies = ("full", "vpt_deep")
    c.study.shots = 1
    c.run.train.batch_size = 16  # a one-shot split has as many examples as classes
    c.study.grids.prompt.batch_size = c.study.grids.finetune.batch_size = 16  # (in both recipes)
    apply_args(c, arg, ("tasks", "strategies", "seeds", "shots", "epochs", "recipe"))
    return c

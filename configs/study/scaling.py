r"""Data scaling (Figure 4): FT vs VPT as the training set grows from 400 to 20,000 (train:val 4:1).

    python -m vpt_jax.main --config configs/study/scaling.py:tasks=cifar100+svhn+eurosat+clevr_count \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_scaling

Each size n trains on the first n examples of VTAB's training part and validates on the first n/4 of
its validation part (sizes a task cannot supply are refused with its maximum; caltech101 stops at
1224). Default sizes 400, 800, 1600, 3200, 6400, 12800, 20000; figure: report/scaling.png (FT solid,
VPT dotted, log axis).
Trained with the `reference` recipe (as configs/study/vtab.py); argument `recipe=clean` switches.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = vtab_datasets("cifar100+svhn_cropped+eurosat+clevr_count")
    c.study.strategies = ("full", "vpt_deep")
    c.study.train_sizes = (400, 800, 1600, 3200, 6400, 12800, 20000)
    apply_args(c, arg, ("tasks", "strategies", "seeds", "sizes", "epochs", "recipe"))
    return c

r"""Longer training on enlarged splits: do FT and VPT overfit? (loss curves, Figure 5 style)

    python -m vpt_jax.main --config configs/study/overfitting.py:tasks=cifar100+dtd \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_overfitting

Trains 300 epochs on a 4x larger split (3200 training images, 800 validation) and records train and
test loss every epoch; report/loss_curves.png draws them per task and strategy.
Trained with the `reference` recipe (as configs/study/vtab.py); argument `recipe=clean` switches.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.run.train.epochs = 300
    c.run.optimizer.warmup_epochs = 10
    c.study.datasets = vtab_datasets("cifar100+dtd+clevr_count+smallnorb_azimuth")
    c.study.strategies = ("full", "vpt_deep")
    c.study.train_sizes = (3200,)
    apply_args(c, arg, ("tasks", "strategies", "seeds", "sizes", "epochs", "recipe"))
    return c

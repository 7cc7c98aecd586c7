r"""Linear and MLP probes and LoRA against FT and VPT on VTAB-1k (the paper's extra baselines).

    python -m vpt_jax.main --config configs/study/probes.py:tasks=all \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_probes

Strategies: linear (head only), mlp (3-layer MLP head), lora (rank 8 on query/value), with FT and
VPT-deep as references; same protocol as configs/study/vtab.py.
Trained with the `reference` recipe (as configs/study/vtab.py); argument `recipe=clean` switches.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = vtab_datasets("all")
    c.study.strategies = ("full", "vpt_deep", "linear", "mlp", "lora")
    apply_args(c, arg, ("tasks", "strategies", "seeds", "epochs", "recipe"))
    return c

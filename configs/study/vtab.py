r"""Tables 1-2: FT vs VPT (and Mixed, FT-then-PT) on the 19 VTAB-1k tasks, the paper's protocol.

    python -m vpt_jax.main --config configs/study/vtab.py \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_vtab
    # a subset:  --config configs/study/vtab.py:tasks=cifar100+dtd,strategies=full+vpt_deep,seeds=42
    # the clean recipe:  --config configs/study/vtab.py:recipe=clean

Protocol: per task and strategy, lr x wd grid (prompt tuning: 10 lr x 4 wd with SGD; FT: 4 lr x 4 wd
with AdamW) trained on train800 and scored on val200 at the last epoch (ties: smaller lr); the best
setting retrained on train800val200 with seeds 42, 44, 82, 100, 800 and scored on test; reported:
mean and std. ViT-B/16 (ImageNet-21k), 224x224, 100 epochs, cosine. Trained with the `reference`
recipe (the official VPT code's training, README "Training recipes"): prompt methods at batch 64
with 10 warmup epochs, FT at batch 128 with 5, and FT's AdamW decays > 0 trained as the official
0.01 (so its grid is 4 lr x (0.01, 0 = SGD): 8 distinct runs). `recipe=clean` in the argument
trains with vpt_jax's own recipe instead (all at batch 64, 10 warmup epochs, the 16 FT settings).
Start more workers on the same --workdir (other GPUs, hosts, a Slurm array) to share the runs.
Report: runs/study_vtab/report/results.md (`python -m vpt_jax.study.report --workdir ...`).
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = vtab_datasets("all")
    c.study.strategies = ("full", "vpt_deep", "mixed", "ft_then_pt")
    apply_args(c, arg, ("tasks", "strategies", "seeds", "epochs", "recipe"))
    return c

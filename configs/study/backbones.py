r"""Appendix C (Tables 7-15): FT vs VPT on the 19 VTAB-1k tasks with Swin-B, MAE and MoCo v3.

    python -m vpt_jax.main --config configs/study/backbones.py:backbone=swin \
        --config.run.model.checkpoint=/path/to/swin_base_patch4_window7_224_22k.pth \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_swin
    python -m vpt_jax.main --config configs/study/backbones.py:backbone=mae \
        --config.run.model.checkpoint=/path/to/mae_pretrain_vit_base.pth --workdir runs/study_mae
    python -m vpt_jax.main --config configs/study/backbones.py:backbone=moco_v3 \
        --config.run.model.checkpoint=/path/to/linear-vit-b-300ep.pth.tar --workdir runs/study_moco
    # a subset:  ...backbones.py:backbone=mae,tasks=cifar100+dtd,seeds=42

One study per backbone (each its own workdir; start several workers on one to share its runs).
Backbones (README "Backbones"): `swin` = Swin-B, supervised ImageNet-21k (the official `.pth` or
timm's `swin_base_patch4_window7_224.ms_in22k` safetensors); `mae` = ViT-B/16 MAE (global average
pool over the non-class tokens, prompts included, then a fresh `fc_norm`); `moco_v3` = ViT-B/16
MoCo v3 (class token; its position embedding stays frozen even under FT). `.pth` files need torch
to read; `python -m vpt_jax.models.convert IN OUT.safetensors` converts them once.

Protocol of Tables 1-2 (`configs/study/vtab.py`): per task the lr x wd grid on train800 scored on
val200, then the selected setting with seeds 42, 44, 82, 100, 800 on train800val200 scored on test;
the `reference` recipe (official training: ImageNet mean/std, exact GELU, no backbone dropout for
these backbones; stochastic depth under FT as the official code: Swin 0.5, MAE 0.1, MoCo 0). Swin
trains at the fork's batch sizes (`configs/base-prompt_swin.yaml`: 80 for prompt methods;
`base-finetune_swin.yaml`: 224 for FT). Prompt lengths: the per-task lengths of the ViT-B/16 study
(`study.num_prompts=0`); the official configs give no other lengths for these backbones. Swin's
prompts attach per image; `--config.run.model.prompt_batch_mixing=True` reproduces the official
code's window-major ordering, in which the images of a batch see each other's prompts (the code
behind the paper's Swin numbers).
Report: <workdir>/report/results.md, with one table per task group (natural, specialized,
structured) as Tables 7-15: per task, group mean, wins vs FT, tuned/total %.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, paper_study_config, use_backbone, vtab_datasets


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = vtab_datasets("all")
    c.study.strategies = ("full", "vpt_deep")
    c.study.group_tables = True
    use_backbone(c, "swin")
    apply_args(c, arg, ("backbone", "tasks", "strategies", "seeds", "epochs", "recipe"))
    if c.run.model.family == "swin":
        c.study.grids.prompt.batch_size = 80
        c.study.grids.finetune.batch_size = 224
    return c

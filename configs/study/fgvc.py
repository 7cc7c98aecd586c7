r"""Appendix F: FT vs VPT on the five FGVC datasets, with the protocol of Tables 1-2.

    python -m vpt_jax.main --config configs/study/fgvc.py \
        --config.run.model.checkpoint=/path/to/ViT-B_16.npz \
        --config.run.data.data_dir=~/tensorflow_datasets --workdir runs/study_fgvc
    # a subset:  --config configs/study/fgvc.py:tasks=cub+flowers,strategies=full,seeds=42
    # FID column of Table 19:
    #   python -m vpt_jax.analysis.fid.distance --tasks fgvc --reference tfds:imagenet2012 ...

Data: each dataset's folder in the official layout under data_dir, with the released
train/val/test.json (README "FGVC"; `vpt_jax.data.fgvc`). Protocol: per dataset and strategy the
paper's lr x wd grid trained on `train` and scored on `val` at the last epoch; the best setting
retrained with seeds 42, 44, 82, 100, 800 and scored on `test` (mean and std). Final runs train on
`train` as the official code does for FGVC (`train.py` builds its trainval loader for VTAB only);
`--config.study.final.train_split=trainval` trains them on train + val instead. Preprocessing as
the official FGVC transforms: shorter side to 256, random 224 crop and horizontal flip for training,
centre crop for evaluation (`data.resize_crop`, `data.flip`), ImageNet mean/std under the
`reference` recipe. Prompt length: 10 for every dataset (`study.num_prompts`); the official FGVC
configs set none, and the per-dataset lengths of VPT's released sheets could not be read here.
Splits too large for the device stream from the host (NABirds, Dogs); see `data.stream_train`.
Report: runs/study_fgvc/report/results.md, the `fgvc` group.
"""

from __future__ import annotations

from vpt_jax.study.config import apply_args, fgvc_datasets, paper_study_config


def get_config(arg: str | None = None):
    c = paper_study_config()
    c.study.datasets = fgvc_datasets("all")
    c.study.strategies = ("full", "vpt_deep")
    c.study.search.train_split = "train"
    c.study.search.eval_split = "val"
    c.study.final.train_split = "train"
    c.study.final.eval_split = "test"
    c.run.data.resize_crop = True
    c.run.data.flip = True
    apply_args(c, arg, ("tasks", "strategies", "seeds", "epochs", "recipe"))
    return c

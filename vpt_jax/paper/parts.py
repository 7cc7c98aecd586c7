"""The paper's parts: what each reproduces, its settings, and how its studies get their inputs.

A paper config (`configs/study/paper.py`) has `kind = "paper"`, a `paper` section (the inputs every
part shares: checkpoints per backbone family, data directories, FID weights and reference, step
times, how workers share the work) and `parts.<part>.<study>`: ordinary study configs, as their
own files in configs/study/ build them. `part_studies` fills each study's inputs from the `paper`
section at run time, so `--config.paper.data_dir=...` reaches every part.
"""

from __future__ import annotations

import dataclasses
import os

import ml_collections
from ml_collections.config_dict import placeholder

from vpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Part:
    """One part of the paper: the tables and figures it reproduces."""

    reproduces: str  # the paper's numbering, e.g. "Tables 1-2"
    what: str


PARTS: dict[str, Part] = {
    "tables1_2": Part("Tables 1-2", "FT, VPT-deep, Mixed, FT-then-PT on the 19 VTAB-1k tasks"),
    "one_shot": Part("Tables 3-4", "one-shot FT vs VPT-deep"),
    "tables5_6": Part("Tables 5-6", "FT vs VPT-deep at 400, 800, 5,000, 10,000 training images"),
    "figure4": Part("Figure 4", "FT vs VPT-deep from 400 to 20,000 images, 4 tasks per group"),
    "loss_curves": Part("Figures 5-6, 9-13", "loss curves; 5,000 / 10,000 on overfitting tasks"),
    "fid": Part("Figure 3", "each task's FID to ImageNet against the FT / VPT-deep winner"),
    "attribution": Part("Figures 8, 17, 18", "GradCAM and IG of FT vs VPT-deep per quadrant"),
    "backbones": Part("Tables 7-15", "FT vs VPT-deep with Swin-B, MAE and MoCo v3"),
    "fgvc": Part("Table 19", "FT vs VPT-deep on the five FGVC datasets, with their FID"),
    "lora": Part("Table 20", "FT vs LoRA on CIFAR-100 at 400, 800, 10,000 images"),
    "probes": Part("section 5.3", "linear and MLP probes against FT and VPT-deep"),
}
FAMILIES = ("vit", "swin", "mae", "moco_v3")
# Tiny mode (a smoke test of every part): procedural tasks, tiny backbones of every family written
# in their official key layouts (vpt_jax.paper.tiny), one grid point, one seed, one epoch.
TINY_TASKS = ("procedural:shapes", "procedural:scene_count")


def paper_config(parts: tuple[str, ...]) -> ml_collections.ConfigDict:
    """The `kind` and `paper` sections, with no parts yet."""
    c = ml_collections.ConfigDict()
    c.kind = "paper"
    p = c.paper = ml_collections.ConfigDict()
    p.parts = tuple(parts)  # the parts this config holds, in order
    p.checkpoints = ml_collections.ConfigDict()  # pretrained weights per backbone family
    p.checkpoints.vit = "ViT-B_16.npz"  # ViT-B/16 ImageNet-21k (google-research .npz)
    p.checkpoints.swin = "swin_base_patch4_window7_224_22k.pth"  # Swin-B ImageNet-21k
    p.checkpoints.mae = "mae_pretrain_vit_base.pth"  # ViT-B/16 MAE
    p.checkpoints.moco_v3 = "linear-vit-b-300ep.pth.tar"  # ViT-B/16 MoCo v3
    p.data_dir = placeholder(str)  # TFDS data directory of the VTAB tasks (None: TFDS's default)
    p.fgvc_dir = placeholder(str)  # the FGVC datasets' folders (None: data_dir)
    p.inception = (
        ""  # FID Inception weights .npz (python -m vpt_jax.analysis.fid.inception_weights)
    )
    p.fid_reference = "tfds:imagenet2012"  # FID's reference: a dataset or statistics .npz
    p.step_times = ""  # benchmarks/protocol_cost.py --save FILE: the plan's device-hours
    p.attribution_tasks = ()  # Figures 8, 17, 18: one task per quadrant; (): the defaults
    p.shard = ""  # as study.shard: "" (claims), "i/n" or "slurm"
    p.claim_timeout_s = 600.0  # as study.claim_timeout_s
    p.poll_interval_s = 2.0  # as study.poll_interval_s
    p.batch_runs = 0  # as study.batch_runs
    p.keep_checkpoints = False  # as study.keep_checkpoints
    p.tiny = False  # set by the config argument `tiny`
    c.parts = ml_collections.ConfigDict()
    return c


def tiny_study(c: ml_collections.ConfigDict, part: str, name: str) -> ml_collections.ConfigDict:
    """A study shrunk to a smoke test: the same structure (strategies, sizes, shots, quadrants),
    procedural data and a tiny backbone (checkpoints: `vpt_jax.paper.tiny`)."""
    s, r = c.study, c.run
    s.datasets = TINY_TASKS if part == "tables1_2" else TINY_TASKS[1:]
    if part == "fgvc":
        s.datasets = ("fgvc/flowers",)  # a small folder in the official layout (tiny.py)
    if part != "fgvc":  # FGVC keeps its released lists (train / val / test)
        # Final runs train on the search split too: one compiled step per group, not two.
        s.search.train_split, s.search.eval_split = "train32", "val8"
        s.final.train_split, s.final.eval_split = "train32", "test16"
    s.final.seeds = (42,)
    s.final.curve_every_epochs, s.final.curve_examples = 1, 8
    s.grids.prompt.lrs, s.grids.prompt.weight_decays = (0.5,), (0.0,)
    s.grids.finetune.lrs, s.grids.finetune.weight_decays = (0.001,), (0.0,)
    for grid in (s.grids.prompt, s.grids.finetune):
        grid.batch_size, grid.warmup_epochs = 8, 0
    s.num_prompts = 2
    sweep = s.scaling
    if sweep.sizes:  # the sweep's structure with tiny sizes (32: the standard train32)
        sweep.datasets = tuple(d for d in s.datasets)
        sweep.sizes = (32, 64) if part != "figure4" else (32, 48, 64)
    if s.shots:
        r.train.batch_size = 8
    if s.quadrants.features or s.quadrants.reference:
        s.quadrants.features = "vit"  # no Inception weights offline: the backbone's own features
        s.quadrants.reference = "procedural:pretrain"
        s.quadrants.reference_split = "test64"
        s.quadrants.num_images = 32
    if part not in ("fid", "fgvc"):
        s.quadrants.reference = ""
    r.train.epochs = 1
    r.ft_stage.epochs = 1
    r.train.eval_batch_size = 16
    r.train.checkpoint_every_epochs = 0
    r.model.image_size = 16
    r.model.variant = "custom"
    m = r.model
    if m.get("family", "vit") == "swin":
        m.embed_dim, m.depths, m.stage_heads, m.window_size, m.patch_size = 16, (2, 2), (2, 4), 2, 2
    else:
        m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim = 4, 32, 2, 4, 64
    return c


def part_studies(c: ml_collections.ConfigDict) -> list[tuple[str, str, ml_collections.ConfigDict]]:
    """(part, study name, study config) of every study of the paper config, in order, each with
    the `paper` section's inputs and worker settings filled in (a copy: `c` is unchanged)."""
    p = c.paper
    out = []
    for part in p.parts:
        if part not in PARTS:
            raise UserError(
                f"paper.parts names an unknown part {part!r}; parts: {', '.join(PARTS)}"
            )
        if part not in c.parts:
            raise UserError(f"paper.parts names {part!r} but the config has no parts.{part}")
        for name, study in c.parts[part].items():
            s = ml_collections.ConfigDict(study.to_dict())
            family = s.run.model.get("family", "vit")
            if p.checkpoints.get(family):
                s.run.model.checkpoint = os.path.expanduser(p.checkpoints[family])
            fgvc = all(str(d).startswith("fgvc/") for d in s.study.datasets)
            data_dir = (p.fgvc_dir or p.data_dir) if fgvc else p.data_dir
            if data_dir:
                s.run.data.data_dir = os.path.expanduser(data_dir)
            q = s.study.quadrants
            if q.features == "inception":
                q.reference, q.inception = p.fid_reference, p.inception
            for field in (
                "shard",
                "claim_timeout_s",
                "poll_interval_s",
                "batch_runs",
                "keep_checkpoints",
            ):
                s.study[field] = p[field]
            out.append((part, name, s))
    return out


def study_dir(workdir: str, part: str, name: str) -> str:
    """Where a part's study keeps its own records (study.json, report/); its runs are the pool's."""
    return os.path.join(workdir, "parts", part, name)


def pool_dir(workdir: str) -> str:
    return os.path.join(workdir, "pool")


__all__ = ["PARTS", "Part", "paper_config", "part_studies", "pool_dir", "study_dir", "tiny_study"]

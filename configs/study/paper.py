r"""The whole paper in one command: every table and figure, planned and costed before it starts.

    python -m vpt_jax.main --config configs/study/paper.py --workdir runs/paper --dry_run \
        --config.paper.data_dir=~/tensorflow_datasets --config.paper.checkpoints.vit=ViT-B_16.npz
    # the plan: runs, images, device-hours (--config.paper.step_times=FILE), disk, missing inputs
    python -m vpt_jax.main --config configs/study/paper.py --workdir runs/paper ...  # the paper
    # some parts:  --config configs/study/paper.py:parts=tables1_2+fid
    # the clean recipe instead of the official code's:  ...paper.py:recipe=clean
    # a smoke test on procedural data and a tiny backbone (the test suite's): ...paper.py:tiny

Parts (`vpt_jax.paper.parts.PARTS`; each is one or more studies, each of which also runs alone with
its own config in configs/study/):

| part | the paper's | studies |
| --- | --- | --- |
| tables1_2 | Tables 1-2 | vtab.py: FT, VPT-deep, Mixed, FT-then-PT on the 19 tasks |
| one_shot | Tables 3-4 | one_shot.py |
| tables5_6 | Tables 5-6 | scaling: FT, VPT-deep at 400, 800, 5,000, 10,000 where a task supports it |
| figure4 | Figure 4 | scaling: 4 tasks per group, 400 ... 20,000 |
| loss_curves | Figures 5-6, 9-13 | Tables 1-2's curves; 5,000 / 10,000 on the overfitting tasks |
| fid | Figure 3 | FT, VPT-deep with each task's FID to ImageNet (Inception features) |
| attribution | Figures 8, 17, 18 | GradCAM / IG of FT vs VPT-deep, one task per quadrant |
| backbones | Tables 7-15 | backbones.py: Swin-B, MAE, MoCo v3 |
| fgvc | Table 19 | fgvc.py, with each dataset's FID |
| lora | Table 20 | FT vs LoRA on CIFAR-100 at 400, 800, 10,000 |
| probes | section 5.3 | probes.py: linear and MLP probes against FT and VPT-deep |

A run two parts share (Tables 1-2's FT runs are also Figure 3's, the probes' baseline and Table 5's
800 point) is one run: the parts' studies keep their runs in one pool, a directory per distinct run
config (`vpt_jax.study.pool`). Several workers (hosts, GPUs, a Slurm array with
`--config.paper.shard=slurm`) share the plan as a study's do. Report: runs/paper/report/paper.md.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from vpt_jax.cli import ConfigArgumentError, config_arguments
from vpt_jax.data.vtab import VTAB_TASKS
from vpt_jax.paper.parts import PARTS, paper_config, tiny_study
from vpt_jax.study.config import vtab_datasets

HERE = os.path.dirname(os.path.abspath(__file__))
# Figure 6's tasks: the structured ones that overfit, enlarged to 5000-1250 and 10000-2500.
OVERFITTING_TASKS = "patch_camelyon+clevr_count+smallnorb_elevation"
ENLARGED = (5000, 10000)
TABLES5_6_SIZES = (400, 800, 5000, 10000)  # the columns of Tables 5-6
FIGURE4_SIZES = (400, 800, 1600, 3200, 5000, 10000, 20000)  # "from 400 to 20,000"
LORA_SIZES = (400, 800, 10000)  # Table 20


def _study(name: str, arg: str | None = None) -> ml_collections.ConfigDict:
    """The study of configs/study/<name>.py (each part also runs alone with that file)."""
    spec = importlib.util.spec_from_file_location(f"paper_{name}", os.path.join(HERE, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def figure4_tasks() -> tuple[str, ...]:
    """Four tasks per group for Figure 4 (the paper does not name its twelve): the four of each
    group that support the largest training sets, in the task table's order."""
    from vpt_jax.data import max_scaling_size

    chosen = []
    for group in ("natural", "specialized", "structured"):
        tasks = [t for t in VTAB_TASKS.values() if t.group == group]
        top = sorted(tasks, key=lambda t: -max_scaling_size(t))[:4]
        chosen += [t.name for t in tasks if t in top]
    return vtab_datasets("+".join(chosen))


def _sweep(c, datasets, strategies, sizes) -> None:
    c.study.scaling.datasets = tuple(datasets)
    c.study.scaling.strategies = tuple(strategies)
    c.study.scaling.sizes = tuple(sizes)
    c.study.scaling.supported_only = True  # "the sizes each task supports"


def part_studies(part: str, recipe: str) -> dict[str, ml_collections.ConfigDict]:
    """The studies of one part, with the paper's settings (paths are filled in at run time)."""
    r = f"recipe={recipe}"
    if part == "tables1_2":
        return {"vtab": _study("vtab", r)}
    if part == "one_shot":
        return {"one_shot": _study("one_shot", r)}
    if part == "tables5_6":
        c = _study("vtab", f"{r},strategies=full+vpt_deep")
        _sweep(c, c.study.datasets, c.study.strategies, TABLES5_6_SIZES)
        return {"scaling": c}
    if part == "figure4":
        c = _study("vtab", f"{r},strategies=full+vpt_deep")
        c.study.datasets = figure4_tasks()
        _sweep(c, c.study.datasets, c.study.strategies, FIGURE4_SIZES)
        return {"scaling": c}
    if part == "loss_curves":
        c = _study("vtab", r)
        _sweep(c, vtab_datasets(OVERFITTING_TASKS), ("full", "vpt_deep"), ENLARGED)
        return {"curves": c}
    if part in ("fid", "attribution"):
        c = _study("vtab", f"{r},strategies=full+vpt_deep")
        if part == "fid":
            c.study.quadrants.features = "inception"  # reference and weights: paper.fid_*
        return {part: c}
    if part == "backbones":
        return {b: _study("backbones", f"{r},backbone={b}") for b in ("swin", "mae", "moco_v3")}
    if part == "fgvc":
        c = _study("fgvc", r)
        c.study.quadrants.features = "inception"
        return {"fgvc": c}
    if part == "lora":
        c = _study("vtab", f"{r},tasks=cifar100,strategies=full+lora")
        _sweep(c, c.study.datasets, c.study.strategies, LORA_SIZES)
        return {"lora": c}
    if part == "probes":
        return {"probes": _study("probes", f"{r},strategies=full+vpt_deep+linear+mlp")}
    raise ConfigArgumentError(f"unknown part {part!r}; parts: {', '.join(PARTS)}")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    flags = [p for p in (arg or "").split(",") if p]
    tiny = "tiny" in flags
    options = config_arguments(",".join(p for p in flags if p != "tiny"), ("parts", "recipe"))
    parts = tuple(options["parts"].split("+")) if "parts" in options else tuple(PARTS)
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ConfigArgumentError(
            f"config argument parts={options['parts']}: unknown {', '.join(unknown)}; "
            f"parts: {'+'.join(PARTS)}"
        )
    recipe = options.get("recipe", "reference")
    c = paper_config(parts)
    for part in parts:
        c.parts[part] = ml_collections.ConfigDict()
        for name, study in part_studies(part, recipe).items():
            c.parts[part][name] = tiny_study(study, part, name) if tiny else study
    if tiny:
        c.paper.tiny = True
    return c

"""The paper's plan before any work: runs per part, images, device-hours, disk, missing inputs.

Final runs are known only once their grid searches are done; the plan counts them as the protocol
will make them (one seeded set per group), so its numbers are exact before anything trains. A run
two parts share is counted once, in the first part that plans it (later parts list it as shared).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import logging
import math
import os
from typing import Any

import ml_collections

from vpt_jax.data import parse_dataset
from vpt_jax.errors import UserError
from vpt_jax.paper.parts import PARTS, part_studies
from vpt_jax.study import planning, protocol
from vpt_jax.study.cost import StepTimes, Workload, hours, size_text, workload
from vpt_jax.study.pool import run_key
from vpt_jax.study.protocol import RunSpec

# Where the real inputs come from: one line each in the plan when a file is missing.
DOWNLOADS = {
    "vit": "https://storage.googleapis.com/vit_models/imagenet21k/ViT-B_16.npz",
    "swin": "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_base_patch4_window7_224_22k.pth",
    "mae": "https://dl.fbaipublicfiles.com/mae/pretrain/mae_pretrain_vit_base.pth",
    "moco_v3": "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/linear-vit-b-300ep.pth.tar",
    "inception": "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth",
}


class _Projected:
    """A store in which every run is done and every grid point scores the same: planning then
    selects the first grid point of every group and so names every final run the study will
    have (which setting wins does not change how many runs there are, or what they cost)."""

    def result(self, spec: RunSpec) -> dict[str, Any]:
        return {"final": collections.defaultdict(float)}

    def done(self, spec: RunSpec) -> bool:
        return True


def projected_specs(config: ml_collections.ConfigDict) -> list[RunSpec]:
    """Every run of a study, its final runs included, as they will be planned."""
    specs, waiting = planning.plan(config, _Projected())
    assert not waiting, "a projected plan has nothing to wait for"
    return specs


@dataclasses.dataclass
class PartPlan:
    part: str
    runs: int = 0  # runs this part adds
    shared: int = 0  # runs an earlier part of the plan already has
    train_images: int = 0
    eval_images: int = 0
    seconds: float = 0.0  # projected device time (nan without step times)
    disk_bytes: int = 0


@dataclasses.dataclass
class Plan:
    parts: list[PartPlan]
    missing: list[str]  # one line per missing input, with how to get it
    step_times: StepTimes | None
    keys: dict[str, list[str]]  # part -> the pool keys of its runs (shared ones included)
    needed: list[str] = dataclasses.field(default_factory=list)  # every input, present or not

    @property
    def total(self) -> PartPlan:
        out = PartPlan("total")
        for p in self.parts:
            for field in ("runs", "shared", "train_images", "eval_images", "seconds", "disk_bytes"):
                setattr(out, field, getattr(out, field) + getattr(p, field))
        return out


def make_plan(c: ml_collections.ConfigDict, *, check_inputs: bool = True) -> Plan:
    """The plan of a paper config (its parts' studies, inputs filled in)."""
    times = StepTimes.load(c.paper.step_times) if c.paper.step_times else None
    seen: set[str] = set()
    parts: dict[str, PartPlan] = {}
    keys: dict[str, list[str]] = {}
    missing: list[str] = []
    needed: list[str] = []
    for part, _, study in part_studies(c):
        protocol.check_study(study.study)
        out = parts.setdefault(part, PartPlan(part, seconds=0.0 if times else math.nan))
        key = run_key(study)
        loads: dict[tuple, Workload] = {}
        for spec in projected_specs(study):
            k = key(spec)
            keys.setdefault(part, []).append(k)
            if k in seen:
                out.shared += 1
                continue
            seen.add(k)
            group = (spec.phase, spec.group)
            if group not in loads:
                with _quiet():  # a run's set-up notes, once per group, are not the plan's
                    keep = bool(study.study.get("keep_checkpoints"))
                    loads[group] = workload(protocol.run_config(study, spec), keep)
                if times:
                    out.seconds += sum(
                        times.compile_s.get(s.kind, 0.0) for s in loads[group].stages
                    )
            w = loads[group]
            out.runs += 1
            out.train_images += w.train_images
            out.eval_images += w.eval_images
            out.disk_bytes += w.disk_bytes
            if times:
                out.seconds += w.seconds(times)
        if check_inputs:
            missing += [m for m in study_inputs(study) if m not in missing]
        needed += [n for n in inputs_of(study) if n not in needed]
    return Plan(list(parts.values()), missing, times, keys, needed)


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger("vpt_jax")
    level = logger.level
    logger.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        logger.setLevel(level)


def inputs_of(study: ml_collections.ConfigDict) -> list[str]:
    """What a study reads: its checkpoint, its datasets (procedural ones are drawn, not read),
    FID's weights and reference."""
    s = study.study
    out = [study.run.model.checkpoint] if study.run.model.checkpoint else []
    datasets = dict.fromkeys([*s.datasets, *s.scaling.datasets])
    out += [d for d in datasets if parse_dataset(d).kind != "procedural"]
    q = s.quadrants
    if q.reference and q.features == "inception":
        out += [q.inception or "FID Inception weights (paper.inception)", q.reference]
    return out


def study_inputs(study: ml_collections.ConfigDict) -> list[str]:
    """One line per input of a study that is missing: its checkpoint, its datasets (the error
    that opening them gives, which names the command that prepares them), FID's weights and
    reference."""
    lines = []
    run, s = study.run, study.study
    family = run.model.get("family", "vit")
    path = run.model.checkpoint
    if path and not os.path.isfile(path):
        where = f"; download it from {DOWNLOADS[family]}" if family in DOWNLOADS else ""
        lines.append(f"checkpoint {path} (paper.checkpoints.{family}) does not exist{where}")
    datasets = list(dict.fromkeys([*s.datasets, *s.scaling.datasets]))
    data_dir = run.data.get("data_dir") or None  # "": TFDS's default
    for dataset in datasets:
        problem = dataset_problem(dataset, data_dir)
        if problem:
            lines.append(problem)
    q = s.quadrants
    if q.reference and q.features == "inception":
        if not q.inception or not os.path.isfile(q.inception):
            lines.append(
                f"FID Inception weights {q.inception or '(paper.inception is empty)'} missing: "
                f"download {DOWNLOADS['inception']} and convert it with `python -m "
                "vpt_jax.analysis.fid.inception_weights pt_inception-2015-12-05-6726825d.pth "
                "inception_fid.npz`, then pass --config.paper.inception=inception_fid.npz"
            )
        if q.reference.endswith(".npz"):
            if not os.path.isfile(q.reference):
                lines.append(f"FID reference statistics {q.reference} do not exist")
        else:
            problem = dataset_problem(q.reference, data_dir)
            if problem:
                lines.append(f"FID reference: {problem}")
    return lines


def dataset_problem(dataset: str, data_dir: str | None) -> str | None:
    """Why a dataset cannot be read here (one line, with how to prepare it), or None."""
    from vpt_jax.data import get_dataset

    name = parse_dataset(dataset)
    if name.kind == "procedural":
        return None
    split = {"vtab": "test", "fgvc": "test", "tfds": "validation"}.get(name.kind, "train")
    if name.kind == "tfds" and not name.value.startswith("imagenet2012"):
        split = "train"
    try:
        get_dataset(str(name), split, data_dir=data_dir, image_size=16)
    except UserError as e:
        return f"{name}: {e}"
    return None


def plan_text(plan: Plan) -> str:
    """The plan as the command prints it."""
    head = "device-hours" + (f" ({plan.step_times.device})" if plan.step_times else "")
    lines = [
        f"| part | reproduces | runs | shared | train images | eval images | {head} | disk |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in [*plan.parts, plan.total]:
        label = PARTS[p.part].reproduces if p.part in PARTS else ""
        lines.append(
            f"| {p.part} | {label} | {p.runs:,} | {p.shared:,} | {p.train_images:,} | "
            f"{p.eval_images:,} | {hours(p.seconds)} | {size_text(p.disk_bytes)} |"
        )
    if plan.step_times is None:
        lines += [
            "",
            "device-hours: not projected; measure this device's step times once with "
            "`python benchmarks/protocol_cost.py --save step_times.json` and pass "
            "--config.paper.step_times=step_times.json",
        ]
    else:
        lines += [
            "",
            f"device-hours from step times measured on {plan.step_times.device} "
            f"({plan.step_times.precision}); Swin-B is projected with ViT-B/16's step times.",
        ]
    if plan.needed:
        lines += ["", f"inputs ({len(plan.needed)}): " + ", ".join(plan.needed)]
    if plan.missing:
        lines += ["", f"missing inputs ({len(plan.missing)}):", *(f"- {m}" for m in plan.missing)]
    else:
        lines += ["", "every input is in place"]
    return "\n".join(lines)


__all__ = ["Plan", "PartPlan", "make_plan", "plan_text", "projected_specs", "study_inputs"]

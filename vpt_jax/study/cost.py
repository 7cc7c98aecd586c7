"""What a study's runs cost before any starts: images trained and evaluated, device time, disk.

The work of a run follows from its config alone (splits, epochs, stages, evaluation policy, the
model's shapes); the seconds come from step times measured on the device that will run it, by

    python benchmarks/protocol_cost.py --save step_times.json      # on that device, once

(`StepTimes`: seconds per training image of a step that trains weights or only prompts at two token
counts, per evaluated image, compile seconds per program, host decoding per image). Without such a
file a plan still counts runs, images and disk; it just leaves device-hours out and says how to
measure them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re

import ml_collections

from vpt_jax import atomic
from vpt_jax.data import parse_dataset
from vpt_jax.data.procedural import DEFAULT_TEST_SIZE
from vpt_jax.data.splits import parse_sized_split
from vpt_jax.errors import UserError

BYTES_PER_PARAM = 4  # float32 trainable state, artifacts and checkpoints
KEPT_CHECKPOINTS = 2  # vpt_jax.train.checkpoints.StageCheckpoints(max_to_keep=2)
OPTIMIZER_SLOTS = {"sgd": 1, "adamw": 2}  # momentum; AdamW's two moments
VIT_B16_TOKENS = 197  # ViT-B/16 at 224: the class token and 196 patches
PROBES = ("linear", "mlp")  # heads trained on the frozen backbone's features, computed once


@dataclasses.dataclass(frozen=True)
class StepTimes:
    """Step times measured on one device (`benchmarks/protocol_cost.py --save`)."""

    device: str
    precision: str
    train: dict[str, dict[int, float]]  # weights | prompts -> tokens -> seconds per image
    eval: dict[int, float]  # tokens -> seconds per evaluated image
    compile_s: dict[str, float]  # weights | prompts | probe -> seconds per compiled program
    preprocess_s: float = 0.0  # on-device gather + preprocessing, per training image
    decode_s: float = 0.0  # host decoding per image read from a prepared dataset

    def train_s(self, kind: str, tokens: int) -> float:
        if kind == "probe":  # a head on cached features: one forward pass per training image
            return self.eval_s(tokens)
        return _interpolate(self.train[kind], tokens) + self.preprocess_s

    def eval_s(self, tokens: int) -> float:
        return _interpolate(self.eval, tokens)

    def save(self, path: str) -> None:
        atomic.write_text(path, json.dumps(dataclasses.asdict(self), indent=1))

    @classmethod
    def load(cls, path: str) -> StepTimes:
        try:
            with open(path) as f:
                raw = json.load(f)
            return cls(
                device=raw["device"],
                precision=raw["precision"],
                train={
                    k: {int(t): float(s) for t, s in v.items()} for k, v in raw["train"].items()
                },
                eval={int(t): float(s) for t, s in raw["eval"].items()},
                compile_s={k: float(v) for k, v in raw["compile_s"].items()},
                preprocess_s=float(raw.get("preprocess_s", 0.0)),
                decode_s=float(raw.get("decode_s", 0.0)),
            )
        except FileNotFoundError:
            raise UserError(
                f"step times file {path} does not exist; measure them on this device with "
                f"`python benchmarks/protocol_cost.py --save {path}`"
            ) from None
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"{path} is not a step times file ({type(e).__name__}: {e}); write it again with "
                f"`python benchmarks/protocol_cost.py --save {path}`"
            ) from None


def _interpolate(points: dict[int, float], x: int) -> float:
    """Linear in the token count between the two measured counts (one point: constant)."""
    ordered = sorted(points.items())
    if len(ordered) == 1:
        return ordered[0][1]
    (x0, y0), (x1, y1) = ordered[0], ordered[-1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def split_size(dataset: str, split: str, data_dir: str | None = None) -> int:
    """Examples in a split, from the task tables (no data is read).

    Sized splits (`train800val200`, `test32`) say their size; `test` is VTAB's test region, FGVC's
    test list or a procedural task's default test split; FGVC's `train`, `val`, `trainval` are its
    released lists. An unknown size is an error naming the split."""
    sized = parse_sized_split(split)
    if sized is not None:
        return sized.train + sized.val
    match = re.fullmatch(r"test(\d+)", split)
    if match:
        return int(match.group(1))
    name = parse_dataset(dataset)
    task = name.task
    if name.kind == "vtab" and split == "test":
        return vtab_test_size(task)
    if name.kind == "fgvc" and split in ("train", "val", "trainval", "test"):
        listed = _fgvc_listed(task, split, data_dir)
        if listed is not None:  # the split files there (a subset, or another release)
            return listed
    if name.kind == "fgvc":
        train, val, test = task.sizes
        sizes = {"train": train, "val": val, "trainval": train + val, "test": test}
        if split in sizes:
            return sizes[split]
    if name.kind == "procedural" and split == "test":
        return DEFAULT_TEST_SIZE
    raise UserError(f"the size of split {split!r} of {dataset} is not known before reading it")


def _fgvc_listed(task, split: str, data_dir: str | None) -> int | None:
    """Images an FGVC split lists in its files under `data_dir`, or None without them."""
    from vpt_jax.data.fgvc import dataset_root, read_split_file

    if not data_dir:
        return None
    root = dataset_root(task, data_dir)
    parts = ("train", "val") if split == "trainval" else (split,)
    if not all(os.path.isfile(os.path.join(root, f"{p}.json")) for p in parts):
        return None
    return sum(len(read_split_file(task, root, p)) for p in parts)


def vtab_test_size(task) -> int:
    """Examples in a VTAB task's test split (its TFDS split string over the table's sizes)."""
    match = re.fullmatch(r"(\w+)(?:\[(\d*)(%?):(\d*)(%?)\])?", task.test)
    source, start, start_pct, stop, stop_pct = match.groups()
    total = task.source_sizes[source]

    def index(value: str, percent: str, default: int) -> int:
        if not value:
            return default
        return total * int(value) // 100 if percent else int(value)

    return index(stop, stop_pct, total) - index(start, start_pct, 0)


@dataclasses.dataclass(frozen=True)
class Stage:
    kind: str  # weights | prompts | probe (a head on frozen features)
    epochs: int
    tokens: int  # sequence length of the forward pass


@dataclasses.dataclass(frozen=True)
class Workload:
    """The work of one run, independent of the device."""

    stages: tuple[Stage, ...]
    train_examples: int
    eval_examples: int  # the final evaluation split
    full_evals: int  # full evaluations of it
    curve_images: int  # images of its curve subsets evaluated over the run
    tuned_parameters: int
    optimizer_slots: int

    @property
    def train_images(self) -> int:
        return sum(
            (1 if s.kind == "probe" else s.epochs) * self.train_examples for s in self.stages
        )

    @property
    def eval_images(self) -> int:
        return self.full_evals * self.eval_examples + self.curve_images

    keeps_checkpoints: bool = False  # study.keep_checkpoints

    @property
    def disk_bytes(self) -> int:
        """The artifact, plus the kept checkpoints of the trainable state and optimizer slots
        where the study keeps them (`study.keep_checkpoints`)."""
        tuned = self.tuned_parameters * BYTES_PER_PARAM
        kept = (
            KEPT_CHECKPOINTS * tuned * (1 + self.optimizer_slots) if self.keeps_checkpoints else 0
        )
        return tuned + kept

    def seconds(self, times: StepTimes) -> float:
        total = 0.0
        for s in self.stages:
            total += (
                self.train_examples
                * (1 if s.kind == "probe" else s.epochs)
                * times.train_s(s.kind, s.tokens)
            )
        tokens = self.stages[-1].tokens
        total += self.eval_images * times.eval_s(tokens)
        total += (self.train_examples + self.eval_examples) * times.decode_s
        return total


def workload(run: ml_collections.ConfigDict, keep_checkpoints: bool = False) -> Workload:
    """A run's workload from its config (checked and resolved as the run would be);
    `keep_checkpoints`: its study keeps a finished run's checkpoints."""
    from vpt_jax.models.additions import extra_tokens
    from vpt_jax.train.setup import build_run

    setup = build_run(run, 1, read_weights=False)
    c = setup.config
    dataset = str(c.data.dataset)
    data_dir = c.data.get("data_dir") or None
    n_train = split_size(dataset, c.data.train_split, data_dir)
    if c.data.shots:
        n_train = c.data.shots * _num_classes(dataset)
    n_eval = split_size(dataset, c.data.eval_splits[0], data_dir)
    classes = _num_classes(dataset)
    base = setup.backbone
    if c.model.get("family", "vit") == "swin":  # projected with ViT-B/16's step times (stated)
        plain_tokens = VIT_B16_TOKENS
    else:
        plain_tokens = (base.image_size // base.patch_size) ** 2 + 1
    stages, tuned = [], 0
    for plan in setup.stages:
        tuned = tuned_parameters(plan.strategy, base, classes)
        if plan.strategy.name in PROBES:
            kind = "probe"
        else:  # most of the parameters tuned: the step computes the backbone's weight gradients
            kind = (
                "weights"
                if tuned > total_parameters(plan.strategy, base, classes) / 2
                else "prompts"
            )
        extra = extra_tokens(plan.strategy.final.additions)
        stages.append(Stage(kind, plan.epochs, plain_tokens + extra))
    last = setup.stages[-1]
    epochs = last.epochs
    every, curve_every = c.train.eval_every_epochs, c.train.curve_every_epochs
    full = 1 + (epochs // every - (epochs % every == 0) if every else 0)
    curves = (epochs // curve_every + (epochs % curve_every != 0)) if curve_every else 0
    curve_size = min(n_eval, c.train.curve_examples or n_eval)
    if curves and curve_size == n_eval:  # the curve is the split itself: its full evaluation
        curves = max(0, curves - full)
    slots = OPTIMIZER_SLOTS.get(last.optimizer.name, 1)
    return Workload(
        tuple(stages), n_train, n_eval, full, curves * curve_size, tuned, slots, keep_checkpoints
    )


def tuned_parameters(strategy, backbone, classes: int) -> int:
    """Parameters a stage's strategy tunes, without tracing the full model for every class count
    and depth: both enter linearly (the head is in x classes + classes; every block of the deepest
    stage is alike), so three traces of a one- or two-block model give the count exactly."""
    return _count(strategy, backbone, classes, tuned=True)


def total_parameters(strategy, backbone, classes: int) -> int:
    return _count(strategy, backbone, classes, tuned=False)


def _count(strategy, backbone, classes: int, *, tuned: bool) -> int:
    depth, shallow = _depth(backbone, 1)
    if depth <= 2:
        return _traced(strategy, backbone, classes)[0 if tuned else 1]
    pick = 0 if tuned else 1
    base = _traced(strategy, shallow, 2)[pick]
    per_class = _traced(strategy, shallow, 3)[pick] - base
    per_block = _traced(strategy, _depth(backbone, 2)[1], 2)[pick] - base
    return base + per_class * (classes - 2) + per_block * (depth - 1)


def _depth(backbone, blocks: int):
    """(blocks of the deepest stage, the backbone with `blocks` there)."""
    if hasattr(backbone, "depths"):  # Swin: its stages
        depths = list(backbone.depths)
        deepest = max(range(len(depths)), key=depths.__getitem__)
        depth = depths[deepest]
        depths[deepest] = blocks
        return depth, dataclasses.replace(backbone, depths=tuple(depths))
    return backbone.num_layers, dataclasses.replace(backbone, num_layers=blocks)


@functools.lru_cache(maxsize=256)
def _traced(strategy, backbone, classes: int) -> tuple[int, int]:
    from vpt_jax.models.vit import param_shapes
    from vpt_jax.tuning.budget import parameter_budget

    counted = parameter_budget(
        strategy, param_shapes(strategy.final.build_model(backbone, classes))
    )
    return counted.tuned, counted.total


def _num_classes(dataset: str) -> int:
    task = parse_dataset(dataset).task
    if task is None:
        raise UserError(f"the class count of {dataset} is not known before reading it")
    return task.num_classes


def hours(seconds: float) -> str:
    if math.isnan(seconds):
        return "-"
    return f"{seconds / 3600:,.1f}" if seconds >= 360 else f"{seconds / 3600:.2f}"


def size_text(n_bytes: float) -> str:
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n_bytes >= scale:
            return f"{n_bytes / scale:,.1f} {unit}"
    return f"{n_bytes:.0f} B"


__all__ = ["StepTimes", "Workload", "split_size", "vtab_test_size", "workload"]

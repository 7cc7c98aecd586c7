"""Which examples form a split: sized train/val splits, data-scaling splits, one-shot splits.

Sized split names work for every VTAB-1k task and every procedural task:

* `train{n}`: the first `n` examples of the training region (`train800` is VTAB-1k's);
* `val{m}`: the first `m` examples of the validation region (`val200`);
* `train{n}val{m}`: both, e.g. `train800val200`;
* `test`: the task's test split.

Data scaling (the study's Fig. 3) keeps training and validation at 4:1: `train{n}` with `val{n/4}`,
carved from the same regions as VTAB-1k's 800/200 (so cifar100's `train10000` pairs with
`train[45000:47500]`). The largest training size a task supports is therefore
`min(training region, 4 x validation region)`.

One-shot splits keep one example per class for training and one for validation, drawn from a seed.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping

import numpy as np

from vpt_jax.data.source import ArraySplit
from vpt_jax.data.vtab import STANDARD_SPLITS, TaskSpec
from vpt_jax.errors import UserError

SCALING_RATIO = 4  # training examples per validation example
_SIZED = re.compile(r"(?:train(?P<train>\d+))?(?:val(?P<val>\d+))?")


@dataclasses.dataclass(frozen=True)
class SizedSplit:
    """A request for the first `train` examples of the training region and the first `val` of the
    validation region (either may be 0)."""

    train: int
    val: int


@dataclasses.dataclass(frozen=True)
class ScalingSplits:
    """The split names of one data-scaling point, for `get_dataset`."""

    train: str  # model selection trains here, e.g. `train5000`
    val: str  # ... and selects here, e.g. `val1250`
    trainval: str  # the final runs train here, e.g. `train5000val1250`


def parse_sized_split(split: str) -> SizedSplit | None:
    """Parses `train{n}`, `val{m}` or `train{n}val{m}`.

    Args:
        split: A split name.

    Returns:
        The sizes, or None when `split` is not a sized split name (e.g. `test`).
    """
    match = _SIZED.fullmatch(split)
    if not split or match is None:
        return None
    sized = SizedSplit(train=int(match["train"] or 0), val=int(match["val"] or 0))
    if (match["train"] and not sized.train) or (match["val"] and not sized.val):
        return None  # `train0`, `val0`: not a split anyone means
    return sized


def max_scaling_size(task: TaskSpec, split_sizes: Mapping[str, int] | None = None) -> int:
    """The largest data-scaling training size of a task (a multiple of 4).

    Args:
        task: The VTAB-1k task.
        split_sizes: Examples per TFDS split; defaults to the table's `source_sizes`.

    Returns:
        `min(training region, 4 x validation region)`, rounded down to a multiple of 4.
    """
    sizes = split_sizes or task.source_sizes
    largest = min(task.train.size(sizes), SCALING_RATIO * task.val.size(sizes))
    return largest - largest % SCALING_RATIO


def scaling_splits(train_size: int, task: TaskSpec | None = None) -> ScalingSplits:
    """The splits of one data-scaling point: `train_size` training and `train_size / 4` validation.

    Args:
        train_size: Training examples, a positive multiple of 4 (the study uses 400 to 20000).
        task: The VTAB-1k task, to check the size against; None skips the check (procedural data).

    Returns:
        The split names.

    Raises:
        UserError: The size is not a positive multiple of 4, or the task cannot supply it.
    """
    if train_size <= 0 or train_size % SCALING_RATIO:
        raise UserError(
            f"data-scaling train size must be a positive multiple of {SCALING_RATIO} "
            f"(validation = train/{SCALING_RATIO}), got {train_size}"
        )
    if task is not None and train_size > max_scaling_size(task):
        raise UserError(
            f"vtab/{task.name} supports data-scaling train sizes up to {max_scaling_size(task)} "
            f"({_capacity_text(task, task.source_sizes)}), got {train_size}"
        )
    val_size = train_size // SCALING_RATIO
    return ScalingSplits(
        train=f"train{train_size}", val=f"val{val_size}", trainval=f"train{train_size}val{val_size}"
    )


def vtab_tfds_split(task: TaskSpec, split: str, split_sizes: Mapping[str, int]) -> str:
    """The TFDS split string of a VTAB task's split, refusing more examples than the source holds.

    Args:
        task: The VTAB-1k task.
        split: `test` or a sized split name (`train800`, `val200`, `train5000val1250`, ...).
        split_sizes: Examples per TFDS split (the prepared dataset's, or the table's).

    Returns:
        A TFDS split string such as `train[:800]+train[45000:45200]`.

    Raises:
        UserError: An unknown split name, or a split larger than its region.
    """
    if split == "test":
        return task.test
    sized = parse_sized_split(split)
    if sized is None:
        raise UserError(
            f"unknown split {split!r} for vtab/{task.name}; use {', '.join(STANDARD_SPLITS)} "
            "or a data-scaling size such as train5000, val1250, train5000val1250"
        )
    parts = []
    for count, region, role in (
        (sized.train, task.train, "training"),
        (sized.val, task.val, "validation"),
    ):
        if count == 0:
            continue
        available = region.size(split_sizes)
        if count > available:
            raise UserError(
                f"vtab/{task.name}:{split} asks for {count} {role} examples but the {role} source "
                f"{region.head(available)} holds {available}; the largest data-scaling train size "
                f"is {max_scaling_size(task, split_sizes)} ({_capacity_text(task, split_sizes)})"
            )
        parts.append(region.head(count))
    return "+".join(parts)


def _capacity_text(task: TaskSpec, sizes: Mapping[str, int]) -> str:
    train, val = task.train.size(sizes), task.val.size(sizes)
    return (
        f"training source {task.train.head(train)} holds {train}, "
        f"validation source {task.val.head(val)} holds {val}"
    )


def one_shot_indices(
    labels: np.ndarray, seed: int, shots: int = 1, exclude: np.ndarray | None = None
) -> np.ndarray:
    """Picks `shots` examples of every class present, reproducibly from `seed`.

    Args:
        labels: int labels of the pool.
        seed: Seed of the draw.
        shots: Examples per class (fewer where a class has fewer).
        exclude: Positions that must not be picked.

    Returns:
        Sorted int64 positions into `labels`.
    """
    rng = np.random.default_rng(seed)
    allowed = np.ones(len(labels), bool)
    if exclude is not None:
        allowed[np.asarray(exclude, dtype=np.int64)] = False
    picked = []
    for cls in np.unique(labels):
        candidates = np.flatnonzero((labels == cls) & allowed)
        picked.extend(rng.permutation(candidates)[:shots])
    return np.sort(np.asarray(picked, dtype=np.int64))


def one_shot_split(
    train_pool: ArraySplit, val_pool: ArraySplit | None = None, *, seed: int, shots: int = 1
) -> tuple[ArraySplit, ArraySplit]:
    """One example per class for training and one for validation (the study's one-shot setting).

    As in the study, training examples come from `train800` and validation examples from `val200`;
    without `val_pool` both come from `train_pool` and never share an example. A class with no (or,
    from one pool, only one) example in the pool is absent from the split.

    Args:
        train_pool: Where training examples are drawn (e.g. `train800`).
        val_pool: Where validation examples are drawn (e.g. `val200`); None draws from `train_pool`.
        seed: Seed of the draw; the same seed gives the same split.
        shots: Examples per class.

    Returns:
        `(train, val)`.
    """
    train_idx = one_shot_indices(train_pool.labels, seed, shots)
    if val_pool is None:
        val_pool, exclude = train_pool, train_idx
    else:
        exclude = None
    val_idx = one_shot_indices(val_pool.labels, seed + 1, shots, exclude=exclude)
    return (
        train_pool.subset(train_idx, name=f"{train_pool.name}:oneshot{shots}-seed{seed}"),
        val_pool.subset(val_idx, name=f"{val_pool.name}:oneshot{shots}-seed{seed}"),
    )

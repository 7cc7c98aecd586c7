"""Dataset names across the data layer, their default splits, and their task disparity.

The study places a task on two axes: how far its images lie from the pretraining distribution (FID)
and how far its objective lies from the pretraining objective (task disparity). Disparity follows
from a task's group: VTAB's structured tasks (counting, distances, positions, orientations) are far
from ImageNet classification (`high`), its natural and specialized tasks are classification-like
(`low`). Procedural tasks carry the same groups. Other datasets (TFDS, image folders) cannot tell
their objective by name: the user states it.
"""

from __future__ import annotations

import os

from vpt_jax.data import PREFIXES, PROCEDURAL_TASKS, VTAB_TASKS, get_procedural_task, get_task
from vpt_jax.errors import UserError

DISPARITIES = ("low", "high")
# Task disparity from the (classification) pretraining objective, by group.
GROUP_DISPARITY = {
    "natural": "low",
    "specialized": "low",
    "structured": "high",
    "pretraining": "low",
}


def resolve_dataset_name(name: str) -> str:
    """The canonical data-layer name: bare VTAB names and aliases become `vtab/<task>`.

    Raises:
      UserError: neither a dataset name with a known prefix nor a VTAB task.
    """
    name = name.strip()
    if name.startswith("vtab/"):
        return f"vtab/{get_task(name.removeprefix('vtab/')).name}"
    if name.startswith("folder:"):  # one folder, one name: the cache key must not depend on cwd
        return "folder:" + os.path.abspath(os.path.expanduser(name.removeprefix("folder:")))
    if name.startswith("procedural:"):
        return f"procedural:{get_procedural_task(name.removeprefix('procedural:')).name}"
    if name.startswith(PREFIXES):
        return name
    try:
        return f"vtab/{get_task(name).name}"
    except UserError:
        raise UserError(
            f"unknown dataset {name!r}; use a VTAB task (cifar100) or a name starting with "
            f"{', '.join(PREFIXES)} (tfds:eurosat/rgb, folder:/data/birds, procedural:count)"
        ) from None


def task_set(spec: str) -> list[str]:
    """Dataset names from a comma-separated list of names and the sets `vtab` (the 19 tasks) and
    `procedural` (all procedural tasks but `pretrain`), e.g. `vtab,folder:/data/birds`."""
    names: list[str] = []
    for item in (n.strip() for n in spec.split(",")):
        if item == "vtab":
            names += [f"vtab/{task}" for task in VTAB_TASKS]
        elif item == "procedural":
            names += [
                f"procedural:{t}" for t, p in PROCEDURAL_TASKS.items() if p.group != "pretraining"
            ]
        elif item:
            names.append(resolve_dataset_name(item))
    if not names:
        raise UserError(f"no datasets in {spec!r}; use vtab, procedural or a comma-separated list")
    return list(dict.fromkeys(names))  # once each, in order


def default_split(name: str) -> str:
    """The split a dataset is measured on by default: the images a task adapts on.

    VTAB and procedural tasks: `train800val200`; image folders: `train`; TFDS datasets: `train`,
    except `tfds:imagenet2012`, whose `validation` split is the usual FID reference.
    """
    if name.startswith(("vtab/", "procedural:")):
        return "train800val200"
    if name.startswith("tfds:imagenet2012"):
        return "validation"
    return "train"


def task_group(name: str) -> str:
    """The group of a VTAB or procedural task (`natural`, ..., `structured`); '' otherwise."""
    if name.startswith("vtab/"):
        return get_task(name.removeprefix("vtab/")).group
    if name.startswith("procedural:"):
        task = PROCEDURAL_TASKS.get(name.removeprefix("procedural:"))
        return task.group if task else ""
    return ""


def known_disparity(name: str) -> str | None:
    """`high`/`low` for VTAB and procedural tasks (from their group); None where a name can't tell."""
    return GROUP_DISPARITY.get(task_group(name))

"""Dataset names, parsed once into a typed value that every layer reads.

A name has a kind and a value: `vtab/<task>` (a VTAB-1k task, aliases such as `pets` accepted),
`fgvc/<name>` (an FGVC dataset in the official layout, `vpt_jax.data.fgvc`),
`tfds:<name>[/<config>][:<version>]` (any prepared TFDS dataset), `folder:<path>` (an image
folder) or `procedural:<task>` (generated data). `parse_dataset` checks the name (an unknown VTAB
or procedural task fails here, before TensorFlow loads) and canonicalises it: aliases become table
names and folder paths absolute, so one dataset has one name in caches, records and reports.

A task's group places it in the study: VTAB's `natural`, `specialized` and `structured` groups
(procedural tasks carry the same groups, and `pretraining`); the FGVC datasets form the `fgvc`
group. Its task disparity, how far its
objective lies from the classification pretraining objective, follows from the group: structured
tasks (counting, distances, positions, orientations) are `high`, the classification-like rest
`low`. TFDS datasets and image folders cannot tell their group by name: they have none.
"""

from __future__ import annotations

import dataclasses
import os

from vpt_jax.data.fgvc import FGVC_TASKS, FgvcTask, get_fgvc_task
from vpt_jax.data.procedural import PROCEDURAL_TASKS, ProceduralTask, get_procedural_task
from vpt_jax.data.vtab import VTAB_TASKS, TaskSpec, get_task
from vpt_jax.errors import UserError

KINDS = {
    "vtab": "vtab/",
    "fgvc": "fgvc/",
    "tfds": "tfds:",
    "folder": "folder:",
    "procedural": "procedural:",
}
PREFIXES = tuple(KINDS.values())
# The groups in the order tables list them; `pretraining` is the procedural stand-in for ImageNet.
GROUPS = ("natural", "specialized", "structured", "fgvc", "pretraining")
DISPARITIES = ("low", "high")
_GROUP_DISPARITY = {
    "natural": "low",
    "specialized": "low",
    "structured": "high",
    "fgvc": "low",
    "pretraining": "low",
}
_EXAMPLES = "vtab/cifar100, fgvc/cub, tfds:eurosat/rgb, folder:/data/birds, procedural:objects"


@dataclasses.dataclass(frozen=True)
class DatasetName:
    """A parsed dataset name.

    Attributes:
      kind: `vtab`, `fgvc`, `tfds`, `folder` or `procedural`.
      value: what follows the prefix: the task's table name, the TFDS spec, the folder's absolute
        path.
    """

    kind: str
    value: str

    def __str__(self) -> str:
        return KINDS[self.kind] + self.value

    @property
    def task(self) -> TaskSpec | FgvcTask | ProceduralTask | None:
        """The VTAB, FGVC or procedural task's table entry; None for TFDS datasets and folders."""
        if self.kind == "vtab":
            return VTAB_TASKS[self.value]
        if self.kind == "fgvc":
            return FGVC_TASKS[self.value]
        if self.kind == "procedural":
            return PROCEDURAL_TASKS[self.value]
        return None

    @property
    def vtab_task(self) -> TaskSpec | None:
        """The VTAB-1k table entry (its splits and sizes); None for other kinds."""
        return VTAB_TASKS[self.value] if self.kind == "vtab" else None

    @property
    def group(self) -> str:
        """`natural`, `specialized`, `structured`, `fgvc` or `pretraining`; '' where the name
        cannot tell."""
        task = self.task
        return task.group if task is not None else ""

    @property
    def disparity(self) -> str | None:
        """`high` or `low` from the group; None where the name cannot tell."""
        return _GROUP_DISPARITY.get(self.group)

    @property
    def short(self) -> str:
        """A table label: the task name (`cifar100`, `count`), else the TFDS spec or folder path."""
        return self.value

    @property
    def default_split(self) -> str:
        """The split whose images a task adapts on, which distances measure by default.

        VTAB and procedural tasks: `train800val200`; FGVC: `trainval`; image folders and TFDS
        datasets: `train`, except `tfds:imagenet2012`, whose `validation` split is the usual FID
        reference.
        """
        if self.kind in ("vtab", "procedural"):
            return "train800val200"
        if self.kind == "fgvc":
            return "trainval"
        if self.kind == "tfds" and self.value.startswith("imagenet2012"):
            return "validation"
        return "train"


def parse_dataset(name: str | DatasetName, *, bare_vtab: bool = False) -> DatasetName:
    """Parses and canonicalises a dataset name.

    Args:
      name: `vtab/<task>`, `tfds:<spec>`, `folder:<path>` or `procedural:<task>` (or a parsed one).
      bare_vtab: also accept a VTAB task without its prefix (`cifar100`, `pets`), as the analysis
        commands do.

    Returns:
      The parsed name.

    Raises:
      UserError: an unknown prefix, VTAB task or procedural task, or an empty TFDS name or path.
    """
    if isinstance(name, DatasetName):
        return name
    text = name.strip()
    for kind, prefix in KINDS.items():
        if text.startswith(prefix):
            return _canonical(kind, text.removeprefix(prefix))
    if bare_vtab and text in _vtab_names():
        return DatasetName("vtab", get_task(text).name)
    expected = (
        "a VTAB task (cifar100) or a name starting with " if bare_vtab else "names start with "
    )
    raise UserError(f"unknown dataset {name!r}; {expected}{', '.join(PREFIXES)} (e.g. {_EXAMPLES})")


def _canonical(kind: str, value: str) -> DatasetName:
    if kind == "vtab":
        return DatasetName(kind, get_task(value).name)
    if kind == "procedural":
        return DatasetName(kind, get_procedural_task(value).name)
    if kind == "fgvc":
        return DatasetName(kind, get_fgvc_task(value).name)
    if not value:
        raise UserError(f"dataset name {KINDS[kind]!r} names nothing; e.g. {_EXAMPLES}")
    if kind == "folder":  # one folder, one name: caches and records must not depend on the cwd
        return DatasetName(kind, os.path.abspath(os.path.expanduser(value)))
    return DatasetName(kind, value)


def _vtab_names() -> set[str]:
    from vpt_jax.data.vtab import ALIASES

    return set(VTAB_TASKS) | set(ALIASES)


def parse_dataset_list(spec: str) -> list[DatasetName]:
    """Datasets from a comma-separated list of names and the sets `vtab` (the 19 VTAB-1k tasks),
    `fgvc` (the five FGVC datasets) and `procedural` (every procedural task but `pretrain`), e.g.
    `vtab,folder:/data/birds`.

    Bare VTAB task names are accepted; each dataset appears once, in order.
    """
    names: list[DatasetName] = []
    for item in (n.strip() for n in spec.split(",")):
        if item == "vtab":
            names += [DatasetName("vtab", task) for task in VTAB_TASKS]
        elif item == "fgvc":
            names += [DatasetName("fgvc", task) for task in FGVC_TASKS]
        elif item == "procedural":
            names += [
                DatasetName("procedural", t)
                for t, task in PROCEDURAL_TASKS.items()
                if task.group != "pretraining"
            ]
        elif item:
            names.append(parse_dataset(item, bare_vtab=True))
    if not names:
        raise UserError(
            f"no datasets in {spec!r}; use vtab, fgvc, procedural or a comma-separated list"
        )
    return list(dict.fromkeys(names))

"""The 19 VTAB-1k tasks in one table, with splits as google-research/task_adaptation defines them.

Each task names a TFDS builder (and config and version), how its label is read or derived, its
number of classes, its group, and two *regions* of its TFDS splits: the training region (VTAB's
`train`) and the validation region (VTAB's `val`). The standard VTAB-1k splits follow from them:

* `train800`: the first 800 examples of the training region (always `train[:800]`);
* `val200`: the first 200 examples of the validation region (cifar100: `train[45000:45200]`);
* `train800val200`: both;
* `test`: VTAB's test split.

Data-scaling splits take the first `n` examples of the same regions (`vpt_jax.data.splits`).
Regions are in absolute example indices, computed by VTAB from the TFDS split sizes recorded in
`source_sizes` (e.g. caltech101 trains on 90% of its 3060 `train` examples: `train[:2754]`).

Versions: the wildcard pins resolve to the builders that tensorflow-datasets 4.9 ships. They are
VTAB's pins except oxford_iiit_pet (VTAB `3.*.*`; TFDS only builds 4.0.0 now, which fixed corrupt
images and added head boxes) and kitti (VTAB `3.1.0`; the VPT code, whose numbers the study
reproduces, pins `3.2.0`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from vpt_jax.errors import UserError

STANDARD_SPLITS = ("train800", "val200", "train800val200", "test")
TRAIN_1K, VAL_1K = 800, 200


@dataclasses.dataclass(frozen=True)
class Region:
    """A contiguous range `[start, stop)` of one TFDS split; `stop=None` runs to the split's end."""

    split: str
    start: int = 0
    stop: int | None = None

    def size(self, split_sizes: Mapping[str, int]) -> int:
        """Number of examples in the region, given the TFDS split sizes."""
        end = split_sizes[self.split] if self.stop is None else self.stop
        return end - self.start

    def head(self, count: int) -> str:
        """The TFDS split string of the region's first `count` examples."""
        if self.start == 0:
            return f"{self.split}[:{count}]"
        return f"{self.split}[{self.start}:{self.start + count}]"


@dataclasses.dataclass(frozen=True)
class TaskSpec:
    """One VTAB-1k task.

    Attributes:
        name: Task name, e.g. `clevr_count`.
        builder: TFDS builder and config, e.g. `sun397/tfds`.
        version: TFDS version pin, e.g. `3.*.*`.
        label: The feature holding the label, or the name of a derived label
            (`vpt_jax.data.labels.DERIVED_LABELS`).
        num_classes: Number of classes.
        group: `natural`, `specialized` or `structured` (its task disparity: `vpt_jax.data.names`).
        train: VTAB's training region.
        val: VTAB's validation region.
        test: VTAB's test split as a TFDS split string.
        source_sizes: Examples per TFDS split of the pinned version, used where the prepared
            dataset's metadata is unavailable.
        prompt_length: The VPT-deep prompt length the paper's ViT-B/16 numbers imply for the task
            (its per-task choice; the study uses it unless told otherwise).
        class_names: Names of derived classes; None reads them from the TFDS label feature.
        binary_image: Images hold 0/1 values (dsprites) and are scaled to 0/255.
    """

    name: str
    builder: str
    version: str
    label: str
    num_classes: int
    group: str
    train: Region
    val: Region
    test: str
    source_sizes: Mapping[str, int]
    prompt_length: int
    class_names: tuple[str, ...] | None = None
    binary_image: bool = False

    @property
    def tfds_name(self) -> str:
        """The name `tfds.builder` takes: builder, config and version."""
        return f"{self.builder}:{self.version}"

    def standard_split(self, split: str) -> str:
        """The TFDS split string of `train800`, `val200`, `train800val200` or `test`."""
        splits = {
            "train800": self.train.head(TRAIN_1K),
            "val200": self.val.head(VAL_1K),
            "train800val200": f"{self.train.head(TRAIN_1K)}+{self.val.head(VAL_1K)}",
            "test": self.test,
        }
        if split not in splits:
            raise UserError(f"unknown VTAB-1k split {split!r}; use one of {', '.join(splits)}")
        return splits[split]


def _train_val_test(train: int, val: int, test: int) -> dict[str, int]:
    return {"train": train, "validation": val, "test": test}


_TRAIN = Region("train")
_VALIDATION = Region("validation")
_CLEVR_SIZES = _train_val_test(70000, 15000, 15000)
_DSPRITES_SIZES = {"train": 737280}
_SMALLNORB_SIZES = {"train": 24300, "test": 24300}
_DSPRITES_BINS = tuple(f"bin {i}" for i in range(16))

_TASKS = (
    # Natural.
    TaskSpec("caltech101", "caltech101", "3.*.*", "label", 102, "natural",
             Region("train", 0, 2754), Region("train", 2754), "test",
             {"train": 3060, "test": 6084}, 10),
    TaskSpec("cifar100", "cifar100", "3.*.*", "label", 100, "natural",
             Region("train", 0, 45000), Region("train", 45000), "test",
             {"train": 50000, "test": 10000}, 10),
    TaskSpec("dtd", "dtd", "3.*.*", "label", 47, "natural",
             _TRAIN, _VALIDATION, "test", _train_val_test(1880, 1880, 1880), 10),
    TaskSpec("oxford_flowers102", "oxford_flowers102", "2.*.*", "label", 102, "natural",
             _TRAIN, _VALIDATION, "test", _train_val_test(1020, 1020, 6149), 1),
    TaskSpec("oxford_iiit_pet", "oxford_iiit_pet", "4.*.*", "label", 37, "natural",
             Region("train", 0, 2944), Region("train", 2944), "test",
             {"train": 3680, "test": 3669}, 1),
    TaskSpec("svhn_cropped", "svhn_cropped", "3.*.*", "label", 10, "natural",
             Region("train", 0, 65931), Region("train", 65931), "test",
             {"train": 73257, "test": 26032, "extra": 531131}, 50),
    TaskSpec("sun397", "sun397/tfds", "4.*.*", "label", 397, "natural",
             _TRAIN, _VALIDATION, "test", _train_val_test(76128, 10875, 21750), 5),
    # Specialized.
    TaskSpec("patch_camelyon", "patch_camelyon", "2.*.*", "label", 2, "specialized",
             _TRAIN, _VALIDATION, "test", _train_val_test(262144, 32768, 32768), 100),
    TaskSpec("eurosat", "eurosat/rgb", "2.*.*", "label", 10, "specialized",
             Region("train", 0, 16200), Region("train", 16200, 21600), "train[21600:]",
             {"train": 27000}, 100),
    TaskSpec("resisc45", "resisc45", "3.*.*", "label", 45, "specialized",
             Region("train", 0, 18900), Region("train", 18900, 25200), "train[25200:]",
             {"train": 31500}, 10),
    TaskSpec("diabetic_retinopathy", "diabetic_retinopathy_detection/btgraham-300", "3.*.*",
             "label", 5, "specialized", _TRAIN, _VALIDATION, "test",
             _train_val_test(35126, 10906, 42670), 1),
    # Structured.
    TaskSpec("clevr_count", "clevr", "3.*.*", "clevr_count", 8, "structured",
             Region("train", 0, 63000), Region("train", 63000), "validation", _CLEVR_SIZES,
             50, class_names=tuple(f"{n} objects" for n in range(3, 11))),
    TaskSpec("clevr_distance", "clevr", "3.*.*", "clevr_closest_distance", 6, "structured",
             Region("train", 0, 63000), Region("train", 63000), "validation", _CLEVR_SIZES,
             200, class_names=("<=8", "8-8.5", "8.5-9", "9-9.5", "9.5-10", ">10")),
    TaskSpec("dmlab", "dmlab", "2.0.1", "label", 6, "structured",
             _TRAIN, _VALIDATION, "test", _train_val_test(65550, 22628, 22735), 100),
    TaskSpec("kitti_distance", "kitti", "3.2.0", "kitti_closest_vehicle_distance", 4, "structured",
             _TRAIN, _VALIDATION, "test", _train_val_test(6347, 423, 711),
             50, class_names=("vehicle <=8m", "vehicle 8-20m", "vehicle >20m", "no vehicle")),
    TaskSpec("dsprites_location", "dsprites", "2.*.*", "dsprites_location", 16, "structured",
             Region("train", 0, 589824), Region("train", 589824, 663552), "train[663552:]",
             _DSPRITES_SIZES, 10, class_names=_DSPRITES_BINS, binary_image=True),
    TaskSpec("dsprites_orientation", "dsprites", "2.*.*", "dsprites_orientation", 16, "structured",
             Region("train", 0, 589824), Region("train", 589824, 663552), "train[663552:]",
             _DSPRITES_SIZES, 50, class_names=_DSPRITES_BINS, binary_image=True),
    TaskSpec("smallnorb_azimuth", "smallnorb", "2.*.*", "label_azimuth", 18, "structured",
             _TRAIN, Region("test", 0, 12150), "test[50%:]", _SMALLNORB_SIZES, 200),
    TaskSpec("smallnorb_elevation", "smallnorb", "2.*.*", "label_elevation", 9, "structured",
             _TRAIN, Region("test", 0, 12150), "test[50%:]", _SMALLNORB_SIZES, 200),
)  # fmt: skip

VTAB_TASKS: dict[str, TaskSpec] = {task.name: task for task in _TASKS}

# Names used by the VPT code and the paper's tables, for convenience.
ALIASES = {
    "caltech": "caltech101",
    "flowers102": "oxford_flowers102",
    "pets": "oxford_iiit_pet",
    "svhn": "svhn_cropped",
    "camelyon": "patch_camelyon",
    "patch_camelyon17": "patch_camelyon",
    "retinopathy": "diabetic_retinopathy",
    "clevr_dist": "clevr_distance",
    "kitti": "kitti_distance",
    "dsprites_loc": "dsprites_location",
    "dsprites_ori": "dsprites_orientation",
    "smallnorb_azi": "smallnorb_azimuth",
    "smallnorb_ele": "smallnorb_elevation",
}


def get_task(name: str) -> TaskSpec:
    """The VTAB-1k task called `name` (a table name or an alias such as `pets`).

    Args:
        name: Task name.

    Returns:
        The task's table entry.

    Raises:
        UserError: The task does not exist; the message lists the valid names.
    """
    task = VTAB_TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise UserError(f"unknown VTAB-1k task {name!r}; valid tasks: {', '.join(VTAB_TASKS)}")
    return task

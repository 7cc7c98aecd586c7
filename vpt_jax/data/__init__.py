"""Data: the VTAB-1k tasks through TFDS, other TFDS datasets, image folders, procedural data.

One entry point reads them all:

    source = get_dataset("vtab/cifar100", "test", data_dir="~/tensorflow_datasets")
    for batch in padded_batches(source, 256): ...          # stream a large split
    train = get_dataset("vtab/cifar100", "train800").materialize()   # ArraySplit, uint8 arrays

Dataset names:

* `vtab/<task>`: a VTAB-1k task (`VTAB_TASKS`); splits `train800`, `val200`, `train800val200`,
  `test`, or data-scaling sizes `train{n}`, `val{m}`, `train{n}val{m}` (`scaling_splits`).
  Prepare the TFDS data once with `python -m vpt_jax.data.prepare vtab --data_dir DIR`.
* `fgvc/<name>`: an FGVC dataset (`FGVC_TASKS`: cub, nabirds, flowers, dogs, cars) in the official
  layout under `data_dir` (`vpt_jax.data.fgvc`); splits `train`, `val`, `trainval`, `test`;
  evaluation images are resized (shorter side) and centre-cropped as the official code does.
* `tfds:<name>[/<config>][:<version>]`: any prepared TFDS classification dataset; the split is a
  TFDS split string (`train[:1000]`, `train[:80%]+validation`).
* `folder:<path>`: an image folder (`vpt_jax.data.folder`); splits `train`, `val`, `trainval`,
  `test`.
* `procedural:<task>`: generated data (`PROCEDURAL_TASKS`); splits as for VTAB, plus `test{n}`.

Images come out uint8 `(H, W, 3)` at `image_size`; normalisation and augmentation run on the device
(`vpt_jax.data.preprocess`). TensorFlow is imported only when a TFDS dataset or an image folder is
read.
"""

from __future__ import annotations

import os

from vpt_jax.data.fgvc import FGVC_TASKS, FgvcSplit, fgvc_split
from vpt_jax.data.names import (
    DISPARITIES,
    GROUPS,
    PREFIXES,
    DatasetName,
    parse_dataset,
    parse_dataset_list,
)
from vpt_jax.data.pipeline import (
    Batch,
    epoch_batch_indices,
    epoch_permutation,
    padded_batches,
    steps_per_epoch,
)
from vpt_jax.data.preprocess import NORMALIZATIONS, augment, normalize, preprocess_batch
from vpt_jax.data.procedural import PROCEDURAL_TASKS, get_procedural_task
from vpt_jax.data.source import ArraySplit, DataSource
from vpt_jax.data.splits import ScalingSplits, max_scaling_size, one_shot_split, scaling_splits
from vpt_jax.data.vtab import STANDARD_SPLITS, VTAB_TASKS, TaskSpec, get_task
from vpt_jax.errors import UserError


def get_dataset(
    name: str | DatasetName,
    split: str,
    *,
    data_dir: str | None = None,
    image_size: int = 224,
    label_key: str = "label",
    image_key: str = "image",
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DataSource:
    """Opens one split of a dataset, checking everything that can be checked before reading.

    Args:
        name: `vtab/<task>`, `fgvc/<name>`, `tfds:<name>[/<config>][:<version>]`, `folder:<path>` or
            `procedural:<task>` (see `vpt_jax.data.names`), or a parsed `DatasetName`.
        split: The split (see the module docstring for each kind's split names).
        data_dir: TFDS data directory (`vtab/`, `tfds:`; `fgvc/`: the folder holding the FGVC
            dataset folders); None uses TFDS's default
            (`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).
        image_size: Height and width the images are resized (or drawn) to.
        label_key: `tfds:` only: the class-label feature.
        image_key: `tfds:` only: the image feature.
        val_fraction: `folder:` only: share of each class held out as `val` without a `val/` folder.
        seed: `folder:`: seed of that hold-out; `procedural:`: dataset seed.

    Returns:
        A `DataSource`; `.materialize()` gives an `ArraySplit`.

    Raises:
        UserError: Unknown dataset, task or split, an unprepared TFDS dataset, a split larger than
            its source, or an unreadable image folder.
    """
    if image_size < 1:
        raise UserError(f"image_size must be positive, got {image_size}")
    if data_dir is not None:
        data_dir = os.path.expanduser(data_dir)
    dataset = parse_dataset(name)  # an unknown task fails here, before TensorFlow loads
    if dataset.kind == "vtab":
        from vpt_jax.data.tfds_reader import vtab_source

        return vtab_source(dataset.vtab_task, split, data_dir=data_dir, image_size=image_size)
    if dataset.kind == "fgvc":
        return fgvc_split(dataset.value, split, data_dir=data_dir).source(image_size)
    if dataset.kind == "tfds":
        from vpt_jax.data.tfds_reader import tfds_source

        return tfds_source(
            dataset.value,
            split,
            data_dir=data_dir,
            image_size=image_size,
            label_key=label_key,
            image_key=image_key,
        )
    if dataset.kind == "folder":
        from vpt_jax.data.folder import folder_source

        return folder_source(
            dataset.value, split, image_size=image_size, val_fraction=val_fraction, seed=seed
        )
    from vpt_jax.data.procedural import procedural_source

    return procedural_source(dataset.value, split, image_size=image_size, seed=seed)


def load_split(name: str, split: str, **kwargs) -> ArraySplit:
    """`get_dataset(name, split, **kwargs).materialize()`: a split read into memory.

    Args:
        name: Dataset name, as for `get_dataset`.
        split: Split name, as for `get_dataset`.
        **kwargs: Keyword arguments of `get_dataset`.

    Returns:
        The split as uint8 images and int32 labels.
    """
    return get_dataset(name, split, **kwargs).materialize()


__all__ = [
    "DISPARITIES",
    "GROUPS",
    "PREFIXES",
    "DatasetName",
    "FGVC_TASKS",
    "FgvcSplit",
    "fgvc_split",
    "parse_dataset",
    "parse_dataset_list",
    "NORMALIZATIONS",
    "PROCEDURAL_TASKS",
    "STANDARD_SPLITS",
    "VTAB_TASKS",
    "ArraySplit",
    "Batch",
    "DataSource",
    "ScalingSplits",
    "TaskSpec",
    "augment",
    "epoch_batch_indices",
    "epoch_permutation",
    "get_dataset",
    "get_procedural_task",
    "get_task",
    "load_split",
    "max_scaling_size",
    "normalize",
    "one_shot_split",
    "padded_batches",
    "preprocess_batch",
    "scaling_splits",
    "steps_per_epoch",
]

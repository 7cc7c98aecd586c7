"""Reading TFDS datasets: the VTAB-1k tasks by name, and any TFDS dataset with custom split strings.

Datasets are read from a prepared TFDS `data_dir` (default: `$TFDS_DATA_DIR`, else
`~/tensorflow_datasets`); nothing is downloaded here. A dataset that is not prepared fails at once
with the `tfds build` command that prepares it. Examples are read in their stored order (no file
shuffling), decoded, labelled, converted to uint8 RGB at the model resolution in tf.data, and
batched.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vpt_jax.data import labels as labels_lib
from vpt_jax.data.host_tf import tf
from vpt_jax.data.image_convert import to_model_image
from vpt_jax.data.source import DataSource
from vpt_jax.data.splits import vtab_tfds_split
from vpt_jax.data.vtab import TaskSpec
from vpt_jax.errors import UserError

PREFETCH_BATCHES = 2


@dataclasses.dataclass(frozen=True)
class TfdsName:
    """A parsed `name[/config][:version]`."""

    name: str
    config: str | None
    version: str | None

    @classmethod
    def parse(cls, spec: str) -> TfdsName:
        """Parses `name[/config][:version]`, e.g. `eurosat/rgb:2.*.*`."""
        base, _, version = spec.partition(":")
        name, _, config = base.partition("/")
        if not name:
            raise UserError(
                f"empty TFDS dataset name in {spec!r}; use tfds:NAME[/CONFIG][:VERSION]"
            )
        return cls(name=name, config=config or None, version=version or None)

    def __str__(self) -> str:
        text = self.name + (f"/{self.config}" if self.config else "")
        return text + (f":{self.version}" if self.version else "")


def make_builder(spec: str, data_dir: str | None) -> Any:
    """A TFDS builder, prepared or not, with one-line errors for names TFDS does not know.

    Args:
        spec: `name[/config][:version]`.
        data_dir: TFDS data directory; None uses TFDS's default.

    Returns:
        The `tfds.core.DatasetBuilder`.

    Raises:
        UserError: Unknown dataset, config or version.
    """
    parsed = TfdsName.parse(spec)
    try:
        return tfds.builder(str(parsed), data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise UserError(
            f"unknown TFDS dataset {parsed.name!r}; see https://www.tensorflow.org/datasets/catalog"
        ) from None
    except (AssertionError, ValueError) as error:  # unknown config or version
        reason = str(error).strip().splitlines()[0].rsplit('": ', 1)[-1]
        configs = [c.name for c in tfds.builder_cls(parsed.name).BUILDER_CONFIGS or ()]
        if configs:
            reason += f" (configs: {', '.join(configs)})"
        raise UserError(f"cannot open TFDS dataset {parsed}: {reason}") from None


def open_builder(spec: str, data_dir: str | None) -> Any:
    """A TFDS builder for a prepared dataset, or a one-line error saying how to prepare it.

    Args:
        spec: `name[/config][:version]`.
        data_dir: TFDS data directory; None uses TFDS's default.

    Returns:
        The `tfds.core.DatasetBuilder`.

    Raises:
        UserError: Missing `data_dir`, unknown dataset, config or version, or data not prepared.
    """
    if data_dir is not None and not tf.io.gfile.isdir(data_dir):
        raise UserError(
            f"data_dir {data_dir} does not exist; point data_dir at your TFDS data directory"
        )
    builder = make_builder(spec, data_dir)
    try:
        # Builds a dataset object without reading from it: TFDS checks here that the files exist.
        builder.as_dataset(split=next(iter(builder.info.splits), None), shuffle_files=False)
    except AssertionError as error:
        if "could not find data" not in str(error):
            raise
        raise UserError(not_prepared_message(builder)) from None
    return builder


def not_prepared_message(builder: Any) -> str:
    """How to prepare the builder's dataset, in one line: the commands and any manual download."""
    name = builder.name + (f"/{builder.builder_config.name}" if builder.builder_config else "")
    spec, data_dir = f"{name}:{builder.version}", builder.data_dir_root
    # Datasets TFDS cannot download itself (resisc45, diabetic_retinopathy_detection) say how.
    manual = " ".join((getattr(builder, "MANUAL_DOWNLOAD_INSTRUCTIONS", None) or "").split())
    manual_dir = " --manual_dir=MANUAL_DIR" if manual else ""
    commands = (
        f"`tfds build {spec}{manual_dir} --data_dir={data_dir}` (the tfds tool needs apache-beam) "
        f"or `python -m vpt_jax.data.prepare tfds:{spec}{manual_dir} --data_dir={data_dir}`"
    )
    if manual:
        return (
            f"TFDS dataset {spec} is not prepared in data_dir={data_dir} and needs a manual "
            f"download: {manual} Then run {commands}"
        )
    return (
        f"TFDS dataset {spec} is not prepared in data_dir={data_dir}; run {commands}, "
        "or pass data_dir= where it is prepared"
    )


def split_sizes(builder: Any) -> dict[str, int]:
    """Examples per split from the prepared dataset's metadata (empty when it lists none)."""
    return {name: info.num_examples for name, info in builder.info.splits.items()}


def make_source(
    builder: Any,
    split: str,
    *,
    name: str,
    label: str,
    num_classes: int,
    class_names: tuple[str, ...],
    image_size: int,
    image_key: str = "image",
    binary_image: bool = False,
    num_examples: int | None = None,
) -> DataSource:
    """A `DataSource` reading `split` of a prepared TFDS dataset.

    Args:
        builder: The TFDS builder.
        split: TFDS split string.
        name: Name of the source, e.g. `vtab/cifar100:train800`.
        label: A derived label name or a feature key (`vpt_jax.data.labels.label_fn`).
        num_classes: Number of classes.
        class_names: One name per class.
        image_size: Model resolution.
        image_key: The image feature.
        binary_image: Images hold 0/1 values.
        num_examples: Examples in the split, when known.

    Returns:
        The source.
    """
    label_of = labels_lib.label_fn(label)

    def convert(example: Mapping[str, Any]) -> tuple[Any, Any]:
        image = to_model_image(example[image_key], image_size, binary=binary_image)
        return image, tf.cast(label_of(example), tf.int32)

    def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
        dataset = dataset.map(convert, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        dataset = dataset.batch(batch_size).prefetch(PREFETCH_BATCHES)
        yield from dataset.as_numpy_iterator()

    return DataSource(
        name=name,
        num_classes=num_classes,
        class_names=class_names,
        image_size=image_size,
        num_examples=num_examples,
        read=read,
    )


def vtab_source(task: TaskSpec, split: str, *, data_dir: str | None, image_size: int) -> DataSource:
    """A VTAB-1k task's split.

    Args:
        task: The task's table entry.
        split: `train800`, `val200`, `train800val200`, `test`, or a data-scaling size.
        data_dir: TFDS data directory.
        image_size: Model resolution.

    Returns:
        The source; `num_examples` is None where the dataset's metadata lists no split sizes.
    """
    builder = open_builder(task.tfds_name, data_dir)
    known_sizes = split_sizes(builder)
    # Refuse oversized requests before reading; the table's sizes stand in for missing metadata.
    tfds_split = vtab_tfds_split(task, split, known_sizes or task.source_sizes)
    class_names = task.class_names or _class_names(builder, task.label, task.num_classes)
    num_examples = None
    if known_sizes:
        try:
            num_examples = builder.info.splits[tfds_split].num_examples
        except (ValueError, KeyError) as error:
            # A dataset prepared in part (`tfds build --max_examples_per_split`) passes the region
            # checks above, which know bounded regions only by the table's boundaries.
            raise UserError(
                f"vtab/{task.name}:{split} reads {tfds_split}, which TFDS dataset {task.tfds_name} "
                f"prepared at {builder.data_dir} cannot supply ({_one_line(error)}); was it "
                "prepared in part? Delete that directory and prepare the dataset in full"
            ) from None
    return make_source(
        builder,
        tfds_split,
        name=f"vtab/{task.name}:{split}",
        label=task.label,
        num_classes=task.num_classes,
        class_names=class_names,
        image_size=image_size,
        binary_image=task.binary_image,
        num_examples=num_examples,
    )


def _one_line(error: Exception) -> str:
    return " ".join(str(error).strip("'\" ").split()).rstrip(".")


def tfds_source(
    spec: str,
    split: str,
    *,
    data_dir: str | None,
    image_size: int,
    label_key: str = "label",
    image_key: str = "image",
) -> DataSource:
    """Any prepared TFDS image-classification dataset, with a TFDS split string.

    Args:
        spec: `name[/config][:version]`.
        split: TFDS split string, e.g. `train[:1000]` or `train[:80%]+validation`.
        data_dir: TFDS data directory.
        image_size: Model resolution.
        label_key: The integer class-label feature.
        image_key: The image feature.

    Returns:
        The source.

    Raises:
        UserError: Missing features, a non-class label, or a split the dataset cannot supply.
    """
    builder = open_builder(spec, data_dir)
    features = builder.info.features
    for key in (image_key, label_key):
        if key not in features:
            raise UserError(
                f"tfds:{spec} has no feature {key!r}; its features: {', '.join(features)}"
            )
    label_feature = features[label_key]
    if not isinstance(label_feature, tfds.features.ClassLabel):
        raise UserError(f"tfds:{spec} feature {label_key!r} is not a class label; pass label_key=")
    num_examples = None
    if split_sizes(builder):
        try:
            num_examples = builder.info.splits[split].num_examples
        except (ValueError, KeyError) as error:
            raise UserError(f"tfds:{spec} cannot supply split {split!r}: {error}") from None
    return make_source(
        builder,
        split,
        name=f"tfds:{spec}:{split}",
        label=label_key,
        num_classes=label_feature.num_classes,
        class_names=_class_names(builder, label_key, label_feature.num_classes),
        image_size=image_size,
        image_key=image_key,
        num_examples=num_examples,
    )


def _class_names(builder: Any, key: str, num_classes: int) -> tuple[str, ...]:
    feature = builder.info.features[key]
    names = tuple(getattr(feature, "names", None) or ())
    return names if len(names) == num_classes else tuple(str(i) for i in range(num_classes))

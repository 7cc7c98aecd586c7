"""The two things every dataset reader returns: a stream of batches, and arrays held in memory.

Every reader (VTAB-1k and other TFDS datasets, image folders, procedural data) produces a
`DataSource`: images already decoded, converted to 3 channels and resized to the model resolution,
as uint8 `(B, H, W, 3)` batches in a fixed order, with int32 labels. A small split is turned into an
`ArraySplit` once (`source.materialize()`) and lives on the accelerator during training; a large
evaluation split is read batch by batch (`vpt_jax.data.pipeline.padded_batches`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator

import numpy as np

# Reads a split in its fixed order as `(images uint8 (B,H,W,3), labels int32 (B,))` batches of at
# most the given size.
BatchReader = Callable[[int], Iterator[tuple[np.ndarray, np.ndarray]]]

MATERIALIZE_BATCH = 256


@dataclasses.dataclass(frozen=True, eq=False)
class ArraySplit:
    """A split held in memory.

    Attributes:
        images: uint8 `(N, H, W, 3)`, values 0..255, not normalised.
        labels: int32 `(N,)`, in `[0, num_classes)`.
        num_classes: Number of classes of the task (classes absent from this split included).
        class_names: One name per class, index = label.
        name: Where it came from, e.g. `vtab/cifar100:train800`.
    """

    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] != 3:
            raise ValueError(
                f"images must be uint8 (N,H,W,3), got {self.images.dtype} {self.images.shape}"
            )
        if self.labels.dtype != np.int32 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"labels must be int32 ({len(self.images)},), "
                f"got {self.labels.dtype} {self.labels.shape}"
            )
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: np.ndarray, name: str | None = None) -> ArraySplit:
        """The examples at `indices`, in that order.

        Args:
            indices: Integer positions into this split.
            name: Name of the subset; defaults to this split's name.

        Returns:
            A new split sharing this split's classes.
        """
        indices = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self, images=self.images[indices], labels=self.labels[indices], name=name or self.name
        )


@dataclasses.dataclass(frozen=True, eq=False)
class DataSource:
    """A split that can be read in batches, in a fixed order, as many times as needed.

    Attributes:
        name: Where it comes from, e.g. `vtab/cifar100:test`.
        num_classes: Number of classes of the task.
        class_names: One name per class, index = label.
        image_size: Height and width of every image.
        num_examples: Examples in the split, or None where the reader cannot know it in advance
            (TFDS data whose metadata lists no split sizes, as under `tfds.testing.mock_data`).
        read: The batch reader.
    """

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_size: int
    num_examples: int | None
    read: BatchReader

    def batches(self, batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields `(images uint8 (B,H,W,3), labels int32 (B,))`; only the last batch may be short.

        Args:
            batch_size: Examples per batch.

        Returns:
            An iterator over the whole split, in its fixed order.
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        return self.read(batch_size)

    def materialize(self) -> ArraySplit:
        """Reads the whole split into memory.

        Returns:
            The split as arrays (an empty split gives zero-length arrays).
        """
        images, labels = [], []
        for batch_images, batch_labels in self.batches(MATERIALIZE_BATCH):
            images.append(np.asarray(batch_images, dtype=np.uint8))
            labels.append(np.asarray(batch_labels, dtype=np.int32))
        if not images:
            size = self.image_size
            images, labels = [np.zeros((0, size, size, 3), np.uint8)], [np.zeros((0,), np.int32)]
        return ArraySplit(
            images=np.concatenate(images),
            labels=np.concatenate(labels),
            num_classes=self.num_classes,
            class_names=self.class_names,
            name=self.name,
        )

    @classmethod
    def from_arrays(cls, split: ArraySplit) -> DataSource:
        """A source that reads an in-memory split.

        Args:
            split: The arrays to read.

        Returns:
            A source whose batches are consecutive slices of `split`.
        """

        def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(split), batch_size):
                yield (
                    split.images[start : start + batch_size],
                    split.labels[start : start + batch_size],
                )

        return cls(
            name=split.name,
            num_classes=split.num_classes,
            class_names=split.class_names,
            image_size=split.images.shape[1],
            num_examples=len(split),
            read=read,
        )

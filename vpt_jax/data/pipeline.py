"""Batches for training and evaluation with fixed shapes, so each jitted step compiles once.

Training: the split lives on the device (`ArraySplit`); each epoch visits it in a seeded
permutation, `epoch_batch_indices` gives the positions of every step's examples. The last step of an
epoch may be short: it is padded and masked, so a masked mean of the loss equals the mean over its
real examples (what a PyTorch loader with `drop_last=False` does), or dropped with
`drop_remainder=True`.

Evaluation: `padded_batches` streams any split (in memory or read from disk) in fixed-size batches
with a boolean mask; every example appears exactly once with mask True, padding has mask False.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from vpt_jax.data.source import ArraySplit, DataSource


@dataclasses.dataclass(frozen=True)
class Batch:
    """A fixed-size batch.

    Attributes:
        images: uint8 `(B, H, W, 3)`; padding rows are zeros.
        labels: int32 `(B,)`; padding rows are 0.
        mask: bool `(B,)`; True for real examples.
    """

    images: np.ndarray
    labels: np.ndarray
    mask: np.ndarray


def padded_batches(data: DataSource | ArraySplit, batch_size: int) -> Iterator[Batch]:
    """Every example exactly once, in fixed-size batches; the last one padded and masked.

    Args:
        data: A source (streamed) or an in-memory split.
        batch_size: Examples per batch.

    Returns:
        An iterator of batches; an empty split gives none.
    """
    source = DataSource.from_arrays(data) if isinstance(data, ArraySplit) else data
    for images, labels in source.batches(batch_size):
        count = len(labels)
        mask = np.zeros(batch_size, bool)
        mask[:count] = True
        if count < batch_size:
            pad = batch_size - count
            images = np.concatenate([images, np.zeros((pad, *images.shape[1:]), images.dtype)])
            labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
        yield Batch(
            images=np.asarray(images, np.uint8), labels=np.asarray(labels, np.int32), mask=mask
        )


def epoch_permutation(num_examples: int, *, seed: int, epoch: int) -> np.ndarray:
    """The order in which an epoch visits the training examples.

    Args:
        num_examples: Size of the training split.
        seed: Run seed.
        epoch: Epoch number; each epoch gets its own order.

    Returns:
        int32 permutation of `range(num_examples)`, the same for the same `(seed, epoch)`.
    """
    rng = np.random.default_rng([seed, epoch])
    return rng.permutation(num_examples).astype(np.int32)


def steps_per_epoch(num_examples: int, batch_size: int, drop_remainder: bool = False) -> int:
    """Number of steps `epoch_batch_indices` gives per epoch.

    Args:
        num_examples: Size of the training split.
        batch_size: Examples per step.
        drop_remainder: Whether a last, short step is dropped.

    Returns:
        The number of steps.
    """
    if drop_remainder:
        return num_examples // batch_size
    return -(-num_examples // batch_size)


def epoch_batch_indices(
    num_examples: int, batch_size: int, *, seed: int, epoch: int, drop_remainder: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of each training step's examples for one epoch, with a mask for padding.

    Args:
        num_examples: Size of the training split.
        batch_size: Examples per step.
        seed: Run seed.
        epoch: Epoch number.
        drop_remainder: Drop a last, short step instead of padding it.

    Returns:
        `(indices, mask)`: int32 and bool arrays of shape `(steps, batch_size)`. Padding positions
        point at example 0 and have mask False.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    order = epoch_permutation(num_examples, seed=seed, epoch=epoch)
    steps = steps_per_epoch(num_examples, batch_size, drop_remainder)
    flat = np.zeros(steps * batch_size, np.int32)
    mask = np.zeros(steps * batch_size, bool)
    used = min(num_examples, steps * batch_size)
    flat[:used] = order[:used]
    mask[:used] = True
    return flat.reshape(steps, batch_size), mask.reshape(steps, batch_size)

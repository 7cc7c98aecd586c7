"""The training split as the train steps read it: on the devices, or streamed from the host.

A split that fits (`RESIDENT_FRACTION` of the device's and the host's memory) is read once and put
on the devices; each step gathers its examples there by index (`step.indices_step`), with no host
work per step. A larger one (NABirds, Stanford Dogs at high resolution, or `data.stream_train`)
never exists whole: each step's examples are read on the host (decoded and resized on a thread
pool, for FGVC), a step or two ahead of the device, and sent with the step. Both paths feed the same
compiled step: a streamed step's arrays hold only its examples, indexed by their place there, so a
grid's members, whose batches differ, share one transfer of the union of their examples.

Training images are model-sized uint8 arrays (`image`), or canvases with their extents (`image`,
`extent`) for the FGVC random crop (`data.resize_crop`, `vpt_jax.data.resize_crop`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
from collections.abc import Callable, Iterator

import jax
import numpy as np
from jax.sharding import Mesh

from vpt_jax.data import ArraySplit, FgvcSplit
from vpt_jax.data.resize_crop import canvas_shape
from vpt_jax.train import feed

RESIDENT_FRACTION = 0.25  # of the smaller of device and host memory a resident split may take
PREFETCH_STEPS = 2
READ_CHUNK = 256  # examples decoded at a time when a split is read whole

# The host arrays of the examples at the given (sorted, unique) indices, labels included.
Gather = Callable[[np.ndarray], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True, eq=False)
class TrainData:
    """A training split.

    Attributes:
        name: where it came from, e.g. `fgvc/cub:train`.
        labels: int32 `(N,)`.
        num_classes: classes of the task.
        class_names: one per class.
        arrays: the whole split in host memory (`image`, `label`, and `extent` for canvases), to be
            put on the devices; None when it streams.
        gather: reads the examples at some indices (streamed splits).
    """

    name: str
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    arrays: dict[str, np.ndarray] | None
    gather: Gather | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @classmethod
    def from_split(cls, split: ArraySplit) -> TrainData:
        """A split already in memory (resident)."""
        arrays = {"image": split.images, "label": split.labels.astype(np.int32)}
        return cls(split.name, arrays["label"], split.num_classes, split.class_names, arrays)


def resident_budget(mesh: Mesh | None = None) -> int:
    """Bytes a resident training split may take: `RESIDENT_FRACTION` of host memory, and of one
    device's memory where the device reports it."""
    budget = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    device = mesh.devices.flat[0] if mesh is not None else jax.devices()[0]
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        budget = min(budget, int(stats["bytes_limit"]))
    return int(budget * RESIDENT_FRACTION)


def fgvc_train_data(
    split: FgvcSplit, image_size: int, *, canvases: bool, stream: bool | None = None
) -> TrainData:
    """An FGVC split for training: canvases for the random crop, or evaluation images.

    Args:
        split: the split's files and labels.
        image_size: the model resolution.
        canvases: keep each image's resize for the random crop (`data.resize_crop`).
        stream: True streams, False reads the split whole; None decides by `resident_budget`.
    """
    if canvases:
        per_image = int(np.prod(canvas_shape(image_size))) + 8

        def gather(indices: np.ndarray) -> dict[str, np.ndarray]:
            images, extents = split.canvases(indices, image_size)
            return {"image": images, "extent": extents, "label": split.labels[indices]}
    else:
        per_image = image_size * image_size * 3

        def gather(indices: np.ndarray) -> dict[str, np.ndarray]:
            return {"image": split.images(indices, image_size), "label": split.labels[indices]}

    if stream is None:
        stream = len(split) * per_image > resident_budget()
    fields = (split.name, split.labels, split.num_classes, split.class_names)
    if stream:
        return TrainData(*fields, arrays=None, gather=gather)
    chunks = [
        gather(np.arange(start, min(start + READ_CHUNK, len(split))))
        for start in range(0, len(split), READ_CHUNK)
    ]
    arrays = {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}
    return TrainData(*fields, arrays=arrays)


class TrainStream:
    """Reads each step's examples on the host, `PREFETCH_STEPS` steps ahead of the device."""

    def __init__(self, gather: Gather):
        self.gather = gather

    def epoch(self, indices: np.ndarray) -> Iterator[tuple[dict[str, np.ndarray], np.ndarray]]:
        """Per step `s`: the host arrays of the step's examples and `indices[s]` re-indexed into
        them (any shape: a grid's `[members, batch]` reads the union of its members' examples).

        Every step's arrays have `indices[s].size` rows (padding repeats the last example), so
        the compiled step sees one shape.
        """
        with concurrent.futures.ThreadPoolExecutor(1) as reader:
            pending = [
                reader.submit(self._step, indices[s])
                for s in range(min(PREFETCH_STEPS, len(indices)))
            ]
            for s in range(len(indices)):
                if s + PREFETCH_STEPS < len(indices):
                    pending.append(reader.submit(self._step, indices[s + PREFETCH_STEPS]))
                yield pending.pop(0).result()

    def _step(self, step_indices: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray]:
        unique, local = np.unique(step_indices, return_inverse=True)
        arrays = self.gather(unique)
        rows = step_indices.size
        padded = {
            k: np.concatenate([v, np.repeat(v[-1:], rows - len(v), axis=0)])
            for k, v in arrays.items()
        }
        return padded, local.reshape(step_indices.shape).astype(np.int32)


def step_inputs(
    resident: dict[str, jax.Array] | None,
    stream: TrainStream | None,
    indices: np.ndarray,
    mesh: Mesh,
) -> Iterator[tuple[dict[str, jax.Array], np.ndarray]]:
    """Per step: the arrays the step gathers from (the resident split, or the step's streamed
    examples on the devices) and the step's indices into them (host, to be sharded)."""
    if stream is None:
        for s in range(len(indices)):
            yield resident, indices[s]
        return
    rep = feed.replicated(mesh)
    for host, local in stream.epoch(indices):
        yield {k: feed.global_array(v, rep) for k, v in host.items()}, local

"""Getting data onto the devices: the small training split lives there, evaluation is padded batches.

Arrays are created with `jax.make_array_from_callback`, which builds global arrays from the same
host data on every process, so the code is the same on one device, many devices, or many hosts.
"""

from __future__ import annotations

from collections.abc import Iterator

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from vpt_jax.data import ArraySplit, DataSource, padded_batches
from vpt_jax.data.source import MATERIALIZE_BATCH

DATA_AXIS = "data"
CURVE_SEED = 20240101  # draws the curve subset: the same examples in every run on a split


def make_mesh() -> Mesh:
    """A 1-D mesh over every device (of every process), for data parallelism."""
    return Mesh(np.asarray(jax.devices()), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def global_array(host: np.ndarray, sharding: NamedSharding) -> jax.Array:
    """A global array from the same host array on every process."""
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


class EvalData:
    """An evaluation split: kept on the devices when small enough, otherwise read as a stream.

    A split of at most `cache_bytes` (uint8 pixels) is decoded once and, at its first evaluation,
    put on the devices as padded, sharded batches; every later evaluation (each epoch, each stage)
    reads them there, with no host work or transfer per batch. Larger splits stream from the source
    at every evaluation.
    """

    def __init__(self, name: str, source: DataSource, cache_bytes: int, curve_examples: int = -1):
        """`curve_examples` >= 0 also draws the curve subset (`curve`; 0: the whole split)."""
        self.name = name
        self.source = source
        size = source.num_examples
        per_image = source.image_size**2 * 3
        self.cached: ArraySplit | None = None
        if size is not None and size * per_image <= cache_bytes:
            self.cached = source.materialize()
        self._resident: tuple[tuple[int, Mesh], list[dict[str, jax.Array]]] | None = None
        self.curve: EvalData | None = None  # the fixed subset curves are evaluated on
        if curve_examples > 0:
            subset = curve_subset(
                source if self.cached is None else self.cached, curve_examples, seed=CURVE_SEED
            )
            if subset is not None:
                # Kept on the devices whatever its size: it is evaluated every few epochs.
                kept = max(cache_bytes, subset.images.nbytes)
                self.curve = EvalData(name, DataSource.from_arrays(subset), kept)
        if curve_examples >= 0 and self.curve is None:  # the whole split is the curve
            self.curve = self

    @property
    def resident(self) -> bool:
        """Whether the split is (or will be, at its first evaluation) held on the devices."""
        return self.cached is not None or self._resident is not None

    def batches(
        self, batch_size: int, mesh: Mesh, *, keep: bool = True
    ) -> Iterator[dict[str, jax.Array]]:
        """Padded batches (with a `mask`) as sharded global arrays: each example counted once.

        `keep=False` (a split read once) does not make the split resident on the devices.
        """
        key = (batch_size, mesh)
        if self._resident is not None and self._resident[0] == key:
            yield from self._resident[1]
            return
        if not self.resident or not keep:
            data = self.cached if self.cached is not None else self.source
            yield from self._transfer(data, batch_size, mesh)
            return
        data = self.cached if self.cached is not None else self.source
        self._resident = (key, list(self._transfer(data, batch_size, mesh)))
        self.cached = None  # the host copy is no longer needed
        yield from self._resident[1]

    @staticmethod
    def _transfer(data, batch_size: int, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
        sharding = batch_sharded(mesh)
        for batch in padded_batches(data, batch_size):
            yield {
                "image": global_array(batch.images, sharding),
                "label": global_array(batch.labels.astype(np.int32), sharding),
                "mask": global_array(batch.mask, sharding),
            }


def curve_subset(data: ArraySplit | DataSource, n: int, seed: int) -> ArraySplit | None:
    """`n` examples of a split drawn without replacement by `seed`, in the split's order; None when
    the split has at most `n` examples (the whole split is the subset).

    An in-memory split is indexed; a stream is read once and only the drawn examples are kept (a
    stream of unknown length is counted first, in one more pass).
    """
    if isinstance(data, ArraySplit):
        size = len(data)
    else:
        size = data.num_examples
        if size is None:
            size = sum(len(labels) for _, labels in data.batches(MATERIALIZE_BATCH))
    if size <= n:
        return None
    chosen = np.sort(np.random.default_rng(seed).choice(size, n, replace=False))
    if isinstance(data, ArraySplit):
        return data.subset(chosen, name=f"{data.name}:curve{n}")
    images, labels, start = [], [], 0
    for batch_images, batch_labels in data.batches(MATERIALIZE_BATCH):
        stop = start + len(batch_labels)
        lo, hi = np.searchsorted(chosen, [start, stop])
        keep = chosen[lo:hi] - start
        images.append(np.asarray(batch_images)[keep])
        labels.append(np.asarray(batch_labels, np.int32)[keep])
        start = stop
    return ArraySplit(
        np.concatenate(images).astype(np.uint8),
        np.concatenate(labels),
        data.num_classes,
        data.class_names,
        f"{data.name}:curve{n}",
    )

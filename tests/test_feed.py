"""Evaluation data on the devices: small splits are transferred once, large ones stream."""

from __future__ import annotations

import numpy as np

from vpt_jax.data import ArraySplit, DataSource
from vpt_jax.train import feed


class CountingSource:
    """A DataSource stand-in that counts how often its batches are read."""

    def __init__(self, split: ArraySplit):
        self.inner = DataSource.from_arrays(split)
        self.reads = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def materialize(self):
        self.reads += 1
        return self.inner.materialize()

    def batches(self, batch_size):
        self.reads += 1
        return self.inner.batches(batch_size)


def _split(n: int = 10) -> ArraySplit:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    labels = np.arange(n, dtype=np.int32) % 3
    return ArraySplit(images, labels, 3, ("a", "b", "c"), "test")


def _collect(data: feed.EvalData, mesh) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    batches = list(data.batches(4, mesh))
    return tuple(
        np.concatenate([np.asarray(b[k]) for b in batches]) for k in ("image", "label", "mask")
    )


def test_a_small_split_is_transferred_once_and_then_read_on_the_devices():
    mesh = feed.make_mesh()
    source = CountingSource(_split())
    data = feed.EvalData("val", source, cache_bytes=10**9)
    first = list(data.batches(4, mesh))
    second = list(data.batches(4, mesh))
    assert source.reads == 1 and data.cached is None  # decoded once; the host copy released
    assert all(a["image"] is b["image"] for a, b in zip(first, second, strict=True))
    images, labels, mask = _collect(data, mesh)
    assert mask.tolist() == [True] * 10 + [False] * 2  # padded to 3 batches of 4, masked
    np.testing.assert_array_equal(images[:10], _split().images)
    np.testing.assert_array_equal(labels[:10], _split().labels)


def test_a_large_split_streams_from_its_source_at_every_evaluation():
    mesh = feed.make_mesh()
    source = CountingSource(_split())
    data = feed.EvalData("test", source, cache_bytes=100)
    assert not data.resident
    streamed = _collect(data, mesh)
    _collect(data, mesh)
    assert source.reads == 2
    resident = _collect(feed.EvalData("val", DataSource.from_arrays(_split()), 10**9), mesh)
    for a, b in zip(streamed, resident, strict=True):
        np.testing.assert_array_equal(a, b)

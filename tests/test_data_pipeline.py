"""Padded evaluation batches, seeded epoch orders, and device-side preprocessing."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vpt_jax.data as data
from vpt_jax.errors import UserError


def _split(count: int, size: int = 4) -> data.ArraySplit:
    # Example i has every pixel equal to i % 256 and label i % 7, so identity survives batching.
    ids = np.arange(count)
    images = (ids % 256).astype(np.uint8)[:, None, None, None] * np.ones(
        (1, size, size, 3), np.uint8
    )
    return data.ArraySplit(
        images=images,
        labels=(ids % 7).astype(np.int32),
        num_classes=7,
        class_names=tuple("abcdefg"),
        name="toy",
    )


@pytest.mark.parametrize(("count", "batch_size"), [(10, 3), (7, 7), (1, 4), (100, 32), (33, 8)])
def test_padded_batches_count_every_example_exactly_once(count: int, batch_size: int) -> None:
    split = _split(count)
    batches = list(data.padded_batches(split, batch_size))
    assert len(batches) == -(-count // batch_size)
    seen = np.concatenate([b.images[b.mask, 0, 0, 0] for b in batches]).astype(int)
    labels = np.concatenate([b.labels[b.mask] for b in batches])
    assert seen.tolist() == list(range(count))  # each example once, in order
    assert labels.tolist() == (np.arange(count) % 7).tolist()
    for batch in batches:
        assert batch.images.shape == (batch_size, 4, 4, 3) and batch.images.dtype == np.uint8
        assert batch.labels.dtype == np.int32 and batch.mask.dtype == bool
    # Masked accuracy over the padded batches equals the accuracy over the real examples.
    correct = sum(int(((b.labels == 0) & b.mask).sum()) for b in batches)
    assert correct == int((split.labels == 0).sum())


def test_padded_batches_of_a_streamed_source() -> None:
    source = data.get_dataset("procedural:location", "test13", image_size=8)
    batches = list(data.padded_batches(source, 5))
    assert [int(b.mask.sum()) for b in batches] == [5, 5, 3]
    assert not batches[-1].images[3:].any() and not batches[-1].labels[3:].any()
    streamed = np.concatenate([b.images[b.mask] for b in batches])
    assert (streamed == source.materialize().images).all()


def test_empty_split_gives_no_batches() -> None:
    assert list(data.padded_batches(_split(0), 4)) == []


def test_epoch_permutation_is_seeded_and_changes_per_epoch() -> None:
    first = data.epoch_permutation(50, seed=1, epoch=0)
    assert sorted(first.tolist()) == list(range(50))
    assert (first == data.epoch_permutation(50, seed=1, epoch=0)).all()
    assert (first != data.epoch_permutation(50, seed=1, epoch=1)).any()
    assert (first != data.epoch_permutation(50, seed=2, epoch=0)).any()


@pytest.mark.parametrize(("count", "batch_size"), [(10, 4), (12, 4), (5, 8)])
def test_epoch_batches_visit_each_example_once(count: int, batch_size: int) -> None:
    indices, mask = data.epoch_batch_indices(count, batch_size, seed=0, epoch=3)
    assert indices.shape == mask.shape == (data.steps_per_epoch(count, batch_size), batch_size)
    assert sorted(indices[mask].tolist()) == list(range(count))
    assert (indices[~mask] == 0).all()
    assert mask.reshape(-1).tolist() == [True] * count + [False] * (indices.size - count)


def test_epoch_batches_can_drop_the_short_step() -> None:
    indices, mask = data.epoch_batch_indices(10, 4, seed=0, epoch=0, drop_remainder=True)
    assert indices.shape == (2, 4) and mask.all()
    assert len(set(indices.reshape(-1).tolist())) == 8


def test_normalizations() -> None:
    pixels = jnp.asarray([[[0, 127, 255]]], jnp.uint8)
    inception = data.normalize(pixels)
    assert inception.dtype == jnp.float32
    np.testing.assert_allclose(inception[0, 0], [-1.0, 127 / 127.5 - 1, 1.0], atol=1e-6)
    imagenet = data.normalize(pixels, "imagenet")
    expected = (np.array([0, 127, 255]) / 255 - np.array([0.485, 0.456, 0.406])) / np.array(
        [0.229, 0.224, 0.225]
    )
    np.testing.assert_allclose(imagenet[0, 0], expected, rtol=1e-5)
    with pytest.raises(UserError, match="inception, imagenet"):
        data.normalize(pixels, "unit")


def test_preprocess_batch_does_not_augment_by_default() -> None:
    images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (4, 6, 6, 3)), jnp.uint8)
    plain = data.preprocess_batch(images, rng=jax.random.key(0))
    np.testing.assert_array_equal(plain, data.normalize(images))


def test_random_flip_flips_some_images_exactly() -> None:
    images = jnp.asarray(np.random.default_rng(1).integers(0, 256, (64, 5, 6, 3)), jnp.uint8)
    flipped = data.augment(jax.random.key(3), images, flip=True)
    same = (flipped == images).all(axis=(1, 2, 3))
    mirrored = (flipped == images[:, :, ::-1]).all(axis=(1, 2, 3))
    assert bool((same | mirrored).all()) and 0 < int(mirrored.sum()) < 64


def test_random_crop_shifts_within_the_padding() -> None:
    image = jnp.arange(8 * 8, dtype=jnp.uint8).reshape(1, 8, 8, 1)
    images = jnp.tile(image, (32, 1, 1, 3))
    cropped = jax.jit(lambda r, x: data.augment(r, x, crop_padding=2))(jax.random.key(0), images)
    assert cropped.shape == images.shape and cropped.dtype == jnp.uint8
    padded = np.pad(np.asarray(images[0, :, :, 0]), 2)
    offsets = set()
    for crop in np.asarray(cropped[:, :, :, 0]):
        matches = [
            (dy, dx)
            for dy in range(5)
            for dx in range(5)
            if (padded[dy : dy + 8, dx : dx + 8] == crop).all()
        ]
        assert matches, "every crop is a window of the zero-padded image"
        offsets.add(matches[0])
    assert len(offsets) > 3  # offsets vary across the batch

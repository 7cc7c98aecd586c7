"""Procedural datasets: deterministic, sized like VTAB splits, and labelled by what is drawn."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import vpt_jax.data as data
from vpt_jax.data import procedural
from vpt_jax.errors import UserError


@pytest.mark.parametrize("name", sorted(data.PROCEDURAL_TASKS))
def test_every_task_is_deterministic_and_in_range(name: str) -> None:
    split = data.load_split(f"procedural:{name}", "train24", image_size=16)
    again = data.load_split(f"procedural:{name}", "train24", image_size=16)
    other_seed = data.load_split(f"procedural:{name}", "train24", image_size=16, seed=1)
    task = data.get_procedural_task(name)
    assert split.images.shape == (24, 16, 16, 3) and split.images.dtype == np.uint8
    assert (split.images == again.images).all() and (split.labels == again.labels).all()
    assert (split.images != other_seed.images).any()
    assert ((split.labels >= 0) & (split.labels < task.num_classes)).all()
    assert split.num_classes == task.num_classes == len(split.class_names)
    assert split.images.std() > 5  # something was drawn


def test_groups_mirror_the_study() -> None:
    groups = {t.name: t.group for t in data.PROCEDURAL_TASKS.values()}
    assert groups["pretrain"] == "pretraining"
    assert {n for n, g in groups.items() if g == "natural"} == {
        "objects",
        "shapes",
        "digits",
        "textures",
    }
    assert {n for n, g in groups.items() if g == "structured"} == {
        "count",
        "distance",
        "location",
        "orientation",
        "scene_count",
        "scene_location",
    }
    # The demo's new classes are shapes pretraining never shows.
    assert not set(data.get_procedural_task("shapes").class_names) & set(procedural.draw.SHAPES)
    # The natural 'objects' classes are the pretraining shapes: a task close to pretraining.
    pretrain_shapes = {c.split("/")[0] for c in data.get_procedural_task("pretrain").class_names}
    assert set(data.get_procedural_task("objects").class_names) == pretrain_shapes


def test_splits_are_prefixes_of_their_streams() -> None:
    small = data.load_split("procedural:objects", "train5val3", image_size=12)
    large_train = data.load_split("procedural:objects", "train9", image_size=12)
    large_val = data.load_split("procedural:objects", "val4", image_size=12)
    assert len(small) == 8
    assert (small.images[:5] == large_train.images[:5]).all()
    assert (small.images[5:] == large_val.images[:3]).all()
    # Streams differ: the first training and validation examples are different images.
    assert (large_train.images[0] != large_val.images[0]).any()


def test_test_split_sizes() -> None:
    assert data.get_dataset("procedural:count", "test", image_size=8).num_examples == 1000
    assert data.get_dataset("procedural:count", "test37", image_size=8).num_examples == 37


def test_batches_cross_the_train_val_boundary_at_full_size() -> None:
    source = data.get_dataset("procedural:textures", "train5val5", image_size=8)
    assert [len(labels) for _, labels in source.batches(4)] == [4, 4, 2]


def test_labels_balance_over_many_examples() -> None:
    counts = np.bincount(data.load_split("procedural:location", "train800", image_size=16).labels)
    assert len(counts) == 8 and counts.min() > 60  # about 100 per class


def test_location_label_is_the_sprite_position() -> None:
    split = data.load_split("procedural:location", "train64", image_size=32)
    for image, label in zip(split.images, split.labels, strict=True):
        weights = image[:, :, 0].astype(float)
        centre_x = (weights.sum(axis=0) * (np.arange(32) + 0.5)).sum() / weights.sum() / 32
        bin_width = 0.7 / procedural.POSITION_BINS  # sprite centres span [0.15, 0.85]
        expected = int(np.clip((centre_x - 0.15) // bin_width, 0, procedural.POSITION_BINS - 1))
        # The drawn centroid sits in the labelled bin, give or take the shape's asymmetry.
        assert abs(expected - label) <= 1


def test_count_label_is_the_number_of_objects() -> None:
    split = data.load_split("procedural:count", "train40", image_size=64)
    for image, label in zip(split.images, split.labels, strict=True):
        # The floor is grey with a vertical gradient: objects are what differs from their row.
        row_floor = np.median(image, axis=1, keepdims=True).astype(int)
        objects = np.abs(image.astype(int) - row_floor).max(axis=2) > 40
        _, found = ndimage.label(
            objects, structure=np.ones((3, 3))
        )  # soft corners touch diagonally
        assert found == label + 1


def test_unknown_task_and_split() -> None:
    with pytest.raises(UserError, match="unknown procedural task 'shapez'.*objects"):
        data.get_dataset("procedural:shapez", "train10")
    with pytest.raises(UserError, match="unknown split 'train'"):
        data.get_dataset("procedural:objects", "train")


def test_unknown_dataset_kind_lists_the_prefixes() -> None:
    with pytest.raises(UserError, match="vtab/, fgvc/, tfds:, folder:, procedural:"):
        data.get_dataset("cifar100", "train800")

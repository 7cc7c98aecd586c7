"""Data-scaling and one-shot splits: sizes, limits, reproducibility, disjointness."""

from __future__ import annotations

import numpy as np
import pytest

import vpt_jax.data as data
from vpt_jax.data import splits
from vpt_jax.errors import UserError

# min(training region, 4 x validation region) from the VTAB regions and the TFDS split sizes.
LARGEST_SCALING_SIZE = {
    "caltech101": 1224,  # train[2754:3060] holds 306 validation examples
    "cifar100": 20000,
    "dtd": 1880,
    "oxford_flowers102": 1020,
    "oxford_iiit_pet": 2944,
    "svhn_cropped": 29304,
    "sun397": 43500,
    "patch_camelyon": 131072,
    "eurosat": 16200,
    "resisc45": 18900,
    "diabetic_retinopathy": 35124,
    "clevr_count": 28000,
    "clevr_distance": 28000,
    "dmlab": 65548,
    "kitti_distance": 1692,
    "dsprites_location": 294912,
    "dsprites_orientation": 294912,
    "smallnorb_azimuth": 24300,
    "smallnorb_elevation": 24300,
}


def _ranges(tfds_split: str) -> list[tuple[str, int, int]]:
    """`train[a:b]` pieces as (split, start, stop)."""
    pieces = []
    for piece in tfds_split.split("+"):
        name, bounds = piece.rstrip("]").split("[")
        start, stop = bounds.split(":")
        pieces.append((name, int(start or 0), int(stop)))
    return pieces


def test_sized_split_names_parse() -> None:
    assert splits.parse_sized_split("train800val200") == splits.SizedSplit(800, 200)
    assert splits.parse_sized_split("train5000") == splits.SizedSplit(5000, 0)
    assert splits.parse_sized_split("val50") == splits.SizedSplit(0, 50)
    for other in ("test", "", "train", "train0", "val0", "train800+val200", "trainval"):
        assert splits.parse_sized_split(other) is None, other


@pytest.mark.parametrize("name", sorted(LARGEST_SCALING_SIZE))
def test_largest_scaling_size(name: str) -> None:
    task = data.get_task(name)
    largest = splits.max_scaling_size(task)
    assert largest == LARGEST_SCALING_SIZE[name]
    point = splits.scaling_splits(largest, task)
    assert splits.vtab_tfds_split(task, point.trainval, task.source_sizes)  # fits
    with pytest.raises(UserError, match=f"up to {largest}"):
        splits.scaling_splits(largest + 4, task)


def test_scaling_point_keeps_4_to_1_from_the_vtab_regions() -> None:
    task = data.get_task("cifar100")
    point = splits.scaling_splits(10000, task)
    assert (point.train, point.val, point.trainval) == (
        "train10000",
        "val2500",
        "train10000val2500",
    )
    assert splits.vtab_tfds_split(task, point.train, task.source_sizes) == "train[:10000]"
    assert splits.vtab_tfds_split(task, point.val, task.source_sizes) == "train[45000:47500]"
    smallnorb = data.get_task("smallnorb_azimuth")
    assert splits.vtab_tfds_split(smallnorb, "train400val100", smallnorb.source_sizes) == (
        "train[:400]+test[:100]"
    )


@pytest.mark.parametrize("size", [400, 800, 1000, 2000, 4000, 10000, 20000])
def test_scaling_train_and_val_are_disjoint_for_every_task(size: int) -> None:
    for task in data.VTAB_TASKS.values():
        if size > splits.max_scaling_size(task):
            continue
        point = splits.scaling_splits(size, task)
        (train,) = _ranges(splits.vtab_tfds_split(task, point.train, task.source_sizes))
        (val,) = _ranges(splits.vtab_tfds_split(task, point.val, task.source_sizes))
        assert train[2] - train[1] == size and val[2] - val[1] == size // 4
        if train[0] == val[0]:
            assert train[2] <= val[1], (task.name, size)
        # Reproducible: the same request gives the same strings.
        assert splits.scaling_splits(size, task) == point


def test_scaling_size_must_keep_the_ratio_exact() -> None:
    with pytest.raises(UserError, match="multiple of 4"):
        splits.scaling_splits(1002)
    with pytest.raises(UserError, match="multiple of 4"):
        splits.scaling_splits(0)
    assert splits.scaling_splits(100000).val == "val25000"  # no task: no upper limit


def _pool(labels: list[int], name: str, num_classes: int = 5) -> data.ArraySplit:
    count = len(labels)
    images = np.arange(count, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
    return data.ArraySplit(
        images=images,
        labels=np.asarray(labels, np.int32),
        num_classes=num_classes,
        class_names=tuple(str(i) for i in range(num_classes)),
        name=name,
    )


def test_one_shot_takes_one_per_class_from_each_pool_reproducibly() -> None:
    rng = np.random.default_rng(0)
    train_pool = _pool(rng.integers(0, 5, 80).tolist(), "train800")
    val_pool = _pool(rng.integers(0, 5, 20).tolist() + [0, 1, 2, 3, 4], "val200")
    train, val = data.one_shot_split(train_pool, val_pool, seed=3)
    assert sorted(train.labels.tolist()) == [0, 1, 2, 3, 4]
    assert sorted(val.labels.tolist()) == [0, 1, 2, 3, 4]
    again_train, again_val = data.one_shot_split(train_pool, val_pool, seed=3)
    assert (again_train.images == train.images).all() and (again_val.images == val.images).all()
    draws = {
        tuple(data.one_shot_split(train_pool, val_pool, seed=s)[0].images[:, 0, 0, 0])
        for s in range(6)
    }
    assert len(draws) > 1  # the seed changes the draw


def test_one_shot_from_one_pool_never_shares_an_example() -> None:
    pool = _pool([c for c in range(5) for _ in range(3)], "train")  # 3 examples per class
    for seed in range(10):
        train, val = data.one_shot_split(pool, seed=seed)
        train_ids, val_ids = set(train.images[:, 0, 0, 0]), set(val.images[:, 0, 0, 0])
        assert not train_ids & val_ids
        assert sorted(train.labels) == sorted(val.labels) == [0, 1, 2, 3, 4]


def test_one_shot_skips_classes_the_pool_lacks() -> None:
    pool = _pool([0, 0, 1, 1, 2], "train")  # class 2 has one example, 3 and 4 none
    train, val = data.one_shot_split(pool, seed=0)
    assert sorted(train.labels) == [0, 1, 2] and sorted(val.labels) == [0, 1]
    assert train.num_classes == val.num_classes == 5

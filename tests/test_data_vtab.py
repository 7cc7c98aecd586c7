"""The VTAB-1k table against the benchmark's definitions, and every task through the TFDS path."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow_datasets as tfds

import vpt_jax.data as data
from vpt_jax.data import splits
from vpt_jax.data.host_tf import tf  # noqa: F401  (hides accelerators before TFDS starts TF)
from vpt_jax.errors import UserError

# task: (TFDS name, train800, val200, test) as google-research/task_adaptation defines them.
VTAB_1K = {
    "caltech101": ("caltech101:3.*.*", "train[:800]", "train[2754:2954]", "test"),
    "cifar100": ("cifar100:3.*.*", "train[:800]", "train[45000:45200]", "test"),
    "dtd": ("dtd:3.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_flowers102": ("oxford_flowers102:2.*.*", "train[:800]", "validation[:200]", "test"),
    "oxford_iiit_pet": ("oxford_iiit_pet:4.*.*", "train[:800]", "train[2944:3144]", "test"),
    "svhn_cropped": ("svhn_cropped:3.*.*", "train[:800]", "train[65931:66131]", "test"),
    "sun397": ("sun397/tfds:4.*.*", "train[:800]", "validation[:200]", "test"),
    "patch_camelyon": ("patch_camelyon:2.*.*", "train[:800]", "validation[:200]", "test"),
    "eurosat": ("eurosat/rgb:2.*.*", "train[:800]", "train[16200:16400]", "train[21600:]"),
    "resisc45": ("resisc45:3.*.*", "train[:800]", "train[18900:19100]", "train[25200:]"),
    "diabetic_retinopathy": (
        "diabetic_retinopathy_detection/btgraham-300:3.*.*",
        "train[:800]",
        "validation[:200]",
        "test",
    ),
    "clevr_count": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "clevr_distance": ("clevr:3.*.*", "train[:800]", "train[63000:63200]", "validation"),
    "dmlab": ("dmlab:2.0.1", "train[:800]", "validation[:200]", "test"),
    "kitti_distance": ("kitti:3.2.0", "train[:800]", "validation[:200]", "test"),
    "dsprites_location": (
        "dsprites:2.*.*",
        "train[:800]",
        "train[589824:590024]",
        "train[663552:]",
    ),
    "dsprites_orientation": (
        "dsprites:2.*.*",
        "train[:800]",
        "train[589824:590024]",
        "train[663552:]",
    ),
    "smallnorb_azimuth": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
    "smallnorb_elevation": ("smallnorb:2.*.*", "train[:800]", "test[:200]", "test[50%:]"),
}
CLASSES = {
    "caltech101": 102, "cifar100": 100, "dtd": 47, "oxford_flowers102": 102, "oxford_iiit_pet": 37,
    "svhn_cropped": 10, "sun397": 397, "patch_camelyon": 2, "eurosat": 10, "resisc45": 45,
    "diabetic_retinopathy": 5, "clevr_count": 8, "clevr_distance": 6, "dmlab": 6,
    "kitti_distance": 4, "dsprites_location": 16, "dsprites_orientation": 16,
    "smallnorb_azimuth": 18, "smallnorb_elevation": 9,
}  # fmt: skip


def test_the_table_holds_exactly_the_19_tasks_in_their_groups() -> None:
    assert set(data.VTAB_TASKS) == set(VTAB_1K)
    groups = {
        g: [t.name for t in data.VTAB_TASKS.values() if t.group == g]
        for g in ("natural", "specialized", "structured")
    }
    assert [len(groups[g]) for g in ("natural", "specialized", "structured")] == [7, 4, 8]
    assert set(groups["specialized"]) == {
        "patch_camelyon",
        "eurosat",
        "resisc45",
        "diabetic_retinopathy",
    }
    names = [data.parse_dataset(f"vtab/{t}") for t in data.VTAB_TASKS]
    assert {n.disparity for n in names if n.group == "structured"} == {"high"}
    assert {n.disparity for n in names if n.group != "structured"} == {"low"}


@pytest.mark.parametrize("name", sorted(VTAB_1K))
def test_split_strings_match_vtab(name: str) -> None:
    tfds_name, train800, val200, test = VTAB_1K[name]
    task = data.get_task(name)
    assert task.tfds_name == tfds_name
    assert task.num_classes == CLASSES[name]
    assert task.standard_split("train800") == train800
    assert task.standard_split("val200") == val200
    assert task.standard_split("train800val200") == f"{train800}+{val200}"
    assert task.standard_split("test") == test
    # The sized-split resolver gives the same strings as the standard table.
    for split in ("train800", "val200", "train800val200", "test"):
        assert splits.vtab_tfds_split(task, split, task.source_sizes) == task.standard_split(split)


def test_regions_are_disjoint_from_each_other_and_from_test() -> None:
    for task in data.VTAB_TASKS.values():
        sizes = task.source_sizes
        if task.train.split == task.val.split:
            assert task.train.start + task.train.size(sizes) <= task.val.start, task.name
        assert task.val.size(sizes) >= 200 and task.train.size(sizes) >= 800, task.name
        # Where the test set is carved from a training split, it starts after the validation region.
        if task.test.startswith(f"{task.val.split}[") and "%" not in task.test:
            test_start = int(task.test.split("[")[1].split(":")[0])
            assert task.val.start + task.val.size(sizes) <= test_start, task.name


def test_unknown_task_lists_the_valid_names() -> None:
    with pytest.raises(
        UserError, match="unknown VTAB-1k task 'cifar10'.*cifar100.*smallnorb_elevation"
    ):
        data.get_dataset("vtab/cifar10", "train800")


def test_aliases_resolve_to_table_names() -> None:
    assert data.get_task("pets").name == "oxford_iiit_pet"
    assert data.get_task("dsprites_ori").name == "dsprites_orientation"


def test_version_pins_resolve_to_the_installed_builders() -> None:
    for task in data.VTAB_TASKS.values():
        builder = tfds.builder(task.tfds_name, data_dir="/nonexistent-vpt-jax")
        assert builder.info.features is not None, task.name
        if not task.class_names:  # labels read from a feature: the table agrees with TFDS
            assert builder.info.features[task.label].num_classes == task.num_classes, task.name


@pytest.mark.parametrize("name", sorted(VTAB_1K))
def test_every_task_loads_through_the_tfds_path(name: str) -> None:
    with tfds.testing.mock_data(num_examples=2):
        source = data.get_dataset(f"vtab/{name}", "train800val200")
        split = source.materialize()
    assert source.num_examples is None  # mocked metadata lists no split sizes
    assert split.images.shape == (2, 224, 224, 3) and split.images.dtype == np.uint8
    assert split.labels.dtype == np.int32
    assert ((split.labels >= 0) & (split.labels < CLASSES[name])).all()
    assert split.num_classes == CLASSES[name] == len(split.class_names)
    assert split.images.std() > 0  # real pixels came through, not a blank canvas
    assert split.name == f"vtab/{name}:train800val200"


def test_test_split_streams_in_padded_batches_under_mock() -> None:
    with tfds.testing.mock_data(num_examples=5):
        source = data.get_dataset("vtab/smallnorb_elevation", "test", image_size=32)
        batches = list(data.padded_batches(source, 2))
    assert [b.mask.sum() for b in batches] == [2, 2, 1]
    assert batches[0].images.shape == (2, 32, 32, 3)


def test_oversized_scaling_split_is_refused_with_the_numbers() -> None:
    with tfds.testing.mock_data(num_examples=2), pytest.raises(UserError) as error:
        data.get_dataset("vtab/caltech101", "train3000")
    message = str(error.value)
    assert "3000" in message and "2754" in message and "1224" in message
    with (
        tfds.testing.mock_data(num_examples=2),
        pytest.raises(UserError, match="val400.*holds 306"),
    ):
        data.get_dataset("vtab/caltech101", "val400")


def test_unknown_vtab_split_names_the_valid_ones() -> None:
    with tfds.testing.mock_data(num_examples=2), pytest.raises(UserError, match="train800val200"):
        data.get_dataset("vtab/dtd", "validation")


def test_unprepared_dataset_says_how_to_prepare_it(tmp_path) -> None:
    with pytest.raises(UserError) as error:
        data.get_dataset("vtab/cifar100", "train800", data_dir=str(tmp_path))
    message = str(error.value)
    assert f"tfds build cifar100:3.0.2 --data_dir={tmp_path}" in message
    assert f"python -m vpt_jax.data.prepare tfds:cifar100:3.0.2 --data_dir={tmp_path}" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("task", "command"),
    [
        ("resisc45", "tfds build resisc45:3.0.0 --manual_dir"),
        (
            "diabetic_retinopathy",
            "tfds build diabetic_retinopathy_detection/btgraham-300:3.0.0 --manual_dir",
        ),
    ],
)
def test_manual_download_datasets_say_where_the_files_come_from(
    tmp_path, task: str, command: str
) -> None:
    with pytest.raises(UserError) as error:
        data.get_dataset(f"vtab/{task}", "train800", data_dir=str(tmp_path))
    message = str(error.value)
    assert command in message and "manual download" in message and "http" in message
    assert "\n" not in message


def test_missing_data_dir_is_named(tmp_path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(UserError, match=f"data_dir {missing} does not exist"):
        data.get_dataset("vtab/dtd", "test", data_dir=str(missing))

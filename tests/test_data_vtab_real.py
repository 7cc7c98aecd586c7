"""VTAB-1k splits read from real prepared TFDS files: exactly which examples each split returns.

`tfds.testing.mock_data` ignores split slicing, so here stand-ins for the VTAB datasets
(`tests/vtab_builders.py`: the real builders' names, configs, versions and features, with tiny
generated examples carrying their ids) are prepared into real TFRecord shards, and every split is
read through `get_dataset("vtab/<task>", ...)`, the path all 19 tasks take.

Six task definitions are read straight from the task table at VTAB's own boundaries (caltech101,
dtd, eurosat, both smallnorb tasks, kitti). clevr and dsprites would need 63,200 and 737,280
examples for theirs, so their table entries are read with the regions scaled down; the split
strings keep the table's forms (checked below), and builder, version, label and image handling
stay the table's.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable

import pytest
import tensorflow_datasets as tfds

import vpt_jax.data as data
from tests import vtab_builders as vb
from vpt_jax.data import splits, tfds_reader
from vpt_jax.data.vtab import Region, TaskSpec
from vpt_jax.errors import UserError

Ids = list[range]  # the expected ids, in order: consecutive runs


@dataclasses.dataclass(frozen=True)
class Case:
    """What one task's splits must read from its stand-in."""

    stand_in: type
    label: Callable[[int], int]  # the VTAB label of an example id
    splits: dict[str, tuple[str, Ids]]  # split: (TFDS split string, ids)
    scaling: tuple[int, str, Ids, str, Ids]  # size: train string and ids, val string and ids


def _smallnorb(label_key: str) -> Case:
    return Case(
        vb.SmallnorbStandIn,
        lambda i: vb.smallnorb_labels(i)[label_key],
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("test[:200]", [range(30000, 30200)]),
            "train800val200": ("train[:800]+test[:200]", [range(800), range(30000, 30200)]),
            "test": ("test[50%:]", [range(30300, 30600)]),  # half of 600
        },
        (400, "train[:400]", [range(400)], "test[:100]", [range(30000, 30100)]),
    )


# Tasks as the table defines them, at VTAB's boundaries.
TABLE_CASES = {
    # Validation from the middle of `train`; `train` is caltech101's real size (3060).
    "caltech101": Case(
        vb.CaltechStandIn,
        lambda i: i % vb.CALTECH_CLASSES,
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("train[2754:2954]", [range(2754, 2954)]),
            "train800val200": ("train[:800]+train[2754:2954]", [range(800), range(2754, 2954)]),
            "test": ("test", [range(10000, 10030)]),
        },
        # The largest point: the whole validation region.
        (1224, "train[:1224]", [range(1224)], "train[2754:3060]", [range(2754, 3060)]),
    ),
    # Validation from its own split.
    "dtd": Case(
        vb.DtdStandIn,
        lambda i: i % vb.DTD_CLASSES,
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("validation[:200]", [range(10000, 10200)]),
            "train800val200": ("train[:800]+validation[:200]", [range(800), range(10000, 10200)]),
            "test": ("test", [range(20000, 20030)]),
        },
        (1000, "train[:1000]", [range(1000)], "validation[:250]", [range(10000, 10250)]),
    ),
    # Validation and test both carved from `train`; the test set runs to its end.
    "eurosat": Case(
        vb.EurosatStandIn,
        lambda i: i % vb.EUROSAT_CLASSES,
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("train[16200:16400]", [range(16200, 16400)]),
            "train800val200": ("train[:800]+train[16200:16400]", [range(800), range(16200, 16400)]),
            "test": ("train[21600:]", [range(21600, 21650)]),
        },
        (1000, "train[:1000]", [range(1000)], "train[16200:16450]", [range(16200, 16450)]),
    ),
    # Validation from `test`, test its second half; two label features of one dataset.
    "smallnorb_azimuth": _smallnorb("label_azimuth"),
    "smallnorb_elevation": _smallnorb("label_elevation"),
    # A label derived from a variable-length sequence of objects.
    "kitti_distance": Case(
        vb.KittiStandIn,
        lambda i: vb.kitti_scene(i)[1],
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("validation[:200]", [range(10000, 10200)]),
            "train800val200": ("train[:800]+validation[:200]", [range(800), range(10000, 10200)]),
            "test": ("test", [range(20000, 20016)]),
        },
        (1000, "train[:1000]", [range(1000)], "validation[:250]", [range(10000, 10250)]),
    ),
}

# The table's regions scaled down (same splits, same open or bounded ends, same test string form).
SCALED_REGIONS = {
    "clevr_count": (Region("train", 0, 1000), Region("train", 1000), "validation"),
    "dsprites_location": (Region("train", 0, 1000), Region("train", 1000, 1300), "train[1300:]"),
}
SCALED_REGIONS["clevr_distance"] = SCALED_REGIONS["clevr_count"]
SCALED_REGIONS["dsprites_orientation"] = SCALED_REGIONS["dsprites_location"]


def _clevr(label: Callable[[int], int]) -> Case:
    return Case(
        vb.ClevrStandIn,
        label,
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("train[1000:1200]", [range(1000, 1200)]),
            "train800val200": ("train[:800]+train[1000:1200]", [range(800), range(1000, 1200)]),
            "test": ("validation", [range(40000, 40020)]),
        },
        (400, "train[:400]", [range(400)], "train[1000:1100]", [range(1000, 1100)]),
    )


def _dsprites(label: Callable[[int], int]) -> Case:
    return Case(
        vb.DspritesStandIn,
        label,
        {
            "train800": ("train[:800]", [range(800)]),
            "val200": ("train[1000:1200]", [range(1000, 1200)]),
            "train800val200": ("train[:800]+train[1000:1200]", [range(800), range(1000, 1200)]),
            "test": ("train[1300:]", [range(1300, 1350)]),
        },
        # The largest point: min(1000 training, 4 x 300 validation).
        (1000, "train[:1000]", [range(1000)], "train[1000:1250]", [range(1000, 1250)]),
    )


# VTAB's own label definitions (task_adaptation data/{clevr,dsprites}.py), in their float form.
SCALED_CASES = {
    "clevr_count": _clevr(lambda i: vb.clevr_scene(i)[0] - 3),
    "clevr_distance": _clevr(lambda i: vb.clevr_scene(i)[2]),
    "dsprites_location": _dsprites(
        lambda i: math.floor(vb.dsprites_labels(i)["label_x_position"] / (32 / 16))
    ),
    "dsprites_orientation": _dsprites(
        lambda i: math.floor(vb.dsprites_labels(i)["label_orientation"] / (40 / 16))
    ),
}
DERIVED_LABEL_TASKS = {"kitti_distance", *SCALED_CASES}


def _scaled_task(name: str) -> TaskSpec:
    train, val, test = SCALED_REGIONS[name]
    return dataclasses.replace(data.get_task(name), train=train, val=val, test=test)


# Tasks that differ from the one before only in their label: read where the label is checked.
LABEL_SIBLINGS = {"smallnorb_elevation", "clevr_distance", "dsprites_orientation"}


def _cases() -> list[tuple[str, str]]:
    cases = []
    for task in {**TABLE_CASES, **SCALED_CASES}:
        names = ("train800val200", "test") if task in LABEL_SIBLINGS else data.STANDARD_SPLITS
        cases += [(task, split) for split in (*names, "scaling")]
    return cases


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Callable[[type], str]:
    """Prepares a stand-in into this module's data dir once, on first use; returns the dir."""
    directory = str(tmp_path_factory.mktemp("vtab_tfds"))
    done: set[type] = set()

    def prepare(stand_in: type) -> str:
        if stand_in not in done:
            vb.prepare(stand_in, directory)
            done.add(stand_in)
        return directory

    return prepare


def _flatten(runs: Ids) -> list[int]:
    return [i for run in runs for i in run]


def _open(task_name: str, split: str, data_dir: str) -> data.DataSource:
    if task_name in SCALED_CASES:  # the reader `get_dataset("vtab/...")` calls, on the scaled task
        return tfds_reader.vtab_source(
            _scaled_task(task_name), split, data_dir=data_dir, image_size=vb.BARCODE_SIZE
        )
    return data.get_dataset(
        f"vtab/{task_name}", split, data_dir=data_dir, image_size=vb.BARCODE_SIZE
    )


@pytest.mark.parametrize(("task_name", "split"), _cases())
def test_split_reads_exactly_these_examples_in_order(prepared, task_name: str, split: str) -> None:
    case = {**TABLE_CASES, **SCALED_CASES}[task_name]
    data_dir = prepared(case.stand_in)
    task = _scaled_task(task_name) if task_name in SCALED_CASES else data.get_task(task_name)
    metadata_sizes = tfds_reader.split_sizes(tfds_reader.open_builder(task.tfds_name, data_dir))
    if split == "scaling":  # one data-scaling point; reading its train+val reads both regions
        size, train_string, train_ids, val_string, val_ids = case.scaling
        point = splits.scaling_splits(size, task)
        assert splits.vtab_tfds_split(task, point.train, metadata_sizes) == train_string
        assert splits.vtab_tfds_split(task, point.val, metadata_sizes) == val_string
        split, tfds_split, runs = (
            point.trainval,
            f"{train_string}+{val_string}",
            train_ids + val_ids,
        )
    else:
        tfds_split, runs = case.splits[split]
    ids = _flatten(runs)
    assert splits.vtab_tfds_split(task, split, metadata_sizes) == tfds_split
    source = _open(task_name, split, data_dir)
    assert source.name == f"vtab/{task_name}:{split}"
    assert source.num_examples == len(ids)
    arrays = source.materialize()
    assert vb.read_barcodes(arrays.images) == ids, tfds_split
    assert arrays.labels.tolist() == [case.label(i) for i in ids]
    if "+" in tfds_split or split == "test":
        # The records' own id feature agrees with what the pixels say (once per region).
        assert vb.record_ids(case.stand_in, data_dir, tfds_split) == ids
    if task_name in DERIVED_LABEL_TASKS and split == "train800val200":
        # Not vacuous: every class, the bins' edges included, comes out of the derivation.
        assert set(arrays.labels.tolist()) == set(range(task.num_classes))
        assert arrays.class_names == task.class_names


@pytest.mark.parametrize("task_name", ["caltech101", "eurosat", "smallnorb_elevation"])
def test_class_names_come_from_the_prepared_label_feature(prepared, task_name: str) -> None:
    case = TABLE_CASES[task_name]
    source = _open(task_name, "test", prepared(case.stand_in))
    task = data.get_task(task_name)
    real = tfds.builder(task.tfds_name, data_dir="/nonexistent-vpt-jax").info.features[task.label]
    assert source.class_names == tuple(real.names) and len(source.class_names) == task.num_classes


def _form(split_string: str) -> str:
    return re.sub(r"\d+", "N", split_string)


@pytest.mark.parametrize("task_name", sorted(SCALED_REGIONS))
def test_scaled_down_tasks_keep_the_table_split_forms(task_name: str) -> None:
    real, scaled = data.get_task(task_name), _scaled_task(task_name)
    for split in data.STANDARD_SPLITS:
        assert _form(scaled.standard_split(split)) == _form(real.standard_split(split)), split
    for region in ("train", "val"):
        real_region, scaled_region = getattr(real, region), getattr(scaled, region)
        assert real_region.split == scaled_region.split
        assert (real_region.stop is None) == (scaled_region.stop is None)
    # Training ends where validation starts, and (dsprites) validation where testing starts.
    assert scaled.train.stop == scaled.val.start and real.train.stop == real.val.start
    if real.val.stop is not None:
        assert real.test == f"train[{real.val.stop}:]"
        assert scaled.test == f"train[{scaled.val.stop}:]"
    unchanged = ("builder", "version", "label", "num_classes", "class_names", "binary_image")
    assert all(getattr(real, field) == getattr(scaled, field) for field in unchanged)


@pytest.mark.parametrize(
    ("task_name", "split", "message"),
    [
        ("caltech101", "val307", r"train\[2754:3060\] holds 306"),
        ("eurosat", "val5404", r"train\[16200:21600\] holds 5400"),
        ("dsprites_location", "train1000val304", r"train\[1000:1300\] holds 300"),
    ],
)
def test_split_larger_than_its_region_is_refused_before_reading(
    prepared, task_name: str, split: str, message: str
) -> None:
    case = {**TABLE_CASES, **SCALED_CASES}[task_name]
    with pytest.raises(UserError, match=message):
        _open(task_name, split, prepared(case.stand_in))


def test_partly_prepared_dataset_is_refused_in_one_line(tmp_path) -> None:
    vb.prepare(vb.EurosatPartialStandIn, str(tmp_path))
    train = data.load_split("vtab/eurosat", "train800", data_dir=str(tmp_path), image_size=8)
    assert len(train) == 800
    for split, tfds_split in (("test", "train[21600:]"), ("val200", "train[16200:16400]")):
        with pytest.raises(UserError) as error:
            data.get_dataset("vtab/eurosat", split, data_dir=str(tmp_path))
        message = str(error.value)
        assert message.startswith(f"vtab/eurosat:{split} reads {tfds_split}, "), message
        assert "with 2200 examples" in message and "in full" in message and "\n" not in message

"""Dataset names: parsed once, canonical, with their group and task disparity."""

from __future__ import annotations

import os

import pytest

from vpt_jax.data import DatasetName, parse_dataset, parse_dataset_list
from vpt_jax.errors import UserError


@pytest.mark.parametrize(
    "text, kind, value, canonical",
    [
        ("vtab/cifar100", "vtab", "cifar100", "vtab/cifar100"),
        ("vtab/pets", "vtab", "oxford_iiit_pet", "vtab/oxford_iiit_pet"),  # alias
        (" procedural:count ", "procedural", "count", "procedural:count"),
        ("tfds:eurosat/rgb:2.0.0", "tfds", "eurosat/rgb:2.0.0", "tfds:eurosat/rgb:2.0.0"),
    ],
)
def test_names_parse_to_their_canonical_form(text, kind, value, canonical):
    name = parse_dataset(text)
    assert (name.kind, name.value, str(name)) == (kind, value, canonical)
    assert parse_dataset(str(name)) == name  # the canonical form parses to itself
    assert parse_dataset(name) is name


def test_folder_paths_become_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    name = parse_dataset("folder:birds")
    assert name == DatasetName("folder", os.path.join(str(tmp_path), "birds"))
    assert str(name) == f"folder:{tmp_path}/birds"
    assert parse_dataset("folder:~/x").value == os.path.expanduser("~/x")


@pytest.mark.parametrize(
    "text, group, disparity",
    [
        ("vtab/clevr_count", "structured", "high"),
        ("vtab/eurosat", "specialized", "low"),
        ("vtab/dtd", "natural", "low"),
        ("procedural:location", "structured", "high"),
        ("procedural:objects", "natural", "low"),
        ("procedural:pretrain", "pretraining", "low"),
        ("tfds:beans", "", None),
        ("folder:/data/birds", "", None),
    ],
)
def test_group_and_disparity_come_from_the_task_table(text, group, disparity):
    name = parse_dataset(text)
    assert (name.group, name.disparity) == (group, disparity)


def test_default_splits_and_short_names():
    assert parse_dataset("vtab/dtd").default_split == "train800val200"
    assert parse_dataset("procedural:count").default_split == "train800val200"
    assert parse_dataset("tfds:imagenet2012").default_split == "validation"
    assert parse_dataset("tfds:beans").default_split == "train"
    assert parse_dataset("vtab/pets").short == "oxford_iiit_pet"
    assert parse_dataset("procedural:count").short == "count"


@pytest.mark.parametrize(
    "text, message",
    [
        ("cifar100", "unknown dataset 'cifar100'; names start with vtab/, fgvc/, tfds:"),
        ("vtab/cifar1000", "unknown VTAB-1k task 'cifar1000'; valid tasks: "),
        ("procedural:nope", "unknown procedural task 'nope'; valid tasks: "),
        ("tfds:", "dataset name 'tfds:' names nothing"),
        ("folder:", "dataset name 'folder:' names nothing"),
    ],
)
def test_bad_names_fail_in_one_line(text, message):
    with pytest.raises(UserError) as e:
        parse_dataset(text)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bare_vtab_names_only_where_asked():
    assert str(parse_dataset("pets", bare_vtab=True)) == "vtab/oxford_iiit_pet"
    with pytest.raises(UserError, match="a VTAB task \\(cifar100\\) or a name starting with"):
        parse_dataset("count", bare_vtab=True)


def test_dataset_lists_expand_sets_once_each_in_order():
    names = [str(n) for n in parse_dataset_list("procedural, dtd ,vtab/dtd,folder:/x")]
    assert names[:10] == [
        "procedural:objects",
        "procedural:shapes",
        "procedural:digits",
        "procedural:textures",
        "procedural:count",
        "procedural:distance",
        "procedural:location",
        "procedural:orientation",
        "procedural:scene_count",
        "procedural:scene_location",
    ]
    assert names[10:] == ["vtab/dtd", "folder:/x"]
    assert len(parse_dataset_list("vtab")) == 19
    with pytest.raises(UserError, match="no datasets in ' , '"):
        parse_dataset_list(" , ")

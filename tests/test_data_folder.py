"""Image-folder datasets written by the test: both layouts, labels, and errors for bad folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import vpt_jax.data as data
from vpt_jax.data.folder import folder_listings
from vpt_jax.errors import UserError

# Each class has its own flat colour, so a loaded image tells which class folder it came from.
COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "emu": (30, 30, 200)}


def _write(folder: Path, name: str, colour: tuple[int, int, int], mode: str = "RGB") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (9, 5), colour)
    if mode == "L":
        image = image.convert("L")
    elif mode == "RGBA":
        image = image.convert("RGBA")
    image.save(folder / f"{name}.png")  # lossless: the colour stays exact


def _class_tree(root: Path, per_class: int) -> None:
    for cls, colour in COLOURS.items():
        for i in range(per_class):
            _write(root / cls, f"{cls}{i}", colour)


def _colour_classes(split: data.ArraySplit) -> list[str]:
    by_colour = {colour: cls for cls, colour in COLOURS.items()}
    return [by_colour[tuple(int(c) for c in image[2, 2])] for image in split.images]


def test_train_val_test_layout(tmp_path: Path) -> None:
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        _class_tree(tmp_path / split, count)
    train = data.load_split(f"folder:{tmp_path}", "train", image_size=6)
    assert train.class_names == ("cat", "dog", "emu") and train.num_classes == 3
    assert train.images.shape == (9, 6, 6, 3) and train.labels.dtype == np.int32
    assert [train.class_names[label] for label in train.labels] == _colour_classes(train)
    assert len(data.load_split(f"folder:{tmp_path}", "val", image_size=6)) == 6
    assert len(data.load_split(f"folder:{tmp_path}", "test", image_size=6)) == 3
    assert len(data.load_split(f"folder:{tmp_path}", "trainval", image_size=6)) == 15


def test_single_folder_split_by_ratio(tmp_path: Path) -> None:
    _class_tree(tmp_path, 10)
    name = f"folder:{tmp_path}"
    train = data.get_dataset(name, "train", image_size=4, val_fraction=0.2, seed=1)
    val = data.get_dataset(name, "val", image_size=4, val_fraction=0.2, seed=1)
    assert (train.num_examples, val.num_examples) == (24, 6)  # 2 of each class's 10 to val
    val_split = val.materialize()
    assert np.bincount(val_split.labels).tolist() == [2, 2, 2]
    assert [val_split.class_names[label] for label in val_split.labels] == _colour_classes(
        val_split
    )
    # Which files go where is fixed by the seed, and train and val never share a file.
    listings, _ = folder_listings(str(tmp_path), val_fraction=0.2, seed=1)
    again, _ = folder_listings(str(tmp_path), val_fraction=0.2, seed=1)
    other, _ = folder_listings(str(tmp_path), val_fraction=0.2, seed=2)
    assert listings == again and listings["val"] != other["val"]
    assert not set(listings["train"][0]) & set(listings["val"][0])


def test_grayscale_rgba_and_jpeg_images_become_rgb(tmp_path: Path) -> None:
    _write(tmp_path / "train" / "cat", "a_alpha", COLOURS["cat"], mode="RGBA")
    _write(tmp_path / "train" / "cat", "b_gray", (90, 90, 90), mode="L")
    Image.new("RGB", (9, 5), COLOURS["cat"]).save(tmp_path / "train" / "cat" / "c_photo.jpg")
    _write(tmp_path / "val" / "cat", "plain", COLOURS["cat"])
    train = data.load_split(f"folder:{tmp_path}", "train", image_size=7)
    assert train.images.shape == (3, 7, 7, 3)  # files load in sorted order
    assert (train.images[0] == COLOURS["cat"]).all()  # alpha dropped
    assert (train.images[1] == 90).all()  # grey copied to all three channels
    assert np.abs(train.images[2].astype(int) - COLOURS["cat"]).max() <= 3  # JPEG, lossy


def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        data.get_dataset(f"folder:{tmp_path / 'nope'}", "train")


def test_folder_without_class_subfolders(tmp_path: Path) -> None:
    Image.new("RGB", (4, 4)).save(tmp_path / "loose.png")
    with pytest.raises(UserError, match="no class sub-folders"):
        data.get_dataset(f"folder:{tmp_path}", "train")


def test_empty_class_folder(tmp_path: Path) -> None:
    _class_tree(tmp_path, 2)
    (tmp_path / "yak").mkdir()
    (tmp_path / "yak" / "notes.txt").write_text("not an image")
    with pytest.raises(UserError, match="yak holds no images"):
        data.get_dataset(f"folder:{tmp_path}", "train")


def test_unreadable_image_is_named(tmp_path: Path) -> None:
    _class_tree(tmp_path, 2)
    (tmp_path / "dog" / "broken.jpg").write_bytes(b"this is not a jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        data.get_dataset(f"folder:{tmp_path}", "train")


def test_train_and_val_with_different_classes(tmp_path: Path) -> None:
    _class_tree(tmp_path / "train", 1)
    _write(tmp_path / "val" / "cat", "c", COLOURS["cat"])
    _write(tmp_path / "val" / "owl", "o", COLOURS["dog"])
    with pytest.raises(UserError, match=r"only in train: \['dog', 'emu'\]; only in val: \['owl'\]"):
        data.get_dataset(f"folder:{tmp_path}", "train")


def test_unknown_folder_split(tmp_path: Path) -> None:
    _class_tree(tmp_path, 2)
    with pytest.raises(UserError, match="no split 'test'; available: train, val, trainval"):
        data.get_dataset(f"folder:{tmp_path}", "test")


def test_bad_val_fraction(tmp_path: Path) -> None:
    _class_tree(tmp_path, 2)
    with pytest.raises(UserError, match="val_fraction"):
        data.get_dataset(f"folder:{tmp_path}", "train", val_fraction=1.5)

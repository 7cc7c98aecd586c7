"""FGVC: the five datasets read from files in the official layout, their preprocessing, errors."""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import numpy as np
import pytest
from PIL import Image

from tests.fgvc_fixtures import PER_CLASS, class_id, write_fgvc
from vpt_jax.data import FGVC_TASKS, fgvc_split, get_dataset, parse_dataset, parse_dataset_list
from vpt_jax.data import fgvc as fgvc_lib
from vpt_jax.data.preprocess import canvas_crop
from vpt_jax.data.resize_crop import canvas_shape, resize_size
from vpt_jax.errors import UserError

SIZE = 16  # model resolution: resize 18, canvas 18 x 36


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("fgvc"))
    splits = {name: write_fgvc(root, name, seed=i) for i, name in enumerate(FGVC_TASKS)}
    return root, splits


def _reference_labels(entries: dict[str, int]) -> list[int]:
    ids = sorted(set(entries.values()))
    return [ids.index(v) for v in entries.values()]


@pytest.mark.parametrize("name", list(FGVC_TASKS))
def test_each_dataset_reads_its_official_layout(data_dir, name):
    root, splits = data_dir
    task = FGVC_TASKS[name]
    for split, count in zip(("train", "val", "test"), PER_CLASS, strict=True):
        listed = fgvc_split(name, split, data_dir=root)
        entries = splits[name][split]
        assert len(listed) == count * task.num_classes
        image_root = os.path.join(root, task.folder, task.image_dir)
        assert list(listed.paths) == [os.path.join(image_root, k) for k in entries]  # file order
        assert listed.labels.tolist() == _reference_labels(entries)  # sorted(set(ids)) remapping
        assert listed.labels.tolist() == [(v - 7) // 3 for v in entries.values()]
        assert listed.num_classes == task.num_classes
    trainval = fgvc_split(name, "trainval", data_dir=root)
    train, val = (fgvc_split(name, s, data_dir=root) for s in ("train", "val"))
    assert trainval.paths == train.paths + val.paths
    assert trainval.labels.tolist() == train.labels.tolist() + val.labels.tolist()
    if task.class_dirs:  # class names from the class folders
        first = next(k for k, v in splits[name]["train"].items() if v == class_id(1))
        assert train.class_names[1] == first.split("/")[0]
    else:
        assert train.class_names[:2] == (str(class_id(0)), str(class_id(1)))
    source = get_dataset(f"fgvc/{name}", "test", data_dir=root, image_size=SIZE)
    assert (source.num_examples, source.num_classes) == (task.num_classes, task.num_classes)
    images, labels = next(source.batches(7))
    assert images.shape == (7, SIZE, SIZE, 3) and images.dtype == np.uint8
    assert labels.tolist() == fgvc_split(name, "test", data_dir=root).labels[:7].tolist()
    canvases, extents = train.canvases(range(5), SIZE)
    assert canvases.shape == (5, *canvas_shape(SIZE)) and extents.shape == (5, 2)


def _pil_reference(path: str, size: int) -> np.ndarray:
    """Resize(8/7 * size) + CenterCrop(size) computed from PIL's own operations."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    short = resize_size(size)
    if width <= height:
        new = (short, int(short * height / width))
    else:
        new = (int(short * width / height), short)
    image = image.resize(new, Image.BILINEAR)
    left = int(np.round((new[0] - size) / 2))  # numpy rounds halves to even, as Python's round
    top = int(np.round((new[1] - size) / 2))
    return np.asarray(image.crop((left, top, left + size, top + size)))


def test_eval_images_are_pil_resize_and_centre_crop(data_dir):
    root, _ = data_dir
    listed = fgvc_split("cub", "train", data_dir=root)
    modes = set()
    for size in (SIZE, 13):  # 13: the long side's margin is odd for some images
        got = listed.images(range(12), size)
        for i, path in enumerate(listed.paths[:12]):
            with Image.open(path) as image:
                modes.add(image.mode)
            np.testing.assert_array_equal(got[i], _pil_reference(path, size))
    assert {"L", "CMYK", "RGB"} <= modes  # grayscale and CMYK JPEGs converted as PIL does


def test_eval_images_match_torchvision_where_installed(data_dir):
    pytest.importorskip("tests.torch_reference")  # skips without the reference stack
    transforms = pytest.importorskip("torchvision.transforms")
    default_loader = pytest.importorskip("torchvision.datasets.folder").default_loader

    root, _ = data_dir
    listed = fgvc_split("dogs", "val", data_dir=root)
    official = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224)])
    got = listed.images(range(10), 224)
    for i, path in enumerate(listed.paths[:10]):
        np.testing.assert_array_equal(got[i], np.asarray(official(default_loader(path))))


def test_canvas_crops_are_the_official_random_crops(data_dir):
    root, _ = data_dir
    listed = fgvc_split("flowers", "train", data_dir=root)
    picks = range(6)  # portrait, landscape, square and panorama shapes
    canvases, extents = listed.canvases(picks, SIZE)
    resized = [np.asarray(fgvc_lib_resize(listed.paths[i], resize_size(SIZE))) for i in picks]
    crop = jax.jit(canvas_crop, static_argnums=3)
    seen = [set() for _ in picks]
    for seed in range(100):
        out = np.asarray(crop(jax.random.key(seed), canvases, extents, SIZE))
        for i, image in enumerate(resized):
            height, width = image.shape[:2]
            if max(height, width) > 2 * resize_size(SIZE):
                continue  # panoramas are cut to their middle (checked below)
            offsets = [
                (t, left)
                for t in range(height - SIZE + 1)
                for left in range(width - SIZE + 1)
                if np.array_equal(out[i], image[t : t + SIZE, left : left + SIZE])
            ]
            assert offsets, (i, seed)
            seen[i].add(offsets[0])
    for i, image in enumerate(resized):
        height, width = image.shape[:2]
        if (
            max(height, width) <= 2 * resize_size(SIZE)
            and (height - SIZE + 1) * (width - SIZE + 1) <= 12
        ):
            assert len(seen[i]) == (height - SIZE + 1) * (width - SIZE + 1)  # every offset drawn
    panorama = [i for i, im in enumerate(resized) if max(im.shape[:2]) > 2 * resize_size(SIZE)]
    assert panorama
    i = panorama[0]
    assert extents[i, 0] == 2 * resize_size(SIZE)


def fgvc_lib_resize(path, size):
    from vpt_jax.data.resize_crop import open_rgb, shorter_side_resize

    return shorter_side_resize(open_rgb(path), size)


def test_names_groups_and_lists():
    assert str(parse_dataset("fgvc/stanford_dogs")) == "fgvc/dogs"
    name = parse_dataset("fgvc/cub")
    assert (name.group, name.disparity, name.default_split) == ("fgvc", "low", "trainval")
    assert [str(n) for n in parse_dataset_list("fgvc")] == [f"fgvc/{t}" for t in FGVC_TASKS]
    with pytest.raises(UserError, match="unknown FGVC dataset 'birdz'; use one of cub, nabirds"):
        parse_dataset("fgvc/birdz")


def _copy_dataset(src_root: str, dst_root: str, name: str) -> str:
    import shutil

    folder = FGVC_TASKS[name].folder
    shutil.copytree(os.path.join(src_root, folder), os.path.join(dst_root, folder))
    return os.path.join(dst_root, folder)


def test_errors_name_the_file_and_where_to_get_it(data_dir, tmp_path):
    root, splits = data_dir
    with pytest.raises(
        UserError,
        match=r"split file .*CUB_200_2011/train.json not found .*"
        r"missing: put the cub folder there.*cornell.box.com/v/vptfgvcsplits",
    ):
        fgvc_split("cub", "train", data_dir=str(tmp_path))
    with pytest.raises(UserError, match="fgvc/cub has no split 'train800'; use one of train, val"):
        fgvc_split("cub", "train800", data_dir=root)
    folder = _copy_dataset(root, str(tmp_path), "flowers")
    entries = dict(splits["flowers"]["val"])
    dropped = [k for k, v in entries.items() if v == class_id(5)]
    for key in dropped:
        del entries[key]
    with open(os.path.join(folder, "val.json"), "w") as f:
        json.dump(entries, f)
    with pytest.raises(
        UserError,
        match=r"val.json lacks class id\(s\) \[22\] of the task's 102 "
        "classes; the official remapping would shift every later label",
    ):
        fgvc_split("flowers", "val", data_dir=str(tmp_path))
    os.remove(os.path.join(folder, splits["flowers"]["test"].__iter__().__next__()))
    with pytest.raises(
        UserError,
        match=r"fgvc/flowers test: 1 of 102 listed images are missing "
        r".*get the images from .* or run python -m vpt_jax.data.prepare fgvc/flowers",
    ):
        fgvc_split("flowers", "test", data_dir=str(tmp_path))
    with open(os.path.join(folder, "train.json"), "w") as f:
        f.write('["not", "an object"]')
    with pytest.raises(UserError, match="must be one JSON object {image path: integer class id}"):
        fgvc_split("flowers", "train", data_dir=str(tmp_path))
    with open(os.path.join(folder, "train.json"), "w") as f:
        f.write("{broken")
    with pytest.raises(UserError, match="cannot read split file .*train.json"):
        fgvc_split("flowers", "train", data_dir=str(tmp_path))


def test_an_undecodable_image_is_named(data_dir, tmp_path):
    root, splits = data_dir
    folder = _copy_dataset(root, str(tmp_path), "cars")
    key = next(iter(splits["cars"]["test"]))
    with open(os.path.join(folder, key), "wb") as f:
        f.write(b"not a jpeg")
    source = get_dataset("fgvc/cars", "test", data_dir=str(tmp_path), image_size=SIZE)
    with pytest.raises(UserError, match=f"cannot decode image .*{key}"):
        next(source.batches(4))


def test_prepare_writes_tfds_images_into_the_official_layout_byte_for_byte(
    data_dir, tmp_path, capsys
):
    import tensorflow as tf
    import tensorflow_datasets as tfds

    from vpt_jax.data import prepare

    root, splits = data_dir
    originals = {}  # TFDS split -> [(filename feature, jpeg bytes)], as caltech_birds2011 has them
    for tfds_split, source in (("train", "train"), ("test", "val"), ("test", "test")):
        for key in splits["cub"][source]:
            with open(os.path.join(root, "CUB_200_2011", "images", key), "rb") as f:
                name = f"CUB_200_2011/images/{key}"
                originals.setdefault(tfds_split, []).append((name, f.read()))

    def as_dataset(self, split, decoders=None, **kwargs):
        assert self.name == "caltech_birds2011"
        assert isinstance(decoders["image"], tfds.decode.SkipDecoding)
        names, data = zip(*originals[split], strict=True)
        return tf.data.Dataset.from_tensor_slices(
            {"image/filename": list(names), "image": list(data)}
        )

    out = str(tmp_path / "out")
    with tfds.testing.mock_data(as_dataset_fn=as_dataset):
        written = prepare.prepare_fgvc("cub", out)
    for split in ("train", "val", "test"):
        shutil_json(root, out, split)
        for key in splits["cub"][split]:
            original = os.path.join(root, "CUB_200_2011", "images", key)
            with open(original, "rb") as a, open(os.path.join(written, key), "rb") as b:
                assert a.read() == b.read()
    got = fgvc_split("cub", "trainval", data_dir=out)
    assert got.labels.tolist() == fgvc_split("cub", "trainval", data_dir=root).labels.tolist()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:  # refused before anything is prepared
        prepare.main(["fgvc/cub", "fgvc/cars", "--data_dir", out])
    captured = capsys.readouterr()
    assert exit_info.value.code == 2 and not captured.out
    assert (
        captured.err.strip()
        .splitlines()[-1]
        .startswith(
            "error: cannot prepare fgvc/cars from TFDS: TFDS's cars196 numbers its images per split"
        )
    )


def shutil_json(src_root: str, dst_root: str, split: str) -> None:
    import shutil

    shutil.copy(
        os.path.join(src_root, "CUB_200_2011", f"{split}.json"),
        os.path.join(dst_root, "CUB_200_2011", f"{split}.json"),
    )


def test_tfds_keys_of_the_three_builders():
    assert fgvc_lib.tfds_key(FGVC_TASKS["cub"], {
        "image/filename": b"CUB_200_2011/images/001.Black_footed_Albatross/X_0001.jpg"
    }) == "001.Black_footed_Albatross/X_0001.jpg"  # fmt: skip
    assert fgvc_lib.tfds_key(FGVC_TASKS["dogs"], {
        "image/filename": "Images/n02085620-Chihuahua/n02085620_10074.jpg"
    }) == "n02085620-Chihuahua/n02085620_10074.jpg"  # fmt: skip
    key = fgvc_lib.tfds_key(FGVC_TASKS["flowers"], {"file_name": b"image_00001.jpg"})
    assert key == "jpg/image_00001.jpg"


def test_quadrants_place_fgvc_tasks_at_low_disparity():
    from vpt_jax.analysis.fid.table import DatasetDistance
    from vpt_jax.analysis.quadrants import quadrant_table

    rows = [
        DatasetDistance(str(n), "trainval", n.group, n.disparity, fid, 100, "inception", "ref")
        for n, fid in zip(parse_dataset_list("fgvc"), (40.0, 60.0, 80.0, 20.0, 120.0), strict=True)
    ]
    results = {"fgvc/cub": {"full": 80.0, "vpt_deep": 85.0}}
    table = quadrant_table(rows, results)
    assert {r.disparity for r in table.rows} == {"low"}
    cub = next(r for r in table.rows if r.task == "fgvc/cub")
    assert cub.winner == "VPT" and cub.group == "fgvc"


def test_a_split_with_a_shrunk_class_table_is_what_the_study_test_uses(data_dir, monkeypatch):
    """The tiny FGVC study (test_study_fgvc) shrinks a task's class count; the loader follows."""
    root, _ = data_dir
    small = dataclasses.replace(FGVC_TASKS["cars"], num_classes=4)
    monkeypatch.setitem(FGVC_TASKS, "cars", small)
    with pytest.raises(UserError, match="train.json has 196 class ids of the task's 4 classes"):
        fgvc_split("cars", "train", data_dir=root)

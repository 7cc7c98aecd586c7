"""The FGVC benchmark (appendix F): five fine-grained datasets in the official VPT layout.

Each dataset is a folder under the data directory (the same directory as the TFDS datasets) holding
its images and the released split files:

    <data_dir>/CUB_200_2011/{train,val,test}.json   images/<class dir>/<image>.jpg
    <data_dir>/nabirds/{train,val,test}.json        images/<4-digit class>/<uuid>.jpg
    <data_dir>/OxfordFlower/{train,val,test}.json   jpg/image_00001.jpg
    <data_dir>/Stanford-dogs/{train,val,test}.json  Images/<wnid-breed>/<image>.jpg
    <data_dir>/Stanford-cars/{train,val,test}.json  car_ims/000001.jpg

A split file is one JSON object `{relative image path: class id}`, paths relative to the dataset's
image folder (`FgvcTask.image_dir`). As in the official loader, a split's class ids are remapped to
`0..C-1` in sorted order (`sorted(set(ids))`); a split that lacks one of the task's classes would
shift every later label silently there, so here it is an error naming the missing ids. Examples keep
the split file's order.

Splits: `train`, `val`, `trainval` (train then val) and `test`. Evaluation images get the official
eval transform (`vpt_jax.data.resize_crop`); training with `data.resize_crop=True` gets canvases
for the random crop (`FgvcSplit.canvases`). Images are decoded on a thread pool, batch by batch: no
split is read whole unless it is materialised.

Where TFDS has the images (CUB, Dogs, Flowers), `python -m vpt_jax.data.prepare fgvc/<name>` writes
them into this layout from the prepared TFDS dataset, byte for byte (the split files still come
from the official release).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import os
from collections.abc import Iterator

import numpy as np

from vpt_jax.data.source import DataSource
from vpt_jax.errors import UserError

SPLITS_URL = "https://cornell.box.com/v/vptfgvcsplits"
SPLIT_FILES = ("train", "val", "test")
DECODE_THREADS = min(8, os.cpu_count() or 1)


@dataclasses.dataclass(frozen=True)
class FgvcTask:
    """One FGVC dataset.

    Attributes:
        name: table name (`cub`, `nabirds`, `flowers`, `dogs`, `cars`).
        folder: the dataset's folder under the data directory (the official DATAPATH name).
        image_dir: sub-folder the split files' paths are relative to ("" = the dataset folder).
        num_classes: classes of the task (the official configs' NUMBER_CLASSES).
        sizes: train / val / test images of the official splits (the VPT paper's Table 7; used to
            plan, never to check).
        tfds: TFDS dataset holding the images, or "" where TFDS has none that maps to the splits.
        tfds_key: how a TFDS example's file name becomes a split-file path: `last2` (class folder
            and file) or `jpg` (`jpg/` + file name).
        tfds_splits: the TFDS splits that together hold every image.
        class_dirs: the split files' paths start with a class folder, whose name names the class.
        source: where the images are published.
    """

    name: str
    folder: str
    image_dir: str
    num_classes: int
    sizes: tuple[int, int, int]
    tfds: str
    tfds_key: str
    class_dirs: bool
    source: str
    tfds_splits: tuple[str, ...] = ("train", "test")
    group: str = "fgvc"  # the study's group; all five are classification (low disparity)


FGVC_TASKS: dict[str, FgvcTask] = {
    t.name: t
    for t in (
        FgvcTask("cub", "CUB_200_2011", "images", 200, (5394, 600, 5794), "caltech_birds2011",
                 "last2", True, "https://www.vision.caltech.edu/datasets/cub_200_2011/"),
        FgvcTask("nabirds", "nabirds", "images", 555, (21536, 2393, 24633), "", "", True,
                 "https://dl.allaboutbirds.org/nabirds"),
        FgvcTask("flowers", "OxfordFlower", "", 102, (1020, 1020, 6149), "oxford_flowers102",
                 "jpg", False, "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/",
                 ("train", "validation", "test")),
        FgvcTask("dogs", "Stanford-dogs", "Images", 120, (10800, 1200, 8580), "stanford_dogs",
                 "last2", True, "http://vision.stanford.edu/aditya86/ImageNetDogs/"),
        FgvcTask("cars", "Stanford-cars", "", 196, (7329, 815, 8041), "", "", False,
                 "https://ai.stanford.edu/~jkrause/cars/car_dataset.html (car_ims.tgz, "
                 "cars_annos.mat)"),
    )
}  # fmt: skip
ALIASES = {"cub200": "cub", "birds": "cub", "oxford_flowers": "flowers", "stanford_dogs": "dogs",
           "stanford_cars": "cars"}  # fmt: skip
SPLITS = ("train", "val", "trainval", "test")


def get_fgvc_task(name: str) -> FgvcTask:
    """The FGVC dataset `name` (aliases such as `stanford_dogs` accepted).

    Raises:
        UserError: unknown name; the message lists the five.
    """
    task = FGVC_TASKS.get(ALIASES.get(name, name))
    if task is None:
        raise UserError(f"unknown FGVC dataset {name!r}; use one of {', '.join(FGVC_TASKS)}")
    return task


# Why TFDS cannot supply a dataset's images in the official layout.
NOT_IN_TFDS = {
    "nabirds": "TFDS has no NABirds",
    "cars": "TFDS's cars196 numbers its images per split, while the official split files use the "
    "combined car_ims/ numbering of cars_annos.mat",
}


def tfds_key(task: FgvcTask, example: dict) -> str:
    """The split-file path of a TFDS example (its file-name feature, bytes or str)."""
    field = "file_name" if task.tfds_key == "jpg" else "image/filename"
    name = example[field]
    name = (name.decode() if isinstance(name, bytes) else str(name)).replace("\\", "/")
    if task.tfds_key == "jpg":
        return "jpg/" + name.rsplit("/", 1)[-1]
    return "/".join(name.split("/")[-2:])


def dataset_root(task: FgvcTask, data_dir: str | None) -> str:
    """The dataset's folder: `<data_dir>/<folder>` (data_dir None: TFDS's default data directory)."""
    if data_dir is None:
        data_dir = os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")
    return os.path.join(os.path.expanduser(data_dir), task.folder)


def read_split_file(task: FgvcTask, root: str, split: str) -> dict[str, int]:
    """One released split file as `{relative path: class id}`, in file order."""
    path = os.path.join(root, f"{split}.json")
    if not os.path.isfile(path):
        where = (
            root if os.path.isdir(root) else f"{root} (missing: put the {task.name} folder there)"
        )
        raise UserError(
            f"fgvc/{task.name}: split file {path} not found in {where}; the official "
            f"{', '.join(s + '.json' for s in SPLIT_FILES)} are published at {SPLITS_URL}"
        )
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, ValueError) as error:
        raise UserError(f"cannot read split file {path} ({error}); fetch it again") from None
    if not isinstance(entries, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in entries.items()
    ):
        raise UserError(
            f"split file {path} must be one JSON object {{image path: integer class id}}"
        )
    return entries


@dataclasses.dataclass(frozen=True)
class FgvcSplit:
    """A split's images and labels, before any pixel is read."""

    name: str  # e.g. fgvc/cub:train
    paths: tuple[str, ...]  # absolute image paths, in split-file order
    labels: np.ndarray  # int32, remapped to 0..C-1
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices, suffix: str) -> FgvcSplit:
        """The examples at `indices`, in that order, named `<name>:<suffix>`."""
        indices = np.asarray(indices, np.int64)
        return dataclasses.replace(
            self,
            name=f"{self.name}:{suffix}",
            paths=tuple(self.paths[i] for i in indices),
            labels=self.labels[indices],
        )

    def images(self, indices, image_size: int) -> np.ndarray:
        """Evaluation images (resize, centre crop) of the examples at `indices`: uint8 (n,S,S,3)."""
        from vpt_jax.data.resize_crop import center_crop_image

        out = self._decode(indices, lambda image: center_crop_image(image, image_size))
        return np.stack(out) if out else np.zeros((0, image_size, image_size, 3), np.uint8)

    def canvases(self, indices, image_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Training canvases and extents of the examples at `indices` (`resize_crop.canvas_image`)."""
        from vpt_jax.data.resize_crop import canvas_image, canvas_shape

        out = self._decode(indices, lambda image: canvas_image(image, image_size))
        if not out:
            return np.zeros((0, *canvas_shape(image_size)), np.uint8), np.zeros((0, 2), np.int32)
        return np.stack([c for c, _ in out]), np.stack([e for _, e in out])

    def _decode(self, indices, finish) -> list:
        from vpt_jax.data.resize_crop import open_rgb

        work = lambda i: finish(open_rgb(self.paths[int(i)]))
        indices = list(np.asarray(indices, np.int64))
        if len(indices) < 2 or DECODE_THREADS < 2:
            return [work(i) for i in indices]
        with concurrent.futures.ThreadPoolExecutor(DECODE_THREADS) as pool:  # PIL frees the GIL
            return list(pool.map(work, indices))

    def source(self, image_size: int) -> DataSource:
        """The split as a `DataSource` of evaluation images, decoded batch by batch."""

        def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
            for start in range(0, len(self), batch_size):
                stop = min(start + batch_size, len(self))
                yield self.images(range(start, stop), image_size), self.labels[start:stop]

        return DataSource(
            name=self.name,
            num_classes=self.num_classes,
            class_names=self.class_names,
            image_size=image_size,
            num_examples=len(self),
            read=read,
        )


def fgvc_split(name: str, split: str, *, data_dir: str | None) -> FgvcSplit:
    """Reads a split's file list and labels, checking the files it names exist.

    Args:
        name: the dataset (`cub`, ...).
        split: `train`, `val`, `trainval` or `test`.
        data_dir: the data directory holding the dataset folders.

    Raises:
        UserError: unknown dataset or split, a missing folder or split file, a split lacking a class
            of the task, or a listed image that does not exist.
    """
    task = get_fgvc_task(name)
    if split not in SPLITS:
        raise UserError(f"fgvc/{task.name} has no split {split!r}; use one of {', '.join(SPLITS)}")
    root = dataset_root(task, data_dir)
    parts = ("train", "val") if split == "trainval" else (split,)
    entries = [read_split_file(task, root, part) for part in parts]
    image_root = os.path.join(root, task.image_dir)
    keys, labels, names = [], [], None
    for part, listed in zip(parts, entries, strict=True):
        mapping = _class_mapping(task, root, part, listed)
        if names is not None and mapping != names:
            raise UserError(
                f"fgvc/{task.name}: train.json and val.json list different class ids; "
                f"fetch the official split files again from {SPLITS_URL}"
            )
        names = mapping
        keys += list(listed)
        labels += [mapping[c] for c in listed.values()]
    missing = [k for k in keys if not os.path.isfile(os.path.join(image_root, k))]
    if missing:
        raise UserError(
            f"fgvc/{task.name} {split}: {len(missing)} of {len(keys)} listed images are missing "
            f"from {image_root} (first: {missing[0]}); get the images from {task.source}"
            + (f" or run python -m vpt_jax.data.prepare fgvc/{task.name}" if task.tfds else "")
        )
    class_names = _class_names(task, keys, labels, names)
    return FgvcSplit(
        name=f"fgvc/{task.name}:{split}",
        paths=tuple(os.path.join(image_root, k) for k in keys),
        labels=np.asarray(labels, np.int32),
        class_names=class_names,
    )


def _class_mapping(task: FgvcTask, root: str, split: str, listed: dict[str, int]) -> dict:
    """The official remapping `sorted(set(ids))` -> 0..C-1, refused where a class is absent."""
    ids = sorted(set(listed.values()))
    if len(ids) != task.num_classes:
        known = set(ids)
        for other in SPLIT_FILES:  # name the ids the other split files have and this one lacks
            if other != split and os.path.isfile(os.path.join(root, f"{other}.json")):
                known |= set(read_split_file(task, root, other).values())
        absent = sorted(known - set(ids))
        detail = f"lacks class id(s) {absent[:10]}" if absent else f"has {len(ids)} class ids"
        raise UserError(
            f"fgvc/{task.name}: {split}.json {detail} of the task's {task.num_classes} classes; "
            "the official remapping would shift every later label, so this split cannot be used "
            f"(fetch the official split files from {SPLITS_URL})"
        )
    return {c: i for i, c in enumerate(ids)}


def _class_names(task: FgvcTask, keys, labels, mapping) -> tuple[str, ...]:
    names = {i: str(c) for c, i in mapping.items()}
    if task.class_dirs:
        for key, label in zip(keys, labels, strict=True):
            head = key.replace("\\", "/").split("/")[0]
            if head != key:
                names[label] = head
    return tuple(names[i] for i in range(len(mapping)))

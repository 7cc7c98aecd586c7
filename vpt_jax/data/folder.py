"""Image-folder datasets: one sub-folder per class, the way practitioners usually hold their data.

Two layouts are read:

    root/train/<class>/*.jpg          root/<class>/*.jpg
    root/val/<class>/*.jpg            (split into train and val by `val_fraction`, per class,
    root/test/<class>/*.jpg  (opt.)    reproducibly from `seed`)

`val/` may also be called `validation/`; without it, `train/` is split by `val_fraction`. Classes
are the sub-folder names in sorted order (label = position); train, val and test must hold the same
classes. Images of any format Pillow reads are decoded to RGB and resized to the model resolution.
Splits: `train`, `val`, `trainval` (both), and `test` where a `test/` folder exists.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from vpt_jax.data.image_convert import to_model_image_np
from vpt_jax.data.source import DataSource
from vpt_jax.errors import UserError

IMAGE_EXTENSIONS = (
    ".jpg",
    ".jpeg",
    ".png",
    ".bmp",
    ".gif",
    ".webp",
    ".ppm",
    ".pgm",
    ".tif",
    ".tiff",
)
_VAL_DIRS = ("val", "validation")

# One split: image paths and their labels.
Listing = tuple[list[str], list[int]]


def scan_classes(root: str) -> dict[str, list[str]]:
    """The image files of each class sub-folder of `root`, checking every image's header.

    Args:
        root: A folder with one sub-folder per class.

    Returns:
        `{class name: sorted image paths}`, classes in sorted order.

    Raises:
        UserError: Missing folder, no class sub-folders, an empty class folder, or a file with an
            image extension that Pillow cannot identify.
    """
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} does not exist; check the path")
    classes = sorted(
        entry.name
        for entry in os.scandir(root)
        if entry.is_dir() and not entry.name.startswith(".")
    )
    if not classes:
        raise UserError(
            f"image folder {root} has no class sub-folders; "
            "put each class's images in root/<class>/"
        )
    files = {}
    for name in classes:
        folder = os.path.join(root, name)
        images = sorted(
            os.path.join(folder, f)
            for f in os.listdir(folder)
            if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")
        )
        if not images:
            raise UserError(
                f"class folder {folder} holds no images ({', '.join(IMAGE_EXTENSIONS)}); "
                "add some or remove it"
            )
        for path in images:
            _check_header(path)
        files[name] = images
    return files


def _check_header(path: str) -> None:
    try:
        with Image.open(path):
            pass  # opening reads only the header: cheap, and catches non-images early
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot read image {path} ({error}); fix or remove the file") from None


def _listing(files: dict[str, list[str]], class_names: Sequence[str]) -> Listing:
    paths, labels = [], []
    for label, name in enumerate(class_names):
        paths.extend(files[name])
        labels.extend([label] * len(files[name]))
    return paths, labels


def _ratio_split(
    files: dict[str, list[str]], val_fraction: float, seed: int
) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Per class: a seeded shuffle, then `val_fraction` of it (at least one, never all) to val."""
    if not 0.0 < val_fraction < 1.0:
        raise UserError(f"val_fraction must lie strictly between 0 and 1, got {val_fraction}")
    rng = np.random.default_rng(seed)
    train, val = {}, {}
    for name, paths in files.items():
        order = [paths[i] for i in rng.permutation(len(paths))]
        count = (
            0 if len(paths) < 2 else min(max(round(len(paths) * val_fraction), 1), len(paths) - 1)
        )
        val[name], train[name] = sorted(order[:count]), sorted(order[count:])
    return train, val


def _same_classes(
    root: str, reference: dict[str, list[str]], other: dict[str, list[str]], what: str
) -> None:
    if set(reference) != set(other):
        only_train = sorted(set(reference) - set(other))
        only_other = sorted(set(other) - set(reference))
        raise UserError(
            f"image folder {root}: train/ and {what}/ hold different classes "
            f"(only in train: {only_train or 'none'}; only in {what}: {only_other or 'none'}); "
            "give both the same class sub-folders"
        )


def folder_listings(
    root: str, *, val_fraction: float = 0.2, seed: int = 0
) -> tuple[dict[str, Listing], tuple[str, ...]]:
    """Every split of an image folder as paths and labels.

    Args:
        root: The dataset folder (either layout).
        val_fraction: Share of each class held out for `val` when there is no `val/` folder.
        seed: Seed of that hold-out.

    Returns:
        `({split: (paths, labels)}, class names)`.
    """
    if not os.path.isdir(root):
        raise UserError(f"image folder {root} does not exist; check the path")
    train_dir = os.path.join(root, "train")
    val_dirs = [os.path.join(root, d) for d in _VAL_DIRS if os.path.isdir(os.path.join(root, d))]
    test_dir = os.path.join(root, "test")
    extra = {}
    if os.path.isdir(train_dir):
        train = scan_classes(train_dir)
        if val_dirs:
            val = scan_classes(val_dirs[0])
            _same_classes(root, train, val, os.path.basename(val_dirs[0]))
        else:
            train, val = _ratio_split(train, val_fraction, seed)
        if os.path.isdir(test_dir):
            extra["test"] = scan_classes(test_dir)
            _same_classes(root, train, extra["test"], "test")
    else:
        train, val = _ratio_split(scan_classes(root), val_fraction, seed)
    class_names = tuple(sorted(train))
    listings = {"train": _listing(train, class_names), "val": _listing(val, class_names)}
    listings["trainval"] = tuple(
        a + b for a, b in zip(listings["train"], listings["val"], strict=True)
    )
    listings.update({name: _listing(files, class_names) for name, files in extra.items()})
    return listings, class_names


def _decode(path: str, image_size: int) -> np.ndarray:
    try:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB"), dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as error:
        raise UserError(f"cannot decode image {path} ({error}); fix or remove the file") from None
    return to_model_image_np(pixels, image_size)


def folder_source(
    root: str, split: str, *, image_size: int, val_fraction: float = 0.2, seed: int = 0
) -> DataSource:
    """A split of an image folder.

    Args:
        root: The dataset folder.
        split: `train`, `val`, `trainval` or `test`.
        image_size: Model resolution.
        val_fraction: Share of each class held out for `val` when there is no `val/` folder.
        seed: Seed of that hold-out.

    Returns:
        The source, reading and resizing images batch by batch.
    """
    listings, class_names = folder_listings(root, val_fraction=val_fraction, seed=seed)
    if split not in listings:
        raise UserError(
            f"image folder {root} has no split {split!r}; available: {', '.join(listings)}"
        )
    paths, labels = listings[split]

    def read(batch_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for start in range(0, len(paths), batch_size):
            chunk = paths[start : start + batch_size]
            images = np.stack([_decode(path, image_size) for path in chunk])
            yield images, np.asarray(labels[start : start + batch_size], np.int32)

    return DataSource(
        name=f"folder:{root}:{split}",
        num_classes=len(class_names),
        class_names=class_names,
        image_size=image_size,
        num_examples=len(paths),
        read=read,
    )

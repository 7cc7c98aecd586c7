"""FGVC datasets written in exactly the official layout, with small images of awkward kinds.

Every dataset gets all of its classes (the official remapping needs each split to hold them), in
its own folder and key form (`vpt_jax.data.fgvc.FGVC_TASKS`), with `{relative path: class id}`
split files whose ids are not 0-based or contiguous as a whole (ids `3 * c + 7`: the loader's
sorted-set remapping must make them 0..C-1), listed in a shuffled order. Images are JPEGs of odd
sizes, portrait and landscape, one panorama shape (over 3:1), in RGB, grayscale ("L") and CMYK.
"""

from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from vpt_jax.data.fgvc import FGVC_TASKS, FgvcTask

# Images per class in train / val / test.
PER_CLASS = (2, 1, 1)


def class_id(label: int) -> int:
    """The id a split file stores for class `label` (not 0-based, not contiguous)."""
    return 3 * label + 7


def _key(task: FgvcTask, label: int, index: int) -> str:
    if task.name == "cub":
        return f"{label + 1:03d}.Bird_{label}/Bird_{label}_{index:04d}_{label}.jpg"
    if task.name == "nabirds":
        return f"{label + 295:04d}/{label:04x}{index:028x}.jpg"
    if task.name == "dogs":
        return f"n{2085620 + label:08d}-Breed_{label}/n{2085620 + label:08d}_{index}.jpg"
    if task.name == "flowers":
        return f"jpg/image_{label * 100 + index + 1:05d}.jpg"
    return f"car_ims/{label * 100 + index + 1:06d}.jpg"


def _image(rng: np.random.Generator, k: int) -> Image.Image:
    """Image number `k` of a dataset: sizes and modes cycle through the awkward cases."""
    shapes = ((23, 37), (41, 19), (20, 20), (17, 53), (30, 31), (18, 22))  # (height, width)
    height, width = shapes[k % len(shapes)]
    pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    mode = k % 5
    if mode == 1:
        return image.convert("L")
    if mode == 2:
        return image.convert("CMYK")
    return image


def write_fgvc(
    data_dir: str, name: str, seed: int = 0, per_class: tuple[int, int, int] = PER_CLASS
) -> dict[str, dict[str, int]]:
    """Writes dataset `name` under `data_dir` (`per_class` train / val / test images of each
    class); returns its split files' contents, in their order."""
    task = FGVC_TASKS[name]
    root = os.path.join(data_dir, task.folder)
    image_root = os.path.join(root, task.image_dir)
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    k = 0
    for label in range(task.num_classes):
        index = 0
        for split, count in zip(splits, per_class, strict=True):
            for _ in range(count):
                key = _key(task, label, index)
                path = os.path.join(image_root, key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                _image(rng, k).save(path, format="JPEG", quality=90)
                splits[split][key] = class_id(label)
                index += 1
                k += 1
    written = {}
    for split, entries in splits.items():  # the official files list classes interleaved
        keys = sorted(entries, key=lambda key: (hash_order(key), key))
        written[split] = {key: entries[key] for key in keys}
        with open(os.path.join(root, f"{split}.json"), "w") as f:
            json.dump(written[split], f)
    return written


def hash_order(key: str) -> int:
    """A fixed, non-alphabetical order for the split files' entries."""
    return sum((i + 1) * ord(c) for i, c in enumerate(key)) % 97

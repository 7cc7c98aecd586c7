"""A real image set end to end: scikit-learn's handwritten digits as an image folder (issue 18).

scikit-learn ships the UCI digits (1,797 real 8x8 scans of handwritten digits by 43 writers, 10
classes) inside its wheel, so the suite has real images offline. They are written as PNG files
in the image-folder layout (`train/`, `val/`, `test/`, a sub-folder per digit), read back through
`folder:` exactly (pixels, labels, order), and trained and evaluated through the same command-line
path every dataset takes; a model that learned nothing would sit at 10%.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from vpt_jax import data
from vpt_jax.config import base_config
from vpt_jax.train import run

sklearn_datasets = pytest.importorskip("sklearn.datasets")

SPLITS = {"train": slice(0, 800), "val": slice(800, 1000), "test": slice(1000, None)}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """The digits as `root/<split>/<digit>/<index>.png` (grey, 0..255), and the arrays."""
    loaded = sklearn_datasets.load_digits()
    pixels = np.round(loaded.images * 255 / 16).astype(np.uint8)  # values 0..16 -> 0..255
    root = tmp_path_factory.mktemp("digits")
    for split, rows in SPLITS.items():
        for index in range(len(pixels))[rows]:
            folder = root / split / str(loaded.target[index])
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels[index], "L").save(folder / f"{index:04d}.png")
    return str(root), pixels, loaded.target


@pytest.mark.parametrize("split", sorted(SPLITS))
def test_the_digits_read_back_exactly(digits, split):
    root, pixels, targets = digits
    got = data.load_split(f"folder:{root}", split, image_size=8)
    indices = np.arange(len(pixels))[SPLITS[split]]
    # The folder's order: by class, then by file name within a class.
    order = sorted(indices, key=lambda i: (targets[i], i))
    assert got.class_names == tuple(str(d) for d in range(10))
    np.testing.assert_array_equal(got.labels, targets[order])
    grey = pixels[order]
    np.testing.assert_array_equal(got.images, np.repeat(grey[..., None], 3, axis=-1))


def test_a_vit_learns_the_digits_through_the_cli_path(digits, tmp_path):
    root, _, _ = digits
    c = base_config()
    c.model.variant = "custom"
    c.model.patch_size, c.model.hidden_size, c.model.num_layers = 4, 48, 2
    c.model.num_heads, c.model.mlp_dim, c.model.image_size = 4, 96, 16  # 8x8 scans resized to 16
    c.model.checkpoint = ""  # from scratch: no pretrained backbone knows these digits
    c.data.dataset = f"folder:{root}"
    c.data.train_split, c.data.eval_splits = "train", ("val", "test")
    c.strategy.name = "full"
    c.optimizer.lr = 0.004
    c.optimizer.warmup_epochs = 1
    c.train.epochs, c.train.batch_size, c.train.eval_batch_size = 10, 32, 200
    c.train.eval_every_epochs = 0
    result = run.train_and_evaluate(c, str(tmp_path / "run"))
    assert result["num_classes"] == 10 and result["train_examples"] == 800
    final = result["final"]
    assert final["val_top1"] > 0.6 and final["test_top1"] > 0.6, final  # chance 0.1; ~0.7 here
    assert os.path.exists(tmp_path / "run" / "artifact.npz")

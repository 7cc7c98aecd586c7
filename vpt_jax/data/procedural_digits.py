"""Real handwritten digits for the procedural demo: the UCI scans, placed and scaled at random.

The 1,797 8x8 scans of scikit-learn's `load_digits` (E. Alpaydin and C. Kaynak, UCI Machine
Learning Repository, CC BY 4.0; 43 writers, ink 0..16) ship as `vpt_jax/assets/uci_digits.npz`,
so the demo has a real image domain far from its procedural pretraining images, offline and
without scikit-learn. Each stream draws from its own scans, so no scan is in two of them:

| stream | scans | per class |
| --- | --- | --- |
| train | 0 .. 996 | about 100 |
| val | 997 .. 1196 | about 20 |
| test | 1197 .. 1796 | about 60 |

An example is one scan of its class, drawn at random from its stream's scans, upsampled
bilinearly to 55-85% of the image side at a random position, light ink on a dark ground.

    python -m vpt_jax.data.procedural_digits      # rewrites the asset (needs scikit-learn)
"""

from __future__ import annotations

import functools
import io
import os

import numpy as np

import vpt_jax
from vpt_jax import atomic

ASSET = os.path.join(os.path.dirname(vpt_jax.__file__), "assets", "uci_digits.npz")
POOLS = {"train": (0, 997), "val": (997, 1197), "test": (1197, 1797)}


@functools.cache
def _scans() -> tuple[np.ndarray, np.ndarray]:
    with np.load(ASSET) as f:
        return f["images"], f["labels"]


@functools.cache
def _pool(stream: str, label: int) -> np.ndarray:
    images, labels = _scans()
    start, stop = POOLS[stream]
    return start + np.flatnonzero(labels[start:stop] == label)


def _resize(scan: np.ndarray, side: int) -> np.ndarray:
    """Bilinear resize of a square float image to `side` x `side` (pixel centres aligned)."""
    n = scan.shape[0]
    pos = np.clip((np.arange(side) + 0.5) * n / side - 0.5, 0, n - 1)
    i = np.minimum(pos.astype(int), n - 2)
    f = (pos - i).astype(np.float32)
    rows = scan[i] * (1 - f)[:, None] + scan[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def render_digit(rng: np.random.Generator, size: int, label: int, stream: str) -> np.ndarray:
    """One example of digit `label` from `stream`'s scans, uint8 `(size, size, 3)`."""
    images, _ = _scans()
    scan = images[int(rng.choice(_pool(stream, label)))].astype(np.float32) / 16.0
    side = max(2, int(round(size * rng.uniform(0.55, 0.85))))
    y, x = rng.integers(0, size - side + 1, 2)
    canvas = np.zeros((size, size), np.float32)
    canvas[y : y + side, x : x + side] = _resize(scan, side)
    ground, ink = rng.uniform(0.0, 0.2), rng.uniform(0.75, 1.0)
    grey = ground + (ink - ground) * canvas
    return np.round(np.repeat(grey[:, :, None], 3, axis=2) * 255).astype(np.uint8)


def write_asset(path: str = ASSET) -> str:
    """Writes scikit-learn's digits as the asset (uint8 ink 0..16, int32 labels), atomically."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images.astype(np.uint8)
    labels = digits.target.astype(np.int32)

    buffer = io.BytesIO()
    np.savez_compressed(buffer, images=images, labels=labels)
    atomic.write_bytes(path, buffer.getvalue())
    return path


if __name__ == "__main__":
    print(write_asset())

"""Numpy rasterisation for the procedural datasets: shapes, textures, backgrounds, noise.

Images are float32 `(S, S, 3)` canvases in `[0, 1]`. Shapes are signed-distance functions in the
shape's own frame (units of its radius, positive inside), rasterised with a one-pixel soft edge so
small images stay smooth. Everything is deterministic given the numpy `Generator` passed in.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

SHAPES = (
    "disc",
    "ring",
    "triangle",
    "square",
    "hexagon",
    "star",
    "cross",
    "bar",
    "crescent",
    "semidisc",
)
# Shapes the pretraining task never shows: the demo's "new classes rendered like pretraining".
NEW_SHAPES = ("pentagon", "heart", "arrow", "ell", "tee", "ellipse")
TEXTURES = ("solid", "stripes", "checker", "dots", "rings", "noise")


@functools.lru_cache(maxsize=8)
def pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates `(y, x)` in `[0, 1)`, each `(size, size)` float32."""
    centres = (np.arange(size, dtype=np.float32) + 0.5) / size
    y, x = np.meshgrid(centres, centres, indexing="ij")
    y.flags.writeable = x.flags.writeable = False
    return y, x


def _polygon(sides: int) -> Callable[[np.ndarray, np.ndarray], np.ndarray]:
    apothem = np.cos(np.pi / sides)
    normals = (2 * np.arange(sides) + 1) * np.pi / sides

    def sdf(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        reach = np.max([u * np.cos(a) + v * np.sin(a) for a in normals], axis=0)
        return apothem - reach

    return sdf


def _star(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    theta = np.arctan2(v, u) % (2 * np.pi / 5)
    tip = np.abs(theta / (2 * np.pi / 5) * 2 - 1)  # 1 at the five tips, 0 between them
    return 0.45 + 0.55 * tip - np.hypot(u, v)


_SDF: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": lambda u, v: 1 - np.hypot(u, v),
    "ring": lambda u, v: np.minimum(1 - np.hypot(u, v), np.hypot(u, v) - 0.55),
    "triangle": _polygon(3),
    "square": _polygon(4),
    "hexagon": _polygon(6),
    "star": _star,
    "cross": lambda u, v: np.maximum(
        np.minimum(1 - np.abs(u), 0.3 - np.abs(v)), np.minimum(0.3 - np.abs(u), 1 - np.abs(v))
    ),
    "bar": lambda u, v: np.minimum(1 - np.abs(u), 0.3 - np.abs(v)),
    "crescent": lambda u, v: np.minimum(1 - np.hypot(u, v), np.hypot(u - 0.5, v) - 0.8),
    "semidisc": lambda u, v: np.minimum(1 - np.hypot(u, v), v),
    # NEW_SHAPES: unions (max) and intersections (min) of discs, bars and half-planes.
    "pentagon": _polygon(5),
    "heart": lambda u, v: np.maximum(
        np.maximum(0.5 - np.hypot(u + 0.38, v + 0.3), 0.5 - np.hypot(u - 0.38, v + 0.3)),
        np.minimum(v + 0.3, 0.6 * (0.95 - v) - 0.8 * np.abs(u)),
    ),
    "arrow": lambda u, v: np.maximum(
        np.minimum(0.6 - np.abs(u + 0.35), 0.17 - np.abs(v)),
        np.minimum(u - 0.15, 0.6 * (1 - u) - np.abs(v)),
    ),
    "ell": lambda u, v: np.maximum(
        np.minimum(0.25 - np.abs(u + 0.6), 0.9 - np.abs(v)),
        np.minimum(0.25 - np.abs(v - 0.65), 0.85 - np.abs(u)),
    ),
    "tee": lambda u, v: np.maximum(
        np.minimum(0.25 - np.abs(v + 0.65), 0.9 - np.abs(u)),
        np.minimum(0.25 - np.abs(u), 0.9 - np.abs(v)),
    ),
    "ellipse": lambda u, v: 0.5 * (1 - np.hypot(u, v / 0.5)),
}


def shape_mask(
    size: int, shape: str, cy: float, cx: float, radius: float, angle: float
) -> np.ndarray:
    """Coverage in `[0, 1]` of one shape.

    Args:
        size: Image size in pixels.
        shape: One of `SHAPES`.
        cy: Centre row, as a fraction of the image.
        cx: Centre column, as a fraction of the image.
        radius: Radius as a fraction of the image.
        angle: Rotation in radians.

    Returns:
        float32 `(size, size)`.
    """
    y, x = pixel_grid(size)
    dy, dx = (y - cy) / radius, (x - cx) / radius
    cos, sin = np.cos(angle), np.sin(angle)
    u, v = cos * dx + sin * dy, cos * dy - sin * dx
    distance_px = _SDF[shape](u, v) * radius * size
    return np.clip(distance_px + 0.5, 0.0, 1.0).astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Value noise in `[0, 1]`: a `cells x cells` random grid, bilinearly upsampled."""
    grid = rng.random((cells + 1, cells + 1), dtype=np.float32)
    pos = np.linspace(0, cells, size, dtype=np.float32)
    i = np.minimum(pos.astype(int), cells - 1)
    f = pos - i
    rows = grid[i] * (1 - f)[:, None] + grid[i + 1] * f[:, None]
    return rows[:, i] * (1 - f)[None, :] + rows[:, i + 1] * f[None, :]


def texture(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A pattern in `[0, 1]`, `(size, size)`, with random scale, phase and orientation.

    Args:
        rng: Random generator.
        size: Image size.
        kind: One of `TEXTURES`.

    Returns:
        float32 pattern.
    """
    y, x = pixel_grid(size)
    angle = rng.uniform(0, np.pi)
    u, v = x * np.cos(angle) + y * np.sin(angle), y * np.cos(angle) - x * np.sin(angle)
    freq = rng.uniform(3.0, 6.0)
    if kind == "solid":
        return np.zeros((size, size), np.float32)
    if kind == "stripes":
        return (np.sin(2 * np.pi * freq * u + rng.uniform(0, 2 * np.pi)) > 0).astype(np.float32)
    if kind == "checker":
        return ((np.floor(u * freq) + np.floor(v * freq)) % 2).astype(np.float32)
    if kind == "dots":
        fu, fv = (u * freq) % 1 - 0.5, (v * freq) % 1 - 0.5
        return (np.hypot(fu, fv) < 0.3).astype(np.float32)
    if kind == "noise":
        return (smooth_noise(rng, size, 6) > 0.5).astype(np.float32)
    if kind == "rings":
        cy, cx = rng.uniform(0.2, 0.8, 2)
        return (np.sin(2 * np.pi * freq * np.hypot(y - cy, x - cx)) > 0).astype(np.float32)
    raise ValueError(f"unknown texture {kind!r}")


def random_colour(rng: np.random.Generator, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """An RGB colour with channels uniform in `[low, high)`."""
    return rng.uniform(low, high, 3).astype(np.float32)


def paint(canvas: np.ndarray, coverage: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """Composites `fill` (an RGB colour or an `(S, S, 3)` image) over `canvas` by `coverage`."""
    alpha = coverage[:, :, None]
    return canvas * (1 - alpha) + fill * alpha


def textured_fill(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """A two-colour textured image `(S, S, 3)` of the given texture kind."""
    pattern = texture(rng, size, kind)[:, :, None]
    return random_colour(rng) * (1 - pattern) + random_colour(rng) * pattern


def natural_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """A cluttered background: two colours mixed by smooth noise, plus a linear gradient."""
    mix = smooth_noise(rng, size, int(rng.integers(2, 6)))[:, :, None]
    y, _ = pixel_grid(size)
    gradient = (y - 0.5)[:, :, None] * rng.uniform(-0.4, 0.4)
    image = random_colour(rng) * (1 - mix) + random_colour(rng) * mix + gradient
    return np.clip(image, 0.0, 1.0).astype(np.float32)


def to_uint8(
    image: np.ndarray, rng: np.random.Generator | None = None, noise: float = 0.0
) -> np.ndarray:
    """A `[0, 1]` canvas to uint8, optionally with Gaussian pixel noise of std `noise`."""
    if rng is not None and noise > 0:
        image = image + rng.normal(0.0, noise, image.shape).astype(np.float32)
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)

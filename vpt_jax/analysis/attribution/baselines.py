"""The start points of Integrated Gradients' path: baselines in model space.

`make_baseline(images, baseline, normalization=...)` builds `zeros`, `black`, `blur` or a user
array, in model space. "Black" depends on the normalisation the model was trained with: `-1` for
`inception` (`[-1, 1]` inputs), `-mean / std` per channel for `imagenet`. `gaussian_blur` is
scipy's `gaussian_filter` (reflect borders) in JAX, for the `blur` baseline.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.data.preprocess import NORMALIZATIONS, check_normalization
from vpt_jax.errors import UserError

Array = jax.Array
BASELINES = ("zeros", "black", "blur")


def gaussian_blur(images: Any, sigma: float, truncate: float = 4.0) -> Array:
    """Blurs each channel of NHWC images with a Gaussian, as `scipy.ndimage.gaussian_filter`.

    Borders reflect (scipy's `reflect` mode); the kernel radius is `int(truncate * sigma + 0.5)`.

    Args:
      images: `(B, H, W, C)`.
      sigma: standard deviation in pixels, > 0.
      truncate: radius in standard deviations.

    Returns:
      The blurred images, same shape, float32.
    """
    if not sigma > 0:
        raise UserError(f"blur sigma must be positive, got {sigma}")
    images = jnp.asarray(images, jnp.float32)
    rows = _blur_matrix(images.shape[1], sigma, truncate)
    cols = _blur_matrix(images.shape[2], sigma, truncate)
    return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, images)


def _blur_matrix(size: int, sigma: float, truncate: float) -> np.ndarray:
    # A dense (size, size) operator: exact reflect borders for any radius, one matmul per axis.
    radius = int(truncate * sigma + 0.5)
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    matrix = np.zeros((size, size))
    for i in range(size):
        source = np.mod(i + offsets, 2 * size)
        source = np.where(source >= size, 2 * size - 1 - source, source)
        np.add.at(matrix[i], source, kernel)
    return matrix.astype(np.float32)


def make_baseline(
    images: Array,
    baseline: str | Any = "black",
    *,
    normalization: str = "inception",
    blur_sigma: float = 5.0,
) -> Array:
    """The IG baseline for model-space `images`.

    Args:
      images: `(B, H, W, C)` model inputs.
      baseline: `zeros` (zeros in model space: a grey image under `inception`), `black` (pixel
        value 0 after `normalization`), `blur` (the input blurred), or an array broadcastable to
        `images` (already in model space).
      normalization: `inception` or `imagenet`: how pixels became model inputs (for `black`).
      blur_sigma: Gaussian standard deviation in pixels (for `blur`).

    Returns:
      The baseline, shaped like `images`.
    """
    if isinstance(baseline, str):
        if baseline == "zeros":
            return jnp.zeros_like(images)
        if baseline == "black":
            mean, std = NORMALIZATIONS[check_normalization(normalization)]
            black = -np.asarray(mean, np.float32) / np.asarray(std, np.float32)
            return jnp.broadcast_to(jnp.asarray(black), images.shape)
        if baseline == "blur":
            return gaussian_blur(images, blur_sigma)
        raise UserError(
            f"unknown baseline {baseline!r}; use one of {', '.join(BASELINES)} or pass an array"
        )
    array = jnp.asarray(baseline, jnp.float32)
    try:
        return jnp.broadcast_to(array, images.shape)
    except ValueError:
        raise UserError(
            f"baseline of shape {array.shape} does not broadcast to the images' {images.shape}"
        ) from None

"""Device-side preprocessing of uint8 batches: normalisation and optional augmentation, in jnp.

Batches arrive as uint8 `(B, H, W, 3)` already at the model resolution
(`vpt_jax.data.image_convert`), so these functions are cheap, shape-preserving and run inside the
jitted train/eval steps.

Normalisation (`normalization` in the config):

* `inception` (default): `x / 127.5 - 1`, values in `[-1, 1]`: what the google-research ViT
  checkpoints were trained with.
* `imagenet`: `(x / 255 - mean) / std` with the ImageNet mean and std: what the PyTorch VPT code
  used.

Augmentation is off by default (the VPT protocol uses none): a random horizontal flip, and a random
crop that pads by `crop_padding` zero pixels on each side and crops back to the original size. The
FGVC recipe's random crop (`data.resize_crop`) draws from canvases instead of model-sized images
(`canvas_crop`, `vpt_jax.data.resize_crop`).

`check_images` validates pixel arrays a user hands to the analysis functions (NHWC RGB, uint8 or
floats in [0, 1]) with a message that says what to change.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.errors import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Per-channel (mean, std) in 0..255 pixel units.
NORMALIZATIONS = {
    "inception": ((127.5,) * 3, (127.5,) * 3),
    "imagenet": (
        tuple(255.0 * m for m in IMAGENET_MEAN),
        tuple(255.0 * s for s in IMAGENET_STD),
    ),
}


def check_normalization(name: str) -> str:
    """Returns `name` if it is a known normalisation.

    Args:
        name: `inception` or `imagenet`.

    Returns:
        The name.

    Raises:
        UserError: Unknown name; the message lists the valid ones.
    """
    if name not in NORMALIZATIONS:
        raise UserError(f"unknown normalization {name!r}; use one of {', '.join(NORMALIZATIONS)}")
    return name


def normalize(images: jax.Array, normalization: str = "inception") -> jax.Array:
    """uint8 pixels to float32 model inputs.

    Args:
        images: uint8 `(..., 3)`.
        normalization: `inception` (`[-1, 1]`) or `imagenet` (ImageNet mean/std).

    Returns:
        float32 array of the same shape.
    """
    mean, std = NORMALIZATIONS[check_normalization(normalization)]
    images = images.astype(jnp.float32)
    return (images - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_flip(rng: jax.Array, images: jax.Array) -> jax.Array:
    """Flips each image left-right with probability 1/2.

    Args:
        rng: PRNG key.
        images: `(B, H, W, C)`.

    Returns:
        The batch, same shape and dtype.
    """
    flip = jax.random.bernoulli(rng, 0.5, (images.shape[0], 1, 1, 1))
    return jnp.where(flip, images[:, :, ::-1, :], images)


def random_crop(rng: jax.Array, images: jax.Array, padding: int) -> jax.Array:
    """Pads each image by `padding` zeros per side and crops the original size at a random offset.

    Args:
        rng: PRNG key.
        images: `(B, H, W, C)`.
        padding: Pixels of zero padding per side; 0 returns the batch unchanged.

    Returns:
        The batch, same shape and dtype.
    """
    if padding == 0:
        return images
    batch, height, width, channels = images.shape
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    offsets = jax.random.randint(rng, (batch, 2), 0, 2 * padding + 1)

    def crop(image: jax.Array, offset: jax.Array) -> jax.Array:
        return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (height, width, channels))

    return jax.vmap(crop)(padded, offsets)


def canvas_crop(rng: jax.Array, canvases: jax.Array, extents: jax.Array, crop: int) -> jax.Array:
    """torchvision's `RandomCrop(crop)` of each canvas's image, returned in its own orientation.

    Args:
        rng: PRNG key.
        canvases: `(B, R, L, C)` resized images turned landscape (`resize_crop.canvas_image`).
        extents: int32 `(B, 2)`: each image's long side on the canvas, and 1 where it was
            transposed.
        crop: Output height and width (at most R and every long side).

    Returns:
        `(B, crop, crop, C)`: every offset with the image equally likely, as the official crop.
    """
    batch, rows, _, channels = canvases.shape
    top_rng, left_rng = jax.random.split(rng)
    top = jax.random.randint(top_rng, (batch,), 0, rows - crop + 1)
    left = jax.random.randint(left_rng, (batch,), 0, extents[:, 0] - crop + 1)

    def one(canvas: jax.Array, y: jax.Array, x: jax.Array, transposed: jax.Array) -> jax.Array:
        window = jax.lax.dynamic_slice(canvas, (y, x, 0), (crop, crop, channels))
        return jnp.where(transposed > 0, window.transpose(1, 0, 2), window)

    return jax.vmap(one)(canvases, top, left, extents[:, 1])


def augment(
    rng: jax.Array,
    images: jax.Array,
    *,
    flip: bool = False,
    crop_padding: int = 0,
    extents: jax.Array | None = None,
    crop_size: int = 0,
) -> jax.Array:
    """The enabled augmentations, in the order crop then flip.

    Args:
        rng: PRNG key.
        images: uint8 `(B, H, W, C)`, or canvases with `extents`.
        flip: Random horizontal flips.
        crop_padding: Random-crop padding in pixels; 0 disables cropping.
        extents: The canvases' extents (`canvas_crop`); None: `images` are model-sized.
        crop_size: Size of the canvas crop (with `extents`).

    Returns:
        The batch; model-sized `(B, crop_size, crop_size, C)` from canvases.
    """
    if crop_padding < 0:
        raise UserError(f"crop_padding must be >= 0, got {crop_padding}")
    crop_rng, flip_rng = jax.random.split(rng)
    if extents is not None:
        images = canvas_crop(crop_rng, images, extents, crop_size)
    images = random_crop(crop_rng, images, crop_padding)
    return random_flip(flip_rng, images) if flip else images


def preprocess_batch(
    images: jax.Array,
    *,
    normalization: str = "inception",
    rng: jax.Array | None = None,
    flip: bool = False,
    crop_padding: int = 0,
    extents: jax.Array | None = None,
    crop_size: int = 0,
) -> jax.Array:
    """Augments (when an `rng` is given and an augmentation is on) and normalises a uint8 batch.

    Args:
        images: uint8 `(B, H, W, 3)`, or training canvases with `extents`.
        normalization: `inception` or `imagenet`.
        rng: PRNG key for augmentation; None (evaluation) never augments.
        flip: Random horizontal flips.
        crop_padding: Random-crop padding in pixels.
        extents: Canvas extents (`canvas_crop`): the batch holds canvases, cropped to `crop_size`.
        crop_size: The canvas crop's size.

    Returns:
        float32 `(B, H, W, 3)` model inputs.
    """
    if extents is not None and rng is None:
        raise ValueError("canvases are cropped at random: pass an rng")
    if rng is not None and (flip or crop_padding or extents is not None):
        images = augment(
            rng,
            images,
            flip=flip,
            crop_padding=crop_padding,
            extents=extents,
            crop_size=crop_size,
        )
    return normalize(images, normalization)


# Inputs meant to be in [0, 1] may overshoot a little after bicubic resizing; [-1, 1] or 0..255
# inputs lie far outside this band.
_RANGE_SLACK = 0.1


def check_images(images: Any, *, unit_range: bool = True) -> None:
    """Raises `UserError` unless `images` are NHWC RGB, uint8 or float ([0, 1] if `unit_range`)."""
    shape = tuple(np.shape(images))
    if len(shape) != 4 or shape[-1] != 3:
        hint = " (NCHW? transpose to NHWC)" if len(shape) == 4 and shape[1] == 3 else ""
        raise UserError(f"images must be NHWC with 3 channels; got shape {shape}{hint}")
    if not unit_range or images.dtype == np.uint8 or not shape[0]:
        return
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise UserError(f"images must be uint8 or float; got {images.dtype}")
    lo, hi = float(images.min()), float(images.max())
    if lo < -_RANGE_SLACK:
        raise UserError(
            f"float images must be in [0, 1] but reach {lo:.3g}; if they are in [-1, 1], pass "
            "(images + 1) / 2"
        )
    if hi > 1 + _RANGE_SLACK:
        raise UserError(
            f"float images must be in [0, 1] but reach {hi:.3g}; divide 0..255 values by 255 or "
            "pass uint8"
        )

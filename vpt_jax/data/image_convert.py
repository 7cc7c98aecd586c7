"""Host-side image conversion: any decoded image to a uint8 RGB square at the model resolution.

This is the part of the VPT protocol's preprocessing that changes image shapes, so it runs on the
host (in tf.data for TFDS, eagerly for image folders) before batching: grayscale to 3 channels,
then a bilinear resize to `image_size x image_size` without cropping or keeping the aspect ratio
(`tf.image.resize`, as the VPT code does). The resized values are rounded back to uint8 so the small
splits can live on the accelerator as uint8; normalisation and augmentation follow there
(`vpt_jax.data.preprocess`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from vpt_jax.data.host_tf import tf


def to_model_image(image: Any, image_size: int, binary: bool = False) -> Any:
    """Converts one decoded image to uint8 `(image_size, image_size, 3)`.

    Args:
        image: A uint8 tensor `(H, W, C)` with C 1 (grayscale), 3, or 4 (alpha is dropped).
        image_size: Output height and width.
        binary: The image holds 0/1 values (dsprites); they become 0/255 first.

    Returns:
        A uint8 tensor `(image_size, image_size, 3)`.
    """
    image = tf.convert_to_tensor(image)
    if binary:
        image = tf.cast(image > 0, tf.uint8) * 255
    channels = image.shape[-1]
    if channels == 1:
        image = tf.tile(image, [1, 1, 3])
    elif channels is None:  # a feature declared without a channel count: decide per image
        image = tf.cond(
            tf.shape(image)[-1] == 1, lambda: tf.tile(image, [1, 1, 3]), lambda: image[:, :, :3]
        )
        image = tf.ensure_shape(image, [None, None, 3])
    elif channels == 4:
        image = image[:, :, :3]  # drop alpha
    height, width = image.shape[0], image.shape[1]
    if height == image_size and width == image_size:
        return tf.cast(image, tf.uint8)
    resized = tf.image.resize(image, (image_size, image_size), method="bilinear", antialias=False)
    return tf.cast(tf.clip_by_value(tf.round(resized), 0.0, 255.0), tf.uint8)


def to_model_image_np(image: np.ndarray, image_size: int) -> np.ndarray:
    """`to_model_image` for a numpy image `(H, W)` or `(H, W, 1|3)`.

    Args:
        image: uint8 pixels.
        image_size: Output height and width.

    Returns:
        uint8 `(image_size, image_size, 3)`.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    return to_model_image(tf.constant(image, tf.uint8), image_size).numpy()

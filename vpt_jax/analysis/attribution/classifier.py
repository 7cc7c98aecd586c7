"""The classifier an attribution explains: its inputs, its predictions, the classes to explain.

Attribution works in model space: `model_inputs` normalises pixels as the model was trained, and
`predict` classifies pixels batch by batch. Integrated Gradients and GradCAM both differentiate
one logit per image, the target's: the class given, or the model's own prediction when none is
given (`resolve_targets`).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.data.preprocess import normalize
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer

Array = jax.Array


def check_inputs(model: VisionTransformer, images: Any) -> Array:
    """The images as float32 model inputs, or a `UserError` for a model or images that do not fit.

    Args:
      model: must be a `VisionTransformer` classifier (`num_classes` set).
      images: `(B, H, W, C)` normalised float model inputs.
    """
    if not isinstance(model, VisionTransformer):
        raise UserError(
            f"attribution supports ViT classifiers (families vit, mae, moco_v3); got a "
            f"{type(model).__name__}"
        )
    if not model.num_classes:
        raise UserError("attribution needs a classifier: a VisionTransformer with num_classes set")
    if np.ndim(images) != 4:
        raise UserError(f"images must be NHWC (B, H, W, C); got shape {np.shape(images)}")
    if not jnp.issubdtype(jnp.asarray(images).dtype, jnp.floating):
        raise UserError(
            "images must be normalised float model inputs; convert uint8 pixels with "
            "vpt_jax.data.normalize(images, normalization)"
        )
    return jnp.asarray(images, jnp.float32)


def model_logits(model: VisionTransformer, params: Any, images: Array) -> Array:
    """The model's `(B, num_classes)` logits, deterministic (no dropout)."""
    return model.apply({"params": params}, images, train=False)[0]


@functools.partial(jax.jit, static_argnames="model")
def predicted_classes(model: VisionTransformer, params: Any, images: Array) -> Array:
    """The predicted class of each model input, int32 `(B,)`."""
    return jnp.argmax(model_logits(model, params, images), -1).astype(jnp.int32)


def model_inputs(pixels: np.ndarray, normalization: str) -> Array:
    """uint8 pixels, or float pixels in [0, 1], to normalised float32 model inputs."""
    scale = 1.0 if pixels.dtype == np.uint8 else 255.0
    return normalize(jnp.asarray(pixels, jnp.float32) * scale, normalization)


def predict(
    model: VisionTransformer,
    params: Any,
    pixels: Any,
    *,
    normalization: str = "inception",
    batch_size: int = 64,
) -> np.ndarray:
    """The predicted class of each image, normalised batch by batch (one compiled shape).

    Args:
      model: a classifier.
      params: its parameters.
      pixels: `(N, H, W, 3)` uint8, or float in [0, 1].
      normalization: `inception` or `imagenet`.
      batch_size: images per forward pass; every batch is padded to it.

    Returns:
      int32 `(N,)` predictions.
    """
    pixels = np.asarray(pixels)
    predictions = [np.zeros((0,), np.int32)]
    for start in range(0, len(pixels), batch_size):
        batch = pixels[start : start + batch_size]
        padded = np.pad(batch, ((0, batch_size - len(batch)),) + ((0, 0),) * 3)
        inputs = model_inputs(padded, normalization)
        predictions.append(np.asarray(predicted_classes(model, params, inputs))[: len(batch)])
    return np.concatenate(predictions)


def resolve_targets(model: VisionTransformer, params: Any, images: Array, targets: Any) -> Array:
    """The classes to explain: `targets` (an int or one per image) checked, or the predictions.

    Returns:
      int32 `(B,)`.
    """
    batch = images.shape[0]
    if targets is None:
        return predicted_classes(model, params, images)
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer) or targets.shape not in ((), (batch,)):
        raise UserError(f"targets must be an int or {batch} ints; got shape {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= model.num_classes):
        raise UserError(f"targets must lie in [0, {model.num_classes}); got {targets.tolist()}")
    return jnp.broadcast_to(jnp.asarray(targets, jnp.int32), (batch,))


def target_logits(logits: Array, targets: Array) -> Array:
    """Each row's logit of its target class: `logits[..., targets]` row by row."""
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]

"""Feature extractors for Fréchet distances, and batched extraction with a fixed batch shape.

A feature extractor is any callable `features_fn(images) -> (B, D)`. The builders here return jitted
functions that take the weights as arguments (not as baked-in constants):

* `inception_features_fn(weights)`: pool3 features of the FID Inception-v3 (2048-d), as pytorch-fid.
* `vit_features_fn(model, params)`: a vpt_jax ViT's own `pre_logits` features (no extra weights).

Both take NHWC uint8 images or float images in [0, 1], of any size, so one data pipeline feeds both.
`iterate_features` re-batches a stream of image batches to one fixed batch size, padding only the
last batch (and dropping its padding from the output): an extractor compiles once per image shape.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.analysis.fid import inception, inception_weights
from vpt_jax.data.preprocess import check_images
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer

FeaturesFn = Callable[[Any], Any]


def inception_features_fn(
    weights: str | os.PathLike | Mapping[str, Any], model: inception.InceptionV3 | None = None
) -> FeaturesFn:
    """The FID feature extractor: pool3 features of the 2015-12-05 Inception-v3.

    Args:
      weights: an `.npz` from `inception_weights.convert_pth_to_npz` (or pytorch-fid's `.pth`
        when torch is installed), or variables from `inception_weights.load_variables`.
      model: the network; the default resizes to 299x299 and scales to [-1, 1] as pytorch-fid.

    Returns:
      `features_fn(images) -> (B, 2048)` float32, for NHWC uint8 or [0, 1] float images of any size.
    """
    model = model or inception.InceptionV3()
    variables = (
        weights if isinstance(weights, Mapping) else inception_weights.load_variables(weights)
    )
    variables = jax.device_put(variables)
    apply = jax.jit(model.apply)
    unit_range = model.normalize_input

    def features_fn(images: Any) -> jax.Array:
        check_images(images, unit_range=unit_range)
        return apply(variables, images)

    return features_fn


def vit_inputs(images: Any, image_size: int) -> jax.Array:
    """uint8 or [0, 1] NHWC images -> the ViT checkpoints' input: `image_size` square, [-1, 1]."""
    x = jnp.asarray(images).astype(jnp.float32)
    if images.dtype == np.uint8:
        x = x / 255.0
    if x.shape[1:3] != (image_size, image_size):
        shape = (x.shape[0], image_size, image_size, x.shape[3])
        x = jax.image.resize(x, shape, method="bilinear", antialias=False)
    return 2.0 * x - 1.0


def vit_features_fn(
    model: VisionTransformer,
    params: Mapping[str, Any],
    *,
    feature: str = "pre_logits",
    raw_images: bool = True,
) -> FeaturesFn:
    """A ViT's own features as an extractor, for a Fréchet distance in the ViT's feature space.

    Args:
      model: a `vpt_jax.models.vit.VisionTransformer` (or a model with the same `(x, out)` output).
      params: its parameters.
      feature: the entry of the model's `out` dict to return; it must be `(B, D)`.
      raw_images: True: inputs are uint8 or [0, 1] images of any size, resized (bilinear) to the
        model's image size and scaled to [-1, 1]; False: inputs are already what the model expects.

    Returns:
      `features_fn(images) -> (B, D)` float32.
    """
    size = model.config.image_size

    @jax.jit
    def apply(params: Mapping[str, Any], images: jax.Array) -> jax.Array:
        x = vit_inputs(images, size) if raw_images else images
        _, out = model.apply({"params": params}, x)
        if feature not in out:
            raise UserError(f"the model has no output {feature!r}; choose one of {sorted(out)}")
        return out[feature].astype(jnp.float32)

    params = jax.device_put(params)

    def features_fn(images: Any) -> jax.Array:
        check_images(images, unit_range=raw_images)
        return apply(params, images)

    return features_fn


def _images_of(batch: Any, image_key: str) -> np.ndarray:
    """The valid images of a batch: an array, or a mapping with `image_key` and optional `mask`."""
    if not isinstance(batch, Mapping):
        return np.asarray(batch)
    if image_key not in batch:
        raise UserError(f"batch has no {image_key!r} entry (keys: {sorted(batch)}); set image_key")
    images = np.asarray(batch[image_key])
    if "mask" in batch:  # padded batches from an evaluation pipeline: drop the padding
        images = images[np.asarray(batch["mask"]).astype(bool)]
    return images


def fixed_size_batches(
    batches: Iterable[Any], batch_size: int, *, image_key: str = "image"
) -> Iterator[tuple[np.ndarray, int]]:
    """Re-batches image batches of any sizes to `(images, num_valid)` of exactly `batch_size` rows.

    Args:
      batches: arrays `(b, H, W, C)`, or mappings with `image_key` (and an optional boolean `mask`
        whose False rows are padding), as `tfds.as_numpy` yields them.
      batch_size: rows per output batch; the last one is padded with zeros.
      image_key: the images' key in mapping batches.

    Yields:
      `(images, num_valid)`: only the first `num_valid` rows are real images.
    """
    if batch_size < 1:
        raise UserError(f"batch_size must be positive; got {batch_size}")
    pending: list[np.ndarray] = []
    count = 0
    kind: tuple | None = None
    for batch in batches:
        images = _images_of(batch, image_key)
        if kind is None:
            kind = (images.shape[1:], images.dtype)
        elif (images.shape[1:], images.dtype) != kind:
            raise UserError(
                f"batches mix image shapes/dtypes {kind} and {(images.shape[1:], images.dtype)}; "
                "resize every image to one size first"
            )
        pending.append(images)
        count += len(images)
        while count >= batch_size:
            stacked = np.concatenate(pending)
            yield stacked[:batch_size], batch_size
            pending, count = [stacked[batch_size:]], count - batch_size
    if count:
        rest = np.concatenate(pending)
        padding = np.zeros((batch_size - count, *rest.shape[1:]), rest.dtype)
        yield np.concatenate([rest, padding]), count


def iterate_features(
    features_fn: FeaturesFn,
    batches: Iterable[Any],
    *,
    batch_size: int = 50,
    image_key: str = "image",
) -> Iterator[np.ndarray]:
    """Runs `features_fn` over a stream of image batches; yields host `(n, D)` feature arrays.

    Every call of `features_fn` sees exactly `batch_size` images (see `fixed_size_batches`), so a
    jitted extractor compiles once. The next batch is dispatched before the previous result is
    fetched, so the host work overlaps the device work.
    """
    previous = None
    for images, valid in fixed_size_batches(batches, batch_size, image_key=image_key):
        current = (features_fn(images), valid)
        if previous is not None:
            yield _fetch(*previous)
        previous = current
    if previous is not None:
        yield _fetch(*previous)


def _fetch(features: Any, valid: int) -> np.ndarray:
    features = np.asarray(jax.device_get(features))
    if features.ndim != 2:
        raise UserError(
            f"features_fn must return (batch, dim) features; got shape {features.shape}"
        )
    return features[:valid]


def extract_features(features_fn: FeaturesFn, images: Any, *, batch_size: int = 50) -> np.ndarray:
    """Features of an array of images `(N, H, W, C)`, computed `batch_size` at a time.

    Returns:
      `(N, D)` features (float32 from the builders in this module).
    """
    chunks = list(iterate_features(features_fn, [np.asarray(images)], batch_size=batch_size))
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)

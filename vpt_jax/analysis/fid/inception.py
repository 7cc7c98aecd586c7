"""Inception-v3 as the FID network: the TensorFlow 2015-12-05 graph as pytorch-fid ports it.

This is torchvision's Inception-v3 with pytorch-fid's patches: the average pools of Mixed_5b..7b
exclude padding from the mean (TensorFlow's behaviour), Mixed_7c pools its pool branch with max
instead of average, BatchNorm uses eps 1e-3 in inference mode, and the output is the 2048-d
global average of Mixed_7c ("pool3"). The classifier is not part of it.

Module and leaf names follow the torch state-dict names of pytorch-fid's weight file, so its
weights load 1:1 (`vpt_jax.analysis.fid.inception_weights` converts and loads them).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax import paths

Array = jax.Array

INPUT_SIZE = 299  # the side pytorch-fid resizes every image to
FEATURE_DIM = 2048  # width of the pool3 features


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps 1e-3, running statistics) and ReLU."""

    features: int
    kernel_size: tuple[int, int]
    strides: int = 1
    padding: tuple[int, int] = (0, 0)  # (height, width), symmetric as in torch
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x: Array) -> Array:
        ph, pw = self.padding
        x = nn.Conv(
            self.features,
            self.kernel_size,
            strides=(self.strides, self.strides),
            padding=((ph, ph), (pw, pw)),
            use_bias=False,
            precision=self.precision,
            name="conv",
        )(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x: Array) -> Array:
    # TensorFlow's average pool (and pytorch-fid's patch) leaves the padded zeros out of the mean.
    return nn.avg_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), (1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x: Array) -> Array:
    return nn.max_pool(x, (3, 3), (2, 2))


class _Block(nn.Module):
    """Base of the mixed blocks: `conv` builds a named `BasicConv2d` with the shared precision."""

    precision: Any = jax.lax.Precision.HIGHEST

    def conv(
        self,
        name: str,
        features: int,
        kernel: int | tuple[int, int],
        strides: int = 1,
        padding: int | tuple[int, int] = 0,
    ) -> BasicConv2d:
        kernel = (kernel, kernel) if isinstance(kernel, int) else kernel
        padding = (padding, padding) if isinstance(padding, int) else padding
        return BasicConv2d(features, kernel, strides, padding, self.precision, name=name)


class InceptionA(_Block):
    """Mixed_5b..5d (FIDInceptionA)."""

    pool_features: int = 32

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = self.conv("branch1x1", 64, 1)(x)
        b5 = self.conv("branch5x5_1", 48, 1)(x)
        b5 = self.conv("branch5x5_2", 64, 5, padding=2)(b5)
        b3 = self.conv("branch3x3dbl_1", 64, 1)(x)
        b3 = self.conv("branch3x3dbl_2", 96, 3, padding=1)(b3)
        b3 = self.conv("branch3x3dbl_3", 96, 3, padding=1)(b3)
        bp = self.conv("branch_pool", self.pool_features, 1)(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(_Block):
    """Mixed_6a: the first grid reduction."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = self.conv("branch3x3", 384, 3, strides=2)(x)
        bd = self.conv("branch3x3dbl_1", 64, 1)(x)
        bd = self.conv("branch3x3dbl_2", 96, 3, padding=1)(bd)
        bd = self.conv("branch3x3dbl_3", 96, 3, strides=2)(bd)
        return jnp.concatenate([b3, bd, _max_pool_down(x)], axis=-1)


class InceptionC(_Block):
    """Mixed_6b..6e (FIDInceptionC): factorised 7x7 convolutions."""

    channels_7x7: int = 128

    @nn.compact
    def __call__(self, x: Array) -> Array:
        c7 = self.channels_7x7
        b1 = self.conv("branch1x1", 192, 1)(x)
        b7 = self.conv("branch7x7_1", c7, 1)(x)
        b7 = self.conv("branch7x7_2", c7, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7_3", 192, (7, 1), padding=(3, 0))(b7)
        bd = self.conv("branch7x7dbl_1", c7, 1)(x)
        bd = self.conv("branch7x7dbl_2", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_3", c7, (1, 7), padding=(0, 3))(bd)
        bd = self.conv("branch7x7dbl_4", c7, (7, 1), padding=(3, 0))(bd)
        bd = self.conv("branch7x7dbl_5", 192, (1, 7), padding=(0, 3))(bd)
        bp = self.conv("branch_pool", 192, 1)(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(_Block):
    """Mixed_7a: the second grid reduction."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b3 = self.conv("branch3x3_1", 192, 1)(x)
        b3 = self.conv("branch3x3_2", 320, 3, strides=2)(b3)
        b7 = self.conv("branch7x7x3_1", 192, 1)(x)
        b7 = self.conv("branch7x7x3_2", 192, (1, 7), padding=(0, 3))(b7)
        b7 = self.conv("branch7x7x3_3", 192, (7, 1), padding=(3, 0))(b7)
        b7 = self.conv("branch7x7x3_4", 192, 3, strides=2)(b7)
        return jnp.concatenate([b3, b7, _max_pool_down(x)], axis=-1)


class InceptionE(_Block):
    """Mixed_7b (FIDInceptionE_1, average pool) and Mixed_7c (FIDInceptionE_2, max pool)."""

    max_pool: bool = False  # the 2015 graph max-pools in Mixed_7c; keep it for comparable FIDs

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b1 = self.conv("branch1x1", 320, 1)(x)
        b3 = self.conv("branch3x3_1", 384, 1)(x)
        b3 = jnp.concatenate(
            [
                self.conv("branch3x3_2a", 384, (1, 3), padding=(0, 1))(b3),
                self.conv("branch3x3_2b", 384, (3, 1), padding=(1, 0))(b3),
            ],
            axis=-1,
        )
        bd = self.conv("branch3x3dbl_1", 448, 1)(x)
        bd = self.conv("branch3x3dbl_2", 384, 3, padding=1)(bd)
        bd = jnp.concatenate(
            [
                self.conv("branch3x3dbl_3a", 384, (1, 3), padding=(0, 1))(bd),
                self.conv("branch3x3dbl_3b", 384, (3, 1), padding=(1, 0))(bd),
            ],
            axis=-1,
        )
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
        bp = self.conv("branch_pool", 192, 1)(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images: Array, *, resize: bool = True, normalize: bool = True) -> Array:
    """Brings images to the network's input as pytorch-fid does.

    Args:
      images: NHWC, uint8 in 0..255 or float in [0, 1], any height and width.
      resize: resize to 299x299, bilinear without antialiasing, as torch's
        `F.interpolate(mode='bilinear', align_corners=False)` (`jax.image.resize` would antialias
        when downsampling by default).
      normalize: scale from [0, 1] to [-1, 1].

    Returns:
      float32 NHWC images.
    """
    x = images.astype(jnp.float32)
    if images.dtype == jnp.uint8:
        x = x / 255.0
    if resize and x.shape[1:3] != (INPUT_SIZE, INPUT_SIZE):
        shape = (x.shape[0], INPUT_SIZE, INPUT_SIZE, x.shape[3])
        x = jax.image.resize(x, shape, method="bilinear", antialias=False)
    if normalize:
        x = 2.0 * x - 1.0
    return x


class InceptionV3(nn.Module):
    """The FID Inception-v3: NHWC images in, `(B, 2048)` pool3 features out.

    With the defaults it takes images as pytorch-fid's `InceptionV3()` does: uint8 or [0, 1] floats
    of any size, resized to 299x299 and scaled to [-1, 1] inside the network.
    """

    resize_input: bool = True  # bilinear resize to 299x299 (pytorch-fid's `resize_input`)
    normalize_input: bool = True  # [0, 1] -> [-1, 1] (pytorch-fid's `normalize_input`)
    # GPUs would run float32 convolutions in TF32 by default, which moves features by ~1e-3.
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, images: Array) -> Array:
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"images must be NHWC with 3 channels; got shape {images.shape}")
        x = preprocess(images, resize=self.resize_input, normalize=self.normalize_input)
        p = self.precision
        x = BasicConv2d(32, (3, 3), 2, precision=p, name="Conv2d_1a_3x3")(x)
        x = BasicConv2d(32, (3, 3), precision=p, name="Conv2d_2a_3x3")(x)
        x = BasicConv2d(64, (3, 3), padding=(1, 1), precision=p, name="Conv2d_2b_3x3")(x)
        x = _max_pool_down(x)
        x = BasicConv2d(80, (1, 1), precision=p, name="Conv2d_3b_1x1")(x)
        x = BasicConv2d(192, (3, 3), precision=p, name="Conv2d_4a_3x3")(x)
        x = _max_pool_down(x)
        x = InceptionA(p, pool_features=32, name="Mixed_5b")(x)
        x = InceptionA(p, pool_features=64, name="Mixed_5c")(x)
        x = InceptionA(p, pool_features=64, name="Mixed_5d")(x)
        x = InceptionB(p, name="Mixed_6a")(x)
        for name, c7 in (
            ("Mixed_6b", 128),
            ("Mixed_6c", 160),
            ("Mixed_6d", 160),
            ("Mixed_6e", 192),
        ):
            x = InceptionC(p, channels_7x7=c7, name=name)(x)
        x = InceptionD(p, name="Mixed_7a")(x)
        x = InceptionE(p, name="Mixed_7b")(x)
        x = InceptionE(p, max_pool=True, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def variable_shapes(model: InceptionV3 | None = None) -> dict[str, tuple[int, ...]]:
    """Flat `{"params/...": shape, "batch_stats/...": shape}` of the network (nothing allocated)."""
    model = model or InceptionV3()
    images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
    tree = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)
    return {k: tuple(v.shape) for k, v in paths.flatten(tree).items()}

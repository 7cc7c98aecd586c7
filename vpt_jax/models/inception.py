"""Inception-v3 as the FID network: the TensorFlow 2015-12-05 graph as pytorch-fid ports it.

This is torchvision's Inception-v3 with pytorch-fid's patches: the average pools of Mixed_5b..7b
exclude padding from the mean (TensorFlow's behaviour), Mixed_7c pools its pool branch with max
instead of average, BatchNorm uses eps 1e-3 in inference mode, and the output is the 2048-d
global average of Mixed_7c ("pool3"). The classifier is not part of it.

Module and leaf names map 1:1 to the torch state-dict names of pytorch-fid's weight file
`pt_inception-2015-12-05-6726825d.pth`: `Mixed_5b.branch1x1.conv.weight` is
`params/Mixed_5b/branch1x1/conv/kernel` (OIHW -> HWIO), `.bn.weight`/`.bn.bias` are
`bn/scale`/`bn/bias`, `.bn.running_mean`/`.bn.running_var` are `batch_stats/.../bn/mean`/`var`.

Convert the weight file once (needs torch), then load the `.npz` anywhere without torch:

    python -m vpt_jax.models.inception pt_inception-2015-12-05-6726825d.pth inception_fid.npz
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import CheckpointError, atomic_write_npz, read_npz

log = logging.getLogger(__name__)
Array = jax.Array

INPUT_SIZE = 299  # the side pytorch-fid resizes every image to
FEATURE_DIM = 2048  # width of the pool3 features
# Torch state-dict entries the FID network does not use: the 1008-way classifier and BN counters.
_IGNORED_TORCH_KEYS = ("fc.weight", "fc.bias")
_IGNORED_TORCH_SUFFIX = ".num_batches_tracked"
# Flax leaf name -> torch leaf name (the module path is shared).
_LEAF_TO_TORCH = {
    "conv/kernel": "conv.weight",
    "bn/scale": "bn.weight",
    "bn/bias": "bn.bias",
    "bn/mean": "bn.running_mean",
    "bn/var": "bn.running_var",
}


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


@functools.cache
def _default_shapes() -> dict[str, tuple[int, ...]]:
    # Tracing the network takes about a second; every loader needs the same shapes.
    return variable_shapes()


def torch_name(flax_name: str) -> str:
    """`params/Mixed_5b/branch1x1/conv/kernel` -> `Mixed_5b.branch1x1.conv.weight`."""
    _, *modules, layer, leaf = flax_name.split("/")
    return ".".join([*modules, _LEAF_TO_TORCH[f"{layer}/{leaf}"]])


def _problems(missing: list[str], unexpected: list[str], misshaped: list[str]) -> str:
    """`missing 2 (a, b); mis-shaped 1 (c (3,) vs (4,))`, at most four names per kind."""
    parts = []
    for what, names in (
        ("missing", missing),
        ("unexpected", unexpected),
        ("mis-shaped", misshaped),
    ):
        if names:
            more = ", ..." if len(names) > 4 else ""
            parts.append(f"{what} {len(names)} ({', '.join(names[:4])}{more})")
    return "; ".join(parts)


def variables_from_state_dict(state_dict: Mapping[str, Any], *, source: str = "state dict") -> dict:
    """Converts pytorch-fid's Inception state dict to Flax variables.

    Args:
      state_dict: `{torch name: tensor or array}`, as `torch.load` returns for the weight file.
      source: what to call the input in error messages (e.g. its path).

    Returns:
      `{"params": ..., "batch_stats": ...}` with float32 numpy leaves.

    Raises:
      CheckpointError: missing, unexpected or mis-shaped entries (named in the message).
    """
    if not isinstance(state_dict, Mapping):
        raise CheckpointError(
            f"{source} holds a {type(state_dict).__name__}, not a state dict; save the weights "
            "with torch.save(model.state_dict(), path)"
        )
    shapes = _default_shapes()
    expected = {torch_name(k): k for k in shapes}
    ignored = lambda k: k in _IGNORED_TORCH_KEYS or k.endswith(_IGNORED_TORCH_SUFFIX)
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected and not ignored(k)]
    flat, misshaped = {}, []
    for torch_key, flax_key in expected.items():
        if torch_key not in state_dict:
            continue
        value = state_dict[torch_key]
        value = value.detach().cpu().numpy() if hasattr(value, "detach") else np.asarray(value)
        if flax_key.endswith("/kernel") and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        if value.shape != shapes[flax_key]:
            misshaped.append(f"{torch_key} {tuple(value.shape)} vs {shapes[flax_key]}")
        flat[flax_key] = value.astype(np.float32)
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{source} is not pytorch-fid's FID Inception state dict: "
            f"{_problems(missing, unexpected, misshaped)}; use "
            "pt_inception-2015-12-05-6726825d.pth (torchvision's ImageNet Inception differs)"
        )
    return paths.unflatten(flat)


def read_torch_state_dict(path: str | os.PathLike) -> Mapping[str, Any]:
    """Reads a torch state dict with `weights_only=True`, so the file cannot run code."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"Inception weight file not found: {path}; check the path")
    try:
        import torch  # optional (dev extra): only reading the .pth needs it
    except ImportError:
        raise UserError(
            f"reading {path} needs torch (pip install torch); or convert it once where torch is "
            "installed: python -m vpt_jax.models.inception SRC.pth DST.npz, and load the .npz"
        ) from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ... by cause
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a loadable torch state dict ({reason[:200]}); expected the "
            "tensors-only file pt_inception-2015-12-05-6726825d.pth"
        ) from None


def convert_pth_to_npz(src: str | os.PathLike, dst: str | os.PathLike) -> None:
    """Converts pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` to an `.npz` (needs torch).

    Args:
      src: the torch weight file.
      dst: the `.npz` to write (atomically); `load_variables` reads it without torch.
    """
    variables = variables_from_state_dict(read_torch_state_dict(src), source=os.fspath(src))
    atomic_write_npz(dst, paths.flatten(variables))
    log.info("converted %s -> %s", os.fspath(src), os.fspath(dst))


def load_variables(path: str | os.PathLike) -> dict:
    """Loads FID Inception weights: a converted `.npz`, or the `.pth` itself (needs torch).

    Args:
      path: the `.npz` from `convert_pth_to_npz`, or pytorch-fid's `.pth` file.

    Returns:
      `{"params": ..., "batch_stats": ...}` for `InceptionV3().apply`.

    Raises:
      CheckpointError: a missing or unreadable file, or one with missing/extra/mis-shaped entries.
    """
    path = os.fspath(path)
    if path.endswith((".pth", ".pt")):
        return variables_from_state_dict(read_torch_state_dict(path), source=path)
    flat = read_npz(path)
    shapes = _default_shapes()
    missing = [k for k in shapes if k not in flat]
    unexpected = [k for k in flat if k not in shapes]
    misshaped = [
        f"{k} {flat[k].shape} vs {shapes[k]}"
        for k in shapes
        if k in flat and flat[k].shape != shapes[k]
    ]
    if missing or unexpected or misshaped:
        raise CheckpointError(
            f"{path} does not hold FID Inception weights: "
            f"{_problems(missing, unexpected, misshaped)}; convert the weight file with "
            "python -m vpt_jax.models.inception SRC.pth DST.npz"
        )
    return paths.unflatten({k: flat[k].astype(np.float32) for k in shapes})


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: convert the pytorch-fid weight file to `.npz`."""
    parser = argparse.ArgumentParser(
        prog="python -m vpt_jax.models.inception",
        description="Convert pytorch-fid's pt_inception-2015-12-05-6726825d.pth to an .npz.",
    )
    parser.add_argument("src", help="the .pth weight file")
    parser.add_argument("dst", help="the .npz file to write")
    args = parser.parse_args(argv)
    try:
        convert_pth_to_npz(args.src, args.dst)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"wrote {args.dst}")


if __name__ == "__main__":
    main()

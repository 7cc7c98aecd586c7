"""The FID Inception's weights: pytorch-fid's torch file converted to `.npz`, and loaded.

Leaf names map 1:1 to the torch state-dict names of pytorch-fid's weight file
`pt_inception-2015-12-05-6726825d.pth`: `Mixed_5b.branch1x1.conv.weight` is
`params/Mixed_5b/branch1x1/conv/kernel` (OIHW -> HWIO), `.bn.weight`/`.bn.bias` are
`bn/scale`/`bn/bias`, `.bn.running_mean`/`.bn.running_var` are `batch_stats/.../bn/mean`/`var`.
The torch file is read with `weights_only=True`, so it cannot run code.

Convert the weight file once (needs torch), then load the `.npz` anywhere without torch:

    python -m vpt_jax.analysis.fid.inception_weights pt_inception-2015-12-05-6726825d.pth \\
        inception_fid.npz
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from absl import flags

from vpt_jax import cli, paths
from vpt_jax.analysis.fid import inception
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import CheckpointError, atomic_write_npz, read_npz

log = logging.getLogger(__name__)
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


@functools.cache
def _default_shapes() -> dict[str, tuple[int, ...]]:
    # Tracing the network takes about a second; every loader needs the same shapes.
    return inception.variable_shapes()


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
            "installed: python -m vpt_jax.analysis.fid.inception_weights SRC.pth DST.npz, and load the .npz"
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
            "python -m vpt_jax.analysis.fid.inception_weights SRC.pth DST.npz"
        )
    return paths.unflatten({k: flat[k].astype(np.float32) for k in shapes})


def _define(values: flags.FlagValues) -> None:
    """The converter takes no flags: its two arguments are the source and destination files."""


def _convert(values: flags.FlagValues, files: list[str]) -> None:
    if len(files) != 2:
        raise UserError(f"expected the arguments SRC.pth DST.npz; got {len(files)}: {files}")
    src, dst = files
    convert_pth_to_npz(src, dst)
    print(f"wrote {dst}")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: convert the pytorch-fid weight file to `.npz`.

    Args:
      argv: `[SRC.pth, DST.npz]` (no program name); None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _convert, argv)


if __name__ == "__main__":
    main()

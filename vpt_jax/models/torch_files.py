"""Reading PyTorch-world weight files as flat `{name: numpy array}` state dicts, never running code.

Two formats, told apart by their bytes (not their names):

* `safetensors` (timm / Hugging Face `model.safetensors`): read with the `safetensors` package into
  numpy; no torch needed, nothing is unpickled.
* `torch`: a `torch.save` file (`.pth`, `.pth.tar`, `.bin`): read only through
  `torch.load(weights_only=True)`, which refuses anything but tensors and plain containers. It needs
  torch; without it the error names the one-time converter (`python -m vpt_jax.models.convert`,
  run where torch is installed) that writes a `.safetensors` file running never needs torch for.

Wrapped state dicts are unwrapped: the tensors sit under `model` (MAE, Swin), `state_dict` (MoCo v3)
or at the top level (timm). Prefixes such as `module.` are the callers' business (they know which
prefixes their family's files carry).
"""

from __future__ import annotations

import os
import struct
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from vpt_jax.models.npz_layouts import CheckpointError

FORMATS = ("npz", "safetensors", "torch")
WRAPPERS = ("model", "state_dict", "module")  # keys a checkpoint dict may keep its tensors under
CONVERT = "python -m vpt_jax.models.convert"


class WeightFileError(CheckpointError):
    """A weight file that cannot be read as a state dict."""


def sniff_format(path: str | os.PathLike) -> str:
    """The format of a weight file from its first bytes: one of `FORMATS`.

    `.npz` and torch's zip format are both zip archives: an `.npz` holds only `.npy` members, a
    torch file a `data.pkl`. A pre-1.6 torch file is a bare pickle (`0x80` protocol byte).
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise WeightFileError(f"checkpoint file not found: {path}; check the path")
    if os.path.isdir(path):
        raise WeightFileError(f"checkpoint path is a directory, not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(16)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if any(n.endswith("data.pkl") for n in names):
            return "torch"
        return "npz"
    if head.startswith(b"PK"):  # a zip archive that does not open: let the .npz reader say why
        return "npz"
    if head.startswith(b"\x80"):
        return "torch"
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len < os.path.getsize(path) and head[8:9] == b"{":
            return "safetensors"
    raise WeightFileError(
        f"{path} is neither an .npz, a .safetensors nor a PyTorch checkpoint (it starts with "
        f"{head[:8]!r}); the file may be truncated: download it again"
    )


def read_state_dict(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], str]:
    """Reads a `safetensors` or `torch` weight file. Returns `(flat state dict, format)`.

    Tensors become numpy arrays of their dtype (bfloat16 and float16 become float32).
    """
    path = os.fspath(path)
    fmt = sniff_format(path)
    if fmt == "safetensors":
        return _read_safetensors(path), fmt
    if fmt == "torch":
        return _read_torch(path), fmt
    raise WeightFileError(f"{path} is an .npz archive, not a PyTorch-world weight file")


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError, safe_open

    out = {}
    try:
        with safe_open(path, framework="numpy") as f:
            for key in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                out[key] = _float32_if_half(f.get_tensor(key))
    except (SafetensorError, OSError, TypeError, ValueError) as e:
        message = str(e)
        hint = (
            "it holds bfloat16 tensors, which numpy cannot read: convert it once with "
            f"`{CONVERT} {path} OUT.safetensors` where torch is installed"
            if "bf16" in message.lower() or "bfloat16" in message.lower()
            else "the file may be truncated: download it again"
        )
        raise WeightFileError(
            f"{path} is not a readable .safetensors file ({message}); {hint}"
        ) from None
    return out


def _float32_if_half(array: np.ndarray) -> np.ndarray:
    return array.astype(np.float32) if array.dtype == np.float16 else array


def _read_torch(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError:
        raise WeightFileError(
            f"{path} is a PyTorch checkpoint, and reading one needs torch, which is not installed; "
            f"convert it once where torch is installed (`pip install torch`, then `{CONVERT} "
            f"{path} OUT.safetensors`) and pass the .safetensors file"
        ) from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise WeightFileError(
            f"{path} could not be read with torch.load(weights_only=True) ({first}); vpt_jax reads "
            "only files of tensors (it never unpickles code): the file may be truncated or hold "
            "other objects"
        ) from None
    tensors = _unwrap(data, path)
    out = {}
    for key, value in tensors.items():
        if not isinstance(value, torch.Tensor):
            continue  # e.g. an epoch counter stored beside the weights
        if value.dtype in (torch.bfloat16, torch.float16):
            value = value.float()
        out[key] = value.detach().cpu().numpy()
    if not out:
        raise WeightFileError(f"{path} holds no tensors; it is not a model checkpoint")
    return out


def _unwrap(data: Any, path: str) -> Mapping[str, Any]:
    """The dict that holds the tensors: `data` itself or one of its `WRAPPERS` entries."""
    if not isinstance(data, Mapping):
        raise WeightFileError(
            f"{path} holds a {type(data).__name__}, not a state dict; save model.state_dict()"
        )
    for key in WRAPPERS:
        inner = data.get(key)
        if isinstance(inner, Mapping) and inner:
            return _unwrap(inner, path)
    return data


def write_safetensors(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """Writes arrays as a `.safetensors` file, atomically."""
    from safetensors.numpy import save

    from vpt_jax import atomic

    contiguous = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    atomic.write_bytes(path, save(contiguous))

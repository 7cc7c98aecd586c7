"""The google-research `.npz` ViT layouts, read into and written from vpt_jax's names.

* `original`: `imagenet21k/ViT-{B,L,H}_*.npz` and the augreg files. Pre-linen block names
  (`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`), position embedding at
  `Transformer/posembed_input/pos_embedding` covering the class token; in21k files add `pre_logits`.
* `linen`: the same with linen block names (`MultiHeadDotProductAttention_0`, `LayerNorm_1`, `MlpBlock_0`).
* `big_vision`: a `params/` prefix, linen block names, blocks either per layer or stacked
  (`Transformer/encoderblock/...` with a leading layer axis), and `pos_embedding` at the top level
  covering the patches only (the class token gets no position embedding).

Files are opened with `allow_pickle=False`, so reading one never runs code from it.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

from vpt_jax.errors import UserError

LAYOUTS = ("original", "linen", "big_vision")
POSEMB = "Transformer/posembed_input/pos_embedding"
# Block sub-module names: linen (and big_vision) -> pre-linen (the names our modules use).
_LINEN_TO_ORIGINAL = {
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_ORIGINAL_TO_LINEN = {v: k for k, v in _LINEN_TO_ORIGINAL.items()}


class CheckpointError(UserError):
    """A checkpoint file that cannot be read, or that does not fit the model."""


def read_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads every array of an `.npz` file into a flat `{name: array}` dict, refusing pickles."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint file not found: {path}; check the path")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint path is a directory, not an .npz file: {path}")
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise CheckpointError(f"{path} holds a single array, not an .npz checkpoint")
        with npz:
            others = [n for n in npz.zip.namelist() if not n.endswith(".npy")]
            if others:
                raise CheckpointError(
                    f"{path} is a zip archive but not an .npz checkpoint (it holds {others[0]!r}); "
                    "pass the .npz file itself"
                )
            return {name: np.asarray(npz[name]) for name in npz.files}
    except CheckpointError:
        raise
    except (zipfile.BadZipFile, ValueError, EOFError, OSError, KeyError) as e:
        reason = f"{type(e).__name__}: {e}"
        if "pickle" in str(e):  # numpy's word for anything neither .npz nor .npy, or object arrays
            with open(path, "rb") as f:
                head = f.read(16)
            pickled = zipfile.is_zipfile(path) or head.startswith(b"\x80")  # pickle protocol 2+
            reason = (
                "it holds pickled data"
                if pickled
                else f"it is not a .npz archive: it starts with {head!r}"
            )
        raise CheckpointError(
            f"{path} is not a readable .npz checkpoint ({reason}); the file may be truncated or of "
            "another format: download it again"
        ) from None


def detect_layout(flat: Mapping[str, np.ndarray]) -> tuple[str, str]:
    """Returns `(layout, prefix)` of a flat checkpoint dict."""
    for prefix in ("params/", "opt/target/", ""):
        if f"{prefix}embedding/kernel" in flat:
            break
    else:
        raise CheckpointError(
            "checkpoint has no 'embedding/kernel' (nor 'params/embedding/kernel'): it is not a "
            "google-research ViT checkpoint"
        )
    keys = [k[len(prefix) :] for k in flat if k.startswith(prefix)]
    if prefix == "params/" or "pos_embedding" in keys or any("encoderblock/" in k for k in keys):
        return "big_vision", prefix
    if any("MultiHeadDotProductAttention_0" in k for k in keys):
        return "linen", prefix
    return "original", prefix


def to_canonical(flat: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Converts a flat checkpoint in any supported layout to vpt_jax's names. Returns `(flat, layout)`."""
    layout, prefix = detect_layout(flat)
    out: dict[str, np.ndarray] = {}
    for key, value in flat.items():
        if not key.startswith(prefix):
            continue  # e.g. optimizer state stored beside the parameters
        key = key[len(prefix) :]
        stacked = re.match(r"Transformer/encoderblock/(.*)", key)
        if stacked:  # big_vision scan layout: one array per leaf with a leading layer axis
            for i, layer_value in enumerate(value):
                out[f"Transformer/encoderblock_{i}/{stacked.group(1)}"] = layer_value
        else:
            out[key] = value
    if layout != "original":
        out = {_rename_block(k, _LINEN_TO_ORIGINAL): v for k, v in out.items()}
    if (
        "pos_embedding" in out
    ):  # big_vision: patches only; the class token has no position embedding
        posemb = out.pop("pos_embedding")
        if "cls" in out:
            posemb = np.concatenate([np.zeros_like(posemb[:, :1]), posemb], axis=1)
        out[POSEMB] = posemb
    if "cls" not in out:
        raise CheckpointError(
            "checkpoint has no class token ('cls'): it is a global-average-pooling or MAP-head model; "
            "vpt_jax needs a class-token ViT such as the ImageNet-21k ViT-B/16"
        )
    return out, layout


def _rename_block(key: str, names: Mapping[str, str]) -> str:
    parts = key.split("/")
    if len(parts) > 2 and parts[0] == "Transformer" and parts[1].startswith("encoderblock"):
        parts[2] = names.get(parts[2], parts[2])
    return "/".join(parts)


def from_canonical(flat: Mapping[str, np.ndarray], layout: str) -> dict[str, np.ndarray]:
    """Converts vpt_jax's flat names to a checkpoint layout (the inverse of `to_canonical`)."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown checkpoint layout {layout!r}; use one of {LAYOUTS}")
    out = dict(flat)
    if layout == "original":
        return out
    out = {_rename_block(k, _ORIGINAL_TO_LINEN): v for k, v in out.items()}
    if layout == "big_vision":
        posemb = out.pop(POSEMB)
        # Fold the class token's position embedding into the token so the function is unchanged.
        out["cls"] = out["cls"] + posemb[:, :1]
        out["pos_embedding"] = posemb[:, 1:]
        out = {f"params/{k}": v for k, v in out.items()}
    return out

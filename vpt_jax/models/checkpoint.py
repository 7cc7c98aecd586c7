"""Reading pretrained weight files and loading them into a model's parameters.

`read_checkpoint(path)` reads any supported file into vpt_jax's names, whatever its format (read
from its bytes): the google-research `.npz` ViT layouts (`vpt_jax.models.npz_layouts`: original,
linen, big_vision), timm-layout ViTs in `.safetensors` or PyTorch files (`vpt_jax.models.timm_vit`:
timm, MAE, MoCo v3) and Swin Transformers (`vpt_jax.models.swin_checkpoint`). `load_pretrained`
fits it to a model: the head and what the model's additions own are fresh, position embeddings are
resized, and a file that does not fit is refused naming every missing, unexpected and mis-shaped key.
Nothing ever unpickles code (`allow_pickle=False`; `torch.load(weights_only=True)`).
"""

from __future__ import annotations

import dataclasses
import io
import logging
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
import scipy.ndimage

from vpt_jax import atomic, paths
from vpt_jax.models import timm_vit, torch_files
from vpt_jax.models.family import family_of, layout_of
from vpt_jax.models.npz_layouts import (  # noqa: F401 - the npz layouts' names, re-exported
    LAYOUTS,
    POSEMB,
    CheckpointError,
    detect_layout,
    from_canonical,
    read_npz,
    to_canonical,
)
from vpt_jax.models.vit import SIZES, VisionTransformer, ViTConfig, init_params, param_shapes

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read once: its arrays in vpt_jax's names, and the layout it came in."""

    path: str
    flat: Mapping[str, np.ndarray]
    layout: str  # LAYOUTS, timm_vit.LAYOUTS, or swin_checkpoint's
    family: str = "vit"  # the backbone family it holds (vpt_jax.models.family): vit | swin
    format: str = "npz"  # npz | safetensors | torch (vpt_jax.models.torch_files)


def read_checkpoint(path: str | os.PathLike) -> Checkpoint:
    """Reads a weight file of any supported format and layout (the format is read from its bytes).

    `.npz`: the google-research layouts (module docstring), or vpt_jax's own Swin names.
    `.safetensors` and PyTorch files: timm-layout ViTs (timm, MAE, MoCo v3;
    `vpt_jax.models.timm_vit`) and Swin Transformers (official or timm names;
    `vpt_jax.models.swin_checkpoint`).
    """
    path = os.fspath(path)
    fmt = torch_files.sniff_format(path)
    if fmt == "npz":
        raw = read_npz(path)
        if "patch_embed/proj/kernel" in raw:  # a Swin written by vpt_jax (export_checkpoint)
            return Checkpoint(path, raw, "swin_npz", "swin", fmt)
        flat, layout = to_canonical(raw)
        return Checkpoint(path, flat, layout, "vit", fmt)
    state_dict, fmt = torch_files.read_state_dict(path)
    try:  # imported here: the Swin modules load only for state dicts
        from vpt_jax.models import swin_checkpoint
    except ModuleNotFoundError:
        swin_checkpoint = None
    if swin_checkpoint is not None and swin_checkpoint.matches(state_dict):
        flat, layout = swin_checkpoint.to_canonical(state_dict)
        return Checkpoint(path, flat, layout, "swin", fmt)
    if timm_vit.is_transformers_vit(state_dict):
        raise CheckpointError(f"{path} {timm_vit.TRANSFORMERS_REFUSAL}")
    if timm_vit.matches(state_dict):
        flat, layout = timm_vit.to_canonical(state_dict)
        return Checkpoint(path, flat, layout, "vit", fmt)
    keys = sorted(state_dict)
    raise CheckpointError(
        f"{path} is a {fmt} file whose names are neither a timm-layout ViT's nor a Swin "
        f"Transformer's (it holds {_first(keys)}); vpt_jax reads google-research .npz ViTs, timm "
        "ViTs (incl. MAE and MoCo v3) and Swin Transformers"
    )


def save_npz(
    path: str | os.PathLike, params: Mapping[str, Any], *, layout: str = "original"
) -> None:
    """Writes parameters as an `.npz` checkpoint in a google-research layout, atomically.

    Args:
      path: destination; it is replaced only once the new file is complete.
      params: a nested parameter dict (a model's `params`) or a flat `{"a/b": array}` dict.
      layout: `original` (pre-linen names, as the ImageNet-21k files), `linen` or `big_vision`.
    """
    flat = paths.flatten(params) if any(isinstance(v, Mapping) for v in params.values()) else params
    flat = {k: np.asarray(jax.device_get(v)) for k, v in flat.items()}
    atomic_write_npz(path, from_canonical(flat, layout))


def atomic_write_npz(path: str | os.PathLike, arrays: Mapping[str, np.ndarray]) -> None:
    """`np.savez` of `arrays`, written atomically to `path`."""
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic.write_bytes(path, buffer.getvalue())


def resize_posemb(posemb: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """Resizes a `(1, 1 + g*g, D)` position embedding to a new patch grid.

    The class-token row is kept; the grid is zoomed linearly with `scipy.ndimage.zoom(order=1)`,
    as google-research/vision_transformer does (corner-aligned, unlike timm's half-pixel bilinear).
    """
    token, patches = posemb[:, :1], posemb[0, 1:]
    old = int(round(np.sqrt(len(patches))))
    if old * old != len(patches):
        raise CheckpointError(
            f"position embedding with {len(patches)} patch positions is not square"
        )
    patches = patches.reshape(old, old, -1)
    zoom = (grid[0] / old, grid[1] / old, 1)
    patches = scipy.ndimage.zoom(patches, zoom, order=1)
    return np.concatenate([token, patches.reshape(1, grid[0] * grid[1], -1)], axis=1)


def describe(flat: Mapping[str, np.ndarray]) -> str:
    """A short description of the architecture a canonical flat checkpoint (ViT or Swin) holds."""
    if "patch_embed/proj/kernel" in flat:  # vpt_jax's Swin names (vpt_jax.models.swin)
        kernel = flat["patch_embed/proj/kernel"]
        blocks = {k.split("/")[0] for k in flat if re.match(r"block_\d+/", k)}
        return (
            f"a Swin Transformer (embed {kernel.shape[-1]}, {len(blocks)} blocks, "
            f"patch {kernel.shape[0]})"
        )
    try:
        width = flat["cls"].shape[-1]
        depth = len({k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")})
        patch = flat["embedding/kernel"].shape[0]
    except (KeyError, IndexError):
        return "an unrecognised architecture"
    size = next(
        (n for n, s in SIZES.items() if s["hidden_size"] == width and s["num_layers"] == depth),
        None,
    )
    name = f"ViT-{size}/{patch}" if size else "a ViT"
    return f"{name} (hidden {width}, {depth} layers, patch {patch})"


def config_from_checkpoint(flat: Mapping[str, np.ndarray]) -> ViTConfig:
    """The architecture a canonical flat ViT checkpoint holds (widths, depth, resolution).

    Args:
      flat: `{name: array}` in vpt_jax's names (`models.checkpoint.to_canonical`).

    Returns:
      The config; `image_size` follows from the position embedding, `representation_size` from a
      `pre_logits` layer when the file has one, `pool="gap"` from an `fc_norm` (MAE's finetuned
      files; its pretraining file holds no sign of how it pools: `model.family=mae` says so).
      Head counts of timm-layout files are assumed at 64 per head (`timm_vit.heads_for`).
    """
    try:
        query = flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"]
        mlp = flat["Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"]
        patch = int(flat["embedding/kernel"].shape[0])
        positions = flat[POSEMB].shape[1] - 1  # the class token's row is not a patch
    except KeyError as e:
        raise CheckpointError(
            f"the checkpoint has no {e.args[0]}: it is not a ViT checkpoint"
        ) from None
    grid = int(round(np.sqrt(positions)))
    if grid * grid != positions:
        raise CheckpointError(f"position embedding with {positions} patch positions is not square")
    layers = {k.split("/")[1] for k in flat if k.startswith("Transformer/encoderblock_")}
    representation = flat.get("pre_logits/kernel")
    return ViTConfig(
        patch_size=patch,
        hidden_size=int(query.shape[0]),
        num_layers=len(layers),
        num_heads=int(query.shape[1]),
        mlp_dim=int(mlp.shape[1]),
        image_size=grid * patch,
        representation_size=None if representation is None else int(representation.shape[1]),
        pool="gap" if "fc_norm/scale" in flat else "token",
    )


def load_pretrained(
    checkpoint: str | os.PathLike | Checkpoint,
    model: VisionTransformer,
    *,
    rng: jax.Array | int = 0,
    keep_head: bool = False,
    fresh: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Loads a pretrained checkpoint file into parameters for `model`.

    `pre_logits` is dropped when the model has no representation layer; the head is replaced by a
    fresh one of the model's size (kept only with `keep_head=True` and equal shapes); position
    embeddings are resized when the model's image size differs; leaves a backbone file does not hold
    (the head and what the model's additions own, or the `fresh` regexes) come from the model's
    initialiser.

    Args:
      checkpoint: an `.npz` file in the original, linen or big_vision layout, or one already read
        (`read_checkpoint`).
      model: the model the parameters are for.
      rng: initialiser seed for the fresh leaves.
      keep_head: keep the file's head when its shape fits (e.g. to evaluate a finetuned file).
      fresh: regexes (full match) of leaves that may be missing from the file; None: the head and
        the leaves of the model's additions.

    Returns:
      The nested parameter dict (float32 numpy arrays, the model's dtypes).

    Raises:
      CheckpointError: unreadable file, or a file of another architecture (every missing,
        unexpected and mis-shaped key is named, with both shapes).
    """
    if not isinstance(checkpoint, Checkpoint):
        checkpoint = read_checkpoint(checkpoint)
    layout = layout_of(model.config)
    _check_family(checkpoint, model)
    init = paths.flatten(init_params(model, rng))
    flat = _fit_to_model(dict(checkpoint.flat), init, model, keep_head, f"{layout.head}/")
    _check_fit(checkpoint, flat, init, model, _fresh(layout, model) if fresh is None else fresh)
    params = {
        k: np.asarray(flat[k], dtype=init[k].dtype) if k in flat else np.asarray(init[k])
        for k in init
    }
    log.info("loaded %s (%s layout, %d leaves)", checkpoint.path, checkpoint.layout, len(params))
    return paths.unflatten(params)


def _first(items: Sequence[str], shown: int = 4) -> str:
    """The first few of a list of names, then how many more (a message stays one readable line)."""
    more = f", ... ({len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more


def check_fits(checkpoint: Checkpoint, model: VisionTransformer) -> None:
    """Raises the `CheckpointError` that `load_pretrained(checkpoint, model)` would, from shapes
    alone (nothing is initialised), so a run can refuse a mismatched file before reading data."""
    layout = layout_of(model.config)
    _check_family(checkpoint, model)
    init = paths.flatten(param_shapes(model))
    flat = _fit_to_model(dict(checkpoint.flat), init, model, False, f"{layout.head}/")
    _check_fit(checkpoint, flat, init, model, _fresh(layout, model))


# Leaves a pretrained file never holds although the backbone has them: the fresh `fc_norm` of
# average-pooled ViTs (MAE's checkpoint has none; the official code creates it at ones/zeros).
FRESH_BACKBONE_LEAVES = (r"fc_norm/.*",)


def _fresh(layout, model) -> tuple[str, ...]:
    return (*layout.fresh(model.additions), *FRESH_BACKBONE_LEAVES)


FAMILY_NAMES = {"vit": "ViT", "swin": "Swin"}  # family -> what messages call it


def _check_family(checkpoint: Checkpoint, model) -> None:
    family = family_of(model.config).name
    if checkpoint.family != family:
        found, expected = (FAMILY_NAMES.get(f, f) for f in (checkpoint.family, family))
        raise CheckpointError(
            f"{checkpoint.path} ({_origin(checkpoint)}): the file holds a {found}, the model is a "
            f"{expected}; pass a {expected} checkpoint or build a {found} model (model.family)"
        )


def _origin(checkpoint: Checkpoint) -> str:
    """How a file was read, for messages: `safetensors file, mae layout`."""
    return f"{checkpoint.format} file, {checkpoint.layout} layout"


def _fit_to_model(flat: dict, init: dict, model: VisionTransformer, keep_head: bool, head: str):
    """Drops what the model replaces (pre_logits, the head) and resizes position embeddings."""
    if "pre_logits/kernel" in flat and "pre_logits/kernel" not in init:
        log.info(
            "dropping the checkpoint's pre_logits layer: the model has no representation layer"
        )
        flat = {k: v for k, v in flat.items() if not k.startswith("pre_logits/")}
    head_fits = all(
        k in init and init[k].shape == v.shape for k, v in flat.items() if k.startswith(head)
    )
    if not (keep_head and head_fits):
        flat = {k: v for k, v in flat.items() if not k.startswith(head)}
    norm = "Transformer/encoder_norm/"
    if any(k.startswith(norm) for k in flat) and not any(k.startswith(norm) for k in init):
        log.info("dropping the checkpoint's final norm: the model pools with its own fc_norm")
        flat = {k: v for k, v in flat.items() if not k.startswith(norm)}
    resizable = (  # a ViT's table (a Swin has relative position biases, fitted by its window)
        family_of(model.config).name == "vit"
        and POSEMB in flat
        and POSEMB in init
        and flat[POSEMB].shape[-1] == init[POSEMB].shape[-1]
    )
    if resizable and flat[POSEMB].shape != init[POSEMB].shape:
        log.info("resizing position embeddings %s -> %s", flat[POSEMB].shape, init[POSEMB].shape)
        flat[POSEMB] = resize_posemb(flat[POSEMB], (model.config.grid_size,) * 2)
    for key, value in flat.items():  # timm files do not say their head count: regroup heads
        want = init.get(key)
        if (
            _is_attention(key)
            and want is not None
            and want.shape != value.shape
            and (len(want.shape), int(np.prod(want.shape))) == (value.ndim, value.size)
        ):
            flat[key] = np.reshape(value, want.shape)
    return flat


def _is_attention(key: str) -> bool:
    return bool(re.search(r"/(query|key|value|out)/(kernel|bias)$", key))


def _check_fit(
    checkpoint: Checkpoint, flat: dict, init: dict, model: VisionTransformer, fresh: Sequence[str]
) -> None:
    """Raises `CheckpointError` naming every missing, unexpected and mis-shaped leaf."""
    fresh_re = [re.compile(p) for p in fresh]
    is_fresh = lambda k: any(r.fullmatch(k) for r in fresh_re)
    missing = [k for k in init if k not in flat and not is_fresh(k)]
    unexpected = [k for k in flat if k not in init]
    misshaped = [
        f"{k} (checkpoint {tuple(flat[k].shape)} vs model {tuple(init[k].shape)})"
        for k in init
        if k in flat and flat[k].shape != init[k].shape
    ]
    problems = [
        f"{len(items)} {what}: {_first(items)}"
        for what, items in (
            ("missing", missing),
            ("unexpected", unexpected),
            ("mis-shaped", misshaped),
        )
        if items
    ]
    if problems:
        raise CheckpointError(
            f"{checkpoint.path} ({_origin(checkpoint)}) holds {describe(flat)}, which does not "
            f"fit the model ({_describe_model(model)}): {'; '.join(problems)}; choose the matching "
            "variant"
        )


def _describe_model(model) -> str:
    c = model.config
    if family_of(c).name == "swin":
        return f"Swin, embed {c.embed_dim}, depths {tuple(c.depths)}, patch {c.patch_size}"
    return f"hidden {c.hidden_size}, {c.num_layers} layers, patch {c.patch_size}"

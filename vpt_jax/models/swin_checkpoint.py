"""Swin Transformer state dicts (official `.pth`, timm safetensors) <-> vpt_jax's Swin names.

Layouts:

* `swin_official`: microsoft/Swin-Transformer's names (`swin_base_patch4_window7_224_22k.pth`,
  under `['model']`): `layers.{i}.blocks.{j}.*`, the merge after stage `i` at
  `layers.{i}.downsample.*`, `head.*`, and the buffers `relative_position_index` / `attn_mask`,
  which are dropped (vpt_jax recomputes them).
* `swin_timm`: timm's (`swin_base_patch4_window7_224.ms_in22k` `model.safetensors`): the merge
  before stage `i + 1` at `layers.{i+1}.downsample.*`, the head at `head.fc.*`, no buffers.

The fused `qkv` (rows `[q; k; v]`, head-major) splits into `query/key/value` kernels
`(C, heads, C/heads)`, `proj` becomes the `out` kernel `(heads, C/heads, C)`, the patch convolution
becomes HWIO, Linear weights are transposed. Keys outside these names pass through unchanged, so
the loader's error names them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from vpt_jax.models import fused_attention
from vpt_jax.models.swin import SwinConfig

LAYOUTS = ("swin_official", "swin_timm")
MARK = "layers.0.blocks.0.attn.relative_position_bias_table"
BUFFERS = ("relative_position_index", "attn_mask")
_LEAVES = {  # inside a block: torch name -> ours (weights transposed)
    "norm1.weight": "norm1/scale",
    "norm1.bias": "norm1/bias",
    "norm2.weight": "norm2/scale",
    "norm2.bias": "norm2/bias",
    "mlp.fc1.weight": "mlp/fc1/kernel",
    "mlp.fc1.bias": "mlp/fc1/bias",
    "mlp.fc2.weight": "mlp/fc2/kernel",
    "mlp.fc2.bias": "mlp/fc2/bias",
    "attn.relative_position_bias_table": "attn/relative_position_bias_table",
    "attn.proj.bias": "attn/out/bias",
}
_TOP = {
    "patch_embed.proj.bias": "patch_embed/proj/bias",
    "patch_embed.norm.weight": "patch_embed/norm/scale",
    "patch_embed.norm.bias": "patch_embed/norm/bias",
    "norm.weight": "norm/scale",
    "norm.bias": "norm/bias",
}


def matches(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is a Swin Transformer's (official or timm names)."""
    return MARK in state_dict


def _layout(sd: Mapping[str, np.ndarray]) -> str:
    if "head.fc.weight" in sd:
        return "swin_timm"
    if "layers.0.downsample.reduction.weight" in sd:
        return "swin_official"
    if "layers.1.downsample.reduction.weight" in sd:
        return "swin_timm"
    return "swin_official"


def _transposed(key: str, value: np.ndarray) -> np.ndarray:
    return value.T if key.endswith("weight") and value.ndim == 2 else value


def to_canonical(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Our flat names for a Swin state dict, and its layout (one of `LAYOUTS`)."""
    layout = _layout(state_dict)
    depths = _depths(state_dict)
    starts = np.concatenate([[0], np.cumsum(depths)]).astype(int)
    out: dict[str, np.ndarray] = {}
    for key, value in state_dict.items():
        value = np.asarray(value)
        block = re.fullmatch(r"layers\.(\d+)\.blocks\.(\d+)\.(.*)", key)
        merge = re.fullmatch(
            r"layers\.(\d+)\.downsample\.(norm\.weight|norm\.bias|reduction\.weight)", key
        )
        if key in _TOP:
            out[_TOP[key]] = value
        elif key == "patch_embed.proj.weight":
            out["patch_embed/proj/kernel"] = value.transpose(2, 3, 1, 0)
        elif key in ("head.weight", "head.fc.weight"):
            out["head/kernel"] = value.T
        elif key in ("head.bias", "head.fc.bias"):
            out["head/bias"] = value
        elif block:
            i = starts[int(block.group(1))] + int(block.group(2))
            leaf = block.group(3)
            if leaf.split(".")[-1] in BUFFERS:
                continue
            out.update(_block_leaf(f"block_{i}", leaf, value, state_dict, key))
        elif merge:
            stage = int(merge.group(1)) - (layout == "swin_timm")
            leaf = {"norm.weight": "norm/scale", "norm.bias": "norm/bias"}.get(
                merge.group(2), "reduction/kernel"
            )
            out[f"merge_{stage}/{leaf}"] = _transposed(merge.group(2), value)
        else:
            out[key] = value
    return out, layout


def _block_leaf(prefix: str, leaf: str, value: np.ndarray, sd, key: str) -> dict[str, np.ndarray]:
    if leaf in _LEAVES:
        return {f"{prefix}/{_LEAVES[leaf]}": _transposed(leaf, value)}
    table = sd.get(key[: -len(leaf)] + "attn.relative_position_bias_table")
    if table is None or leaf not in ("attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight"):
        return {key: value}
    heads = table.shape[1]
    if leaf == "attn.proj.weight":
        return {f"{prefix}/attn/out/kernel": fused_attention.split_proj(value, heads)}
    weight = leaf.endswith("weight")
    kind = "kernel" if weight else "bias"
    parts = fused_attention.split_qkv(value, heads, weight=weight)
    return {f"{prefix}/attn/{name}/{kind}": v for name, v in parts.items()}


def _depths(sd: Mapping[str, np.ndarray]) -> list[int]:
    blocks: dict[int, set[int]] = {}
    for key in sd:
        m = re.match(r"layers\.(\d+)\.blocks\.(\d+)\.", key)
        if m:
            blocks.setdefault(int(m.group(1)), set()).add(int(m.group(2)))
    return [len(blocks[s]) for s in sorted(blocks)]


def config_from_checkpoint(flat: Mapping[str, np.ndarray]) -> SwinConfig:
    """The architecture of a canonical Swin flat dict (widths, depths, heads, window, patch)."""
    kernel = flat["patch_embed/proj/kernel"]
    widths = []
    heads = []
    i = 0
    while f"block_{i}/norm1/scale" in flat:
        widths.append(flat[f"block_{i}/norm1/scale"].shape[0])
        heads.append(flat[f"block_{i}/attn/relative_position_bias_table"].shape[1])
        i += 1
    depths: list[int] = []
    stage_heads: list[int] = []
    previous = None
    for width, count in zip(widths, heads, strict=True):
        if width != previous:  # a merge doubled the width: a new stage
            depths.append(0)
            stage_heads.append(count)
            previous = width
        depths[-1] += 1
    table = flat["block_0/attn/relative_position_bias_table"].shape[0]
    window = (int(round(table**0.5)) + 1) // 2
    return SwinConfig(
        embed_dim=int(kernel.shape[3]),
        depths=tuple(depths),
        num_heads=tuple(stage_heads),
        window_size=window,
        patch_size=int(kernel.shape[0]),
    )


def from_canonical(flat: Mapping[str, np.ndarray], layout: str = "swin_official") -> dict:
    """A Swin state dict in `layout` from our flat names (the inverse of `to_canonical`).

    The official layout also gets the `relative_position_index` buffers the real files carry.
    """
    from vpt_jax.models.swin_blocks import relative_position_index

    if layout not in LAYOUTS:
        raise ValueError(f"unknown Swin layout {layout!r}; use one of {LAYOUTS}")
    config = config_from_checkpoint(flat)
    stage_of = [s for s, d in enumerate(config.depths) for _ in range(d)]
    first = np.concatenate([[0], np.cumsum(config.depths)]).astype(int)
    inverse = {v: k for k, v in _LEAVES.items()}
    top = {v: k for k, v in _TOP.items()}
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[str, str], dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        value = np.asarray(value)
        block = re.fullmatch(r"block_(\d+)/(.*)", key)
        merge = re.fullmatch(r"merge_(\d+)/(.*)", key)
        if key in top:
            out[top[key]] = value
        elif key == "patch_embed/proj/kernel":
            out["patch_embed.proj.weight"] = value.transpose(3, 2, 0, 1)
        elif key.startswith("head/"):
            name = "head.fc" if layout == "swin_timm" else "head"
            out[f"{name}.{'weight' if key.endswith('kernel') else 'bias'}"] = (
                value.T if key.endswith("kernel") else value
            )
        elif block:
            i, leaf = int(block.group(1)), block.group(2)
            s = stage_of[i]
            prefix = f"layers.{s}.blocks.{i - first[s]}"
            attention = re.fullmatch(r"attn/(query|key|value)/(kernel|bias)", leaf)
            if leaf in inverse:
                out[f"{prefix}.{inverse[leaf]}"] = value.T if leaf.endswith("kernel") else value
            elif leaf == "attn/out/kernel":
                out[f"{prefix}.attn.proj.weight"] = fused_attention.fuse_proj(value)
            elif attention:
                qkv.setdefault((prefix, attention.group(2)), {})[attention.group(1)] = value
            else:
                out[key] = value
            if leaf == "attn/relative_position_bias_table" and layout == "swin_official":
                window = (int(round(value.shape[0] ** 0.5)) + 1) // 2
                out[f"{prefix}.attn.relative_position_index"] = relative_position_index(window)
        elif merge:
            stage = int(merge.group(1)) + (layout == "swin_timm")
            leaf = {"norm/scale": "norm.weight", "norm/bias": "norm.bias"}.get(
                merge.group(2), "reduction.weight"
            )
            out[f"layers.{stage}.downsample.{leaf}"] = (
                value.T if leaf == "reduction.weight" else value
            )
        else:
            out[key] = value
    for (prefix, kind), parts in qkv.items():
        leaf = "weight" if kind == "kernel" else "bias"
        out[f"{prefix}.attn.qkv.{leaf}"] = fused_attention.fuse_qkv(parts, weight=kind == "kernel")
    return out

"""timm-layout ViT state dicts (timm / Hugging Face, MAE, MoCo v3) <-> vpt_jax's ViT names.

timm names (`cls_token`, `pos_embed`, `patch_embed.proj`, `blocks.{i}.{norm1, attn.qkv, attn.proj,
norm2, mlp.fc1, mlp.fc2}`, `norm`, `head`) map onto the google-research names the ViT uses
(`vpt_jax.models.vit`): the fused `qkv` rows `[q; k; v]` (each head-major) split into
`query/key/value` kernels `(D, H, D/H)`, `proj` becomes the `out` kernel `(H, D/H, D)`, the patch
convolution `(O, I, P, P)` becomes HWIO, Linear weights are transposed. The inverse of timm's own
`_load_weights` for google `.npz` files.

Layouts, told apart by the keys:

* `moco_v3`: a `module.` prefix (the linear-probe file `linear-vit-b-300ep.pth.tar`, with its
  1000-way head), or `module.base_encoder.` (the pretraining file `vit-b-300ep.pth.tar`: only the
  base encoder is kept, without its projection-MLP `head`; the momentum encoder and predictor go).
* `mae`: no head, no `fc_norm` and a class-token row of zeros in the position embedding (MAE
  stores its fixed sin-cos embedding with a zero class row: `mae_pretrain_vit_base.pth` and timm's
  `.mae` files; a learned embedding's class row is never exactly zero). Its final `norm` maps to
  `Transformer/encoder_norm` like any other (the file alone does not say how a model pools): a
  `pool="gap"` model has no such leaf and the loader drops it (`vpt_jax.models.checkpoint`).
* `timm`: everything else in these names (augreg, augreg2, DINO-style class-token ViTs, MAE's
  finetuned files with `fc_norm` and a head).

Keys outside these names pass through unchanged, so the loader's error names them. Files do not
store the head count: the kernels are split at 64 per head (`heads_for`) and the loader regroups
them to the model's count. Hugging Face transformers' own `ViTModel` names (`embeddings.
patch_embeddings...`, LayerNorm epsilon 1e-12) are refused, naming the timm weights to use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from vpt_jax.models import fused_attention
from vpt_jax.models.npz_layouts import CheckpointError

BLOCK = "Transformer/encoderblock_{}"
POSEMB = "Transformer/posembed_input/pos_embedding"
MOCO_PRETRAIN = "module.base_encoder."
HF_MARK = "embeddings.patch_embeddings.projection.weight"
LAYOUTS = ("timm", "mae", "moco_v3")
TRANSFORMERS_REFUSAL = (
    "holds a Hugging Face transformers ViTModel (embeddings.patch_embeddings...), whose names and "
    "LayerNorm epsilon (1e-12) are not timm's; use the timm weights of that model (the hub's "
    "timm/<name> model.safetensors)"
)
# timm leaf -> ours, inside a block (weights transposed by _dense).
_BLOCK_LEAVES = {
    "norm1.weight": "LayerNorm_0/scale",
    "norm1.bias": "LayerNorm_0/bias",
    "norm2.weight": "LayerNorm_2/scale",
    "norm2.bias": "LayerNorm_2/bias",
    "mlp.fc1.weight": "MlpBlock_3/Dense_0/kernel",
    "mlp.fc1.bias": "MlpBlock_3/Dense_0/bias",
    "mlp.fc2.weight": "MlpBlock_3/Dense_1/kernel",
    "mlp.fc2.bias": "MlpBlock_3/Dense_1/bias",
}
_ATTENTION = "MultiHeadDotProductAttention_1"


def _strip(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], bool]:
    """The state dict without a MoCo prefix, and whether it had one."""
    if any(k.startswith(MOCO_PRETRAIN) for k in state_dict):
        kept = {
            k[len(MOCO_PRETRAIN) :]: v for k, v in state_dict.items() if k.startswith(MOCO_PRETRAIN)
        }
        return {k: v for k, v in kept.items() if not k.startswith("head.")}, True
    if state_dict and all(k.startswith("module.") for k in state_dict):
        return {k[len("module.") :]: v for k, v in state_dict.items()}, True
    return dict(state_dict), False


def matches(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is a timm-layout ViT (after any MoCo prefix).

    Raises:
      CheckpointError: for Hugging Face transformers' `ViTModel` names (`TRANSFORMERS_REFUSAL`).
    """
    if is_transformers_vit(state_dict):
        raise CheckpointError(f"this file {TRANSFORMERS_REFUSAL}")
    return "blocks.0.attn.qkv.weight" in _strip(state_dict)[0]


def is_transformers_vit(state_dict: Mapping[str, np.ndarray]) -> bool:
    """Whether a state dict is in Hugging Face transformers' `ViTModel` names (not timm's)."""
    return HF_MARK in state_dict or f"vit.{HF_MARK}" in state_dict


def _layout(sd: Mapping[str, np.ndarray], prefixed: bool) -> str:
    if prefixed:
        return "moco_v3"
    posemb = sd.get("pos_embed")
    zero_cls = posemb is not None and not np.any(posemb[:, 0])
    pretrain = "head.weight" not in sd and "fc_norm.weight" not in sd
    return "mae" if pretrain and zero_cls else "timm"


def to_canonical(state_dict: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], str]:
    """Our flat names for a timm-layout ViT state dict, and its layout (one of `LAYOUTS`)."""
    sd, prefixed = _strip(state_dict)
    layout = _layout(sd, prefixed)
    out: dict[str, np.ndarray] = {}
    for key, value in sd.items():
        value = np.asarray(value)
        block = re.fullmatch(r"blocks\.(\d+)\.(.*)", key)
        if key == "cls_token":
            out["cls"] = value
        elif key == "pos_embed":
            out[POSEMB] = value
        elif key == "patch_embed.proj.weight":
            out["embedding/kernel"] = value.transpose(2, 3, 1, 0)
        elif key == "patch_embed.proj.bias":
            out["embedding/bias"] = value
        elif key in ("norm.weight", "norm.bias"):
            out[f"Transformer/encoder_norm/{_ln(key)}"] = value
        elif key in ("fc_norm.weight", "fc_norm.bias"):
            out[f"fc_norm/{_ln(key)}"] = value
        elif key in ("head.weight", "head.bias"):
            out[f"head/{'kernel' if key.endswith('weight') else 'bias'}"] = _dense(key, value)
        elif block:
            out.update(_block(int(block.group(1)), block.group(2), value, sd))
        else:
            out[key] = value  # not understood: the loader names it
    return out, layout


def _ln(key: str) -> str:
    return "scale" if key.endswith("weight") else "bias"


def _dense(key: str, value: np.ndarray) -> np.ndarray:
    return value.T if key.endswith("weight") else value


def _block(i: int, leaf: str, value: np.ndarray, sd: Mapping[str, np.ndarray]) -> dict:
    prefix = BLOCK.format(i)
    if leaf in _BLOCK_LEAVES:
        return {f"{prefix}/{_BLOCK_LEAVES[leaf]}": _dense(leaf, value)}
    if leaf.startswith("attn.qkv."):
        weight = leaf.endswith("weight")
        parts = fused_attention.split_qkv(value, _heads(i, value.shape[0] // 3, sd), weight=weight)
        kind = "kernel" if weight else "bias"
        return {f"{prefix}/{_ATTENTION}/{name}/{kind}": v for name, v in parts.items()}
    if leaf == "attn.proj.weight":
        kernel = fused_attention.split_proj(value, _heads(i, value.shape[0], sd))
        return {f"{prefix}/{_ATTENTION}/out/kernel": kernel}
    if leaf == "attn.proj.bias":
        return {f"{prefix}/{_ATTENTION}/out/bias": value}
    return {f"blocks.{i}.{leaf}": value}


# timm files do not store the head count; it follows from the width (64 per head in every
# published ViT: Ti 3, S 6, B 12, L 16, H 16 at 1280 is 80 per head).
_HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12, 1024: 16, 1280: 16}


def _heads(i: int, width: int, sd: Mapping[str, np.ndarray]) -> int:
    del i, sd
    return _HEADS_BY_WIDTH.get(width, max(1, width // 64))


def heads_for(width: int) -> int:
    """The head count assumed for a timm file of this width (the file does not say)."""
    return _heads(0, width, {})


def from_canonical(flat: Mapping[str, np.ndarray], layout: str = "timm") -> dict[str, np.ndarray]:
    """A timm-layout state dict of our flat names (the inverse of `to_canonical`).

    `mae` drops the head (MAE files are encoder only); `moco_v3` adds the `module.` prefix of the
    linear-probe file.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown timm layout {layout!r}; use one of {LAYOUTS}")
    inverse_leaves = {v: k for k, v in _BLOCK_LEAVES.items()}
    out: dict[str, np.ndarray] = {}
    qkv: dict[tuple[int, str], dict[str, np.ndarray]] = {}
    for key, value in flat.items():
        value = np.asarray(value)
        block = re.fullmatch(r"Transformer/encoderblock_(\d+)/(.*)", key)
        if key == "cls":
            out["cls_token"] = value
        elif key == POSEMB:
            out["pos_embed"] = value
        elif key == "embedding/kernel":
            out["patch_embed.proj.weight"] = value.transpose(3, 2, 0, 1)
        elif key == "embedding/bias":
            out["patch_embed.proj.bias"] = value
        elif key.startswith("Transformer/encoder_norm/"):
            out[f"norm.{'weight' if key.endswith('scale') else 'bias'}"] = value
        elif key.startswith("fc_norm/"):
            out[f"fc_norm.{'weight' if key.endswith('scale') else 'bias'}"] = value
        elif key.startswith("head/"):
            if layout != "mae":
                out["head.weight" if key.endswith("kernel") else "head.bias"] = (
                    value.T if key.endswith("kernel") else value
                )
        elif block:
            i, leaf = int(block.group(1)), block.group(2)
            attention = re.fullmatch(rf"{_ATTENTION}/(query|key|value|out)/(kernel|bias)", leaf)
            if leaf in inverse_leaves:
                out[f"blocks.{i}.{inverse_leaves[leaf]}"] = (
                    value.T if leaf.endswith("kernel") else value
                )
            elif attention and attention.group(1) == "out":
                if attention.group(2) == "kernel":
                    out[f"blocks.{i}.attn.proj.weight"] = fused_attention.fuse_proj(value)
                else:
                    out[f"blocks.{i}.attn.proj.bias"] = value
            elif attention:
                qkv.setdefault((i, attention.group(2)), {})[attention.group(1)] = value
            else:
                out[key] = value
        else:
            out[key] = value
    for (i, kind), parts in qkv.items():
        leaf = "weight" if kind == "kernel" else "bias"
        out[f"blocks.{i}.attn.qkv.{leaf}"] = fused_attention.fuse_qkv(
            parts, weight=kind == "kernel"
        )
    if layout == "moco_v3":
        out = {f"module.{k}": v for k, v in out.items()}
    return out

"""The backbone a run uses, from its `model` section: family, variant and checkpoint.

`model.family` names one of `BACKBONES`: the supervised ImageNet-21k ViT of google-research (`vit`),
the self-supervised ViT-B/16s of the paper's appendix C (`mae`, `moco_v3`: the same ViT with their
pooling and position-embedding rules) and the Swin Transformer (`swin`). Each declares the model
family it builds (`vpt_jax.models.family`), the checkpoint layouts its files come in (a file of
another layout is refused naming the expected and the found one, before any data is read), the
settings its pretraining fixes (exact GELU, no dropout, ImageNet statistics: defaults below the
recipe's, `vpt_jax.recipe.resolve`) and the stochastic-depth rate of the official finetuning code.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import Checkpoint, config_from_checkpoint
from vpt_jax.models.precision import check_precision
from vpt_jax.models.vit import BACKBONE_CONFIGS, ViTConfig


@dataclasses.dataclass(frozen=True)
class Backbone:
    """A pretrained backbone kind a run can name in `model.family`."""

    name: str
    model_family: str  # the `vpt_jax.models.family` it builds: vit | swin
    layouts: tuple[str, ...]  # the checkpoint layouts its files come in (Checkpoint.layout)
    drop_path: float  # stochastic depth of the official finetuning code (runs only under FT)
    vit_fields: tuple[tuple[str, Any], ...] = ()  # ViTConfig fields its pretraining fixes
    files: str = ""  # where its weights come from (for messages and the README)


def _pretraining_fields(name: str) -> tuple[tuple[str, Any], ...]:
    """The architecture fields of `vit.BACKBONE_CONFIGS[name]` that its pretraining fixes."""
    return tuple(
        (k, v) for k, v in BACKBONE_CONFIGS[name].items() if k in ("pool", "frozen_posemb")
    )


BACKBONES = {
    b.name: b
    for b in (
        Backbone(
            "vit",
            "vit",
            ("original", "linen", "big_vision", "timm"),
            0.0,
            files="google-research ViT .npz (e.g. imagenet21k/ViT-B_16.npz) or a timm ViT",
        ),
        Backbone(
            "mae",
            "vit",
            ("mae", "timm"),
            BACKBONE_CONFIGS["mae"]["drop_path_rate"],
            vit_fields=_pretraining_fields("mae"),
            files="mae_pretrain_vit_base.pth (or its .safetensors conversion)",
        ),
        Backbone(
            "moco_v3",
            "vit",
            ("moco_v3", "timm"),
            BACKBONE_CONFIGS["moco_v3"].get("drop_path_rate", 0.0),
            vit_fields=_pretraining_fields("moco_v3"),
            files="linear-vit-b-300ep.pth.tar or vit-b-300ep.pth.tar (or a conversion)",
        ),
        Backbone(
            "swin",
            "swin",
            ("swin_official", "swin_timm", "swin_npz"),
            0.5,
            files="swin_base_patch4_window7_224_22k.pth or timm's swin_base_patch4_window7_224.ms_in22k",
        ),
    )
}
# The family whose files come in each layout (to say which model.family a file wants).
LAYOUT_FAMILY = {layout: b.name for b in reversed(BACKBONES.values()) for layout in b.layouts}
SWIN_VARIANTS = ("T", "S", "B", "L")


def backbone_of(m: ml_collections.ConfigDict) -> Backbone:
    """The `Backbone` that `model.family` names."""
    name = m.get("family", "vit")
    if name not in BACKBONES:
        raise UserError(f"unknown model.family {name!r}; use one of: {', '.join(BACKBONES)}")
    return BACKBONES[name]


def check_checkpoint(backbone: Backbone, checkpoint: Checkpoint) -> None:
    """Refuses a checkpoint whose layout is not one of the backbone's, naming both."""
    if checkpoint.layout in backbone.layouts:
        return
    wants = LAYOUT_FAMILY.get(checkpoint.layout)
    hint = f"set model.family={wants}" if wants else f"pass a file of {backbone.files}"
    raise UserError(
        f"model.family={backbone.name} expects a checkpoint in the {' or '.join(backbone.layouts)} "
        f"layout, but {checkpoint.path} is in the {checkpoint.layout} layout; {hint}"
    )


def backbone_config(m: ml_collections.ConfigDict, checkpoint: Checkpoint | None) -> Any:
    """The backbone's config (`ViTConfig` or `SwinConfig`) from a resolved `model` section."""
    backbone = backbone_of(m)
    try:
        check_precision(m.precision)
    except ValueError as e:
        raise UserError(f"model.precision: {e}") from None
    if checkpoint is not None:
        check_checkpoint(backbone, checkpoint)
    rate = backbone.drop_path if m.get("drop_path_rate", -1.0) < 0 else m.drop_path_rate
    if not 0 <= rate < 1:
        raise UserError(f"model.drop_path_rate is a probability: use 0 <= it < 1, got {rate}")
    if backbone.model_family == "swin":
        return _swin_config(m, checkpoint, rate)
    config = _vit_config(m, checkpoint)
    return dataclasses.replace(config, drop_path_rate=rate, **dict(backbone.vit_fields))


def _vit_config(m: ml_collections.ConfigDict, checkpoint: Checkpoint | None) -> ViTConfig:
    common = dict(
        image_size=m.image_size,
        gelu_approximate=m.gelu_approximate,
        dropout_after_attention=m.dropout_after_attention,
        head_init=m.head_init,
        dropout_rate=m.dropout_rate,
        attention_dropout_rate=m.attention_dropout_rate,
        precision=m.precision,
    )
    if m.variant == "auto":
        if checkpoint is None:
            raise UserError("model.variant='auto' reads the widths from model.checkpoint; set one")
        found = config_from_checkpoint(checkpoint.flat)
        # Tasks train without the checkpoint's representation layer (a fresh head on the tokens).
        return dataclasses.replace(found, representation_size=None, **common)
    if m.variant == "custom":
        widths = (m.patch_size, m.hidden_size, m.num_layers, m.num_heads, m.mlp_dim)
        if min(widths) < 1 or m.hidden_size % m.num_heads or m.image_size % m.patch_size:
            raise UserError(
                "model.variant='custom' needs positive widths, hidden_size divisible by num_heads "
                f"and image_size divisible by patch_size; got {widths}, image_size {m.image_size}"
            )
        return ViTConfig(*widths, **common)
    try:
        return ViTConfig.from_variant(m.variant, **common)
    except ValueError as e:
        raise UserError(f"model.variant: {e}") from None


def _swin_config(m: ml_collections.ConfigDict, checkpoint: Checkpoint | None, rate: float) -> Any:
    from vpt_jax.models import swin_checkpoint
    from vpt_jax.models.swin import SwinConfig

    if m.gelu_approximate:
        raise UserError(
            "model.gelu_approximate=True: the Swin Transformer was pretrained with exact GELU; "
            "leave model.gelu_approximate unset (or False) with model.family=swin"
        )
    common = dict(
        image_size=m.image_size,
        drop_path_rate=rate,
        head_init=m.head_init,
        precision=m.precision,
        prompt_batch_mixing=bool(m.get("prompt_batch_mixing", False)),
    )
    try:
        if m.variant == "auto":
            if checkpoint is None:
                raise UserError("model.variant='auto' reads the widths from model.checkpoint")
            found = swin_checkpoint.config_from_checkpoint(checkpoint.flat)
            return dataclasses.replace(found, **common)
        if m.variant == "custom":
            return SwinConfig(
                embed_dim=m.embed_dim,
                depths=tuple(m.depths),
                num_heads=tuple(m.stage_heads),
                window_size=m.window_size,
                patch_size=m.patch_size,
                **common,
            )
        if m.variant not in SWIN_VARIANTS:
            raise UserError(
                f"model.variant={m.variant!r} is not a Swin variant; with model.family=swin use "
                f"one of {', '.join(SWIN_VARIANTS)}, auto or custom"
            )
        return SwinConfig.from_variant(m.variant, **common)
    except ValueError as e:
        raise UserError(f"model: {e}") from None

"""Backbone families: what a family declares so strategies and additions combine with it.

A family (the ViT today) declares its config type, how to build a model from a config, a head size
and additions (`vpt_jax.models.additions`), and a `ParamLayout`: where the parts that strategies
name live in its parameter tree (the classifier, the blocks, the final normalisation) and the scope
of each addition site it offers. Strategies build their rule tables from the layout and never from
module names; the checkpoint loader and the artifact writer read additions' parameter paths through
it. A new family is a config type, a module that attaches additions at the sites it offers, and a
`Family` entry in `FAMILIES`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import flax.linen as nn

from vpt_jax.errors import UserError
from vpt_jax.models.additions import ATTENTION, HEAD, TOKENS, Addition
from vpt_jax.models.swin import SwinConfig, SwinTransformer
from vpt_jax.models.vit import VisionTransformer, ViTConfig


@dataclasses.dataclass(frozen=True)
class ParamLayout:
    """Where a family keeps what strategies name, as scopes of `/`-joined parameter paths.

    Attributes:
      head: the classifier's scope (its `kernel` and `bias`).
      final_norm: the scope of the normalisation after the last block.
      block: the scope of block `i`, a format string with one `{}`.
      sites: `(site, scope regex)` pairs: where additions of each site put their parameters;
        an empty scope is the top level.
      identity: a few backbone leaves that identify a pretrained backbone cheaply (a task
        artifact records their hash and refuses to load on another base).
    """

    head: str
    final_norm: str
    block: str
    sites: tuple[tuple[str, str], ...]
    identity: tuple[str, ...]
    frozen: tuple[
        str, ...
    ] = ()  # regexes of leaves that never train (MoCo v3's position embedding)

    def site_scope(self, site: str) -> str | None:
        """The scope regex of a site, or None when the family offers no such site."""
        return dict(self.sites).get(site)

    def owned(self, addition: Addition) -> str:
        """The full-path regex of the leaves an addition owns in this family."""
        scope = self.site_scope(addition.site)
        if scope is None:
            raise UserError(
                f"{type(addition).__name__} attaches at the {addition.site!r} site, which this "
                f"backbone does not offer (it offers {', '.join(s for s, _ in self.sites)})"
            )
        return f"{scope}/{addition.owned}" if scope else addition.owned

    def blocks(self, indices: Iterable[int]) -> str:
        """A regex matching the scopes of the given blocks."""
        return "(" + "|".join(re.escape(self.block.format(i)) for i in indices) + ")"

    def fresh(self, additions: Sequence[Addition]) -> tuple[str, ...]:
        """Regexes of the leaves a pretrained backbone file does not hold: head and additions."""
        return (rf"{re.escape(self.head)}/.*", *(self.owned(a) for a in additions))


@dataclasses.dataclass(frozen=True)
class Family:
    """A backbone family: its config type, its builder and its parameter layout.

    `layout` is the family's layout; `layout_for` (when set) derives a config's own layout from it
    (a ViT pooling by average keeps its final norm elsewhere; MoCo v3 freezes its position
    embedding).
    """

    name: str
    config_type: type
    layout: ParamLayout
    build: Callable[[Any, int | None, tuple[Addition, ...]], nn.Module]
    layout_for: Callable[[ParamLayout, Any], ParamLayout] | None = None

    def layout_of(self, config: Any) -> ParamLayout:
        """The parameter layout of a model built from `config`."""
        return self.layout if self.layout_for is None else self.layout_for(self.layout, config)

    def build_model(
        self, config: Any, num_classes: int | None, additions: Sequence[Addition] = ()
    ) -> nn.Module:
        """The model of `config` with a `num_classes` head (None: features) and the additions."""
        layout = self.layout_of(config)
        for addition in additions:
            layout.owned(addition)  # raises for a site the family does not offer
        return self.build(config, num_classes, tuple(additions))


VIT_LAYOUT = ParamLayout(
    head="head",
    final_norm="Transformer/encoder_norm",
    block="Transformer/encoderblock_{}",
    sites=(
        (TOKENS, "Transformer"),
        (ATTENTION, r"Transformer/encoderblock_\d+/MultiHeadDotProductAttention_1"),
        (HEAD, ""),
    ),
    identity=("cls", "embedding/kernel", "Transformer/encoder_norm/scale"),
)


def _vit_layout(layout: ParamLayout, config: ViTConfig) -> ParamLayout:
    """Average-pooled ViTs (MAE) normalise the pooled features (`fc_norm`) instead of the tokens;
    MoCo v3 keeps its sin-cos position embedding frozen, even when finetuning."""
    if getattr(config, "pool", "token") == "gap":
        block0_norm = layout.block.format(0) + "/LayerNorm_0/scale"
        layout = dataclasses.replace(
            layout, final_norm="fc_norm", identity=("cls", "embedding/kernel", block0_norm)
        )
    if getattr(config, "frozen_posemb", False):
        layout = dataclasses.replace(
            layout, frozen=(re.escape("Transformer/posembed_input/pos_embedding"),)
        )
    return layout


VIT = Family(
    "vit",
    ViTConfig,
    VIT_LAYOUT,
    lambda config, num_classes, additions: VisionTransformer(config, num_classes, additions),
    _vit_layout,
)
# The Swin Transformer's names (`vpt_jax.models.swin`): blocks numbered across stages, prompts (one
# tensor per stage) at the top level, LoRA beside each window attention's projections.
SWIN_LAYOUT = ParamLayout(
    head="head",
    final_norm="norm",
    block="block_{}",
    sites=((TOKENS, ""), (ATTENTION, r"block_\d+/attn"), (HEAD, "")),
    identity=("patch_embed/proj/kernel", "block_0/attn/relative_position_bias_table", "norm/scale"),
)
SWIN = Family(
    "swin",
    SwinConfig,
    SWIN_LAYOUT,
    lambda config, num_classes, additions: SwinTransformer(config, num_classes, additions),
)
FAMILIES = {family.name: family for family in (VIT, SWIN)}


def family_of(config: Any) -> Family:
    """The family whose config type `config` is."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_type):
            return family
    raise TypeError(f"no backbone family has configs of type {type(config).__name__}")


def layout_of(config: Any) -> ParamLayout:
    """The parameter layout of a model built from `config`, whatever its family."""
    return family_of(config).layout_of(config)


def config_to_dict(config: Any) -> dict[str, Any]:
    """A backbone config as JSON-ready data, with its family's name (artifacts, records)."""
    return {"family": family_of(config).name, **dataclasses.asdict(config)}


def config_from_dict(data: dict[str, Any]) -> Any:
    """The backbone config `config_to_dict` wrote (data without `family` is a ViT's)."""
    fields = dict(data)
    family = FAMILIES[fields.pop("family", "vit")]
    for field in dataclasses.fields(family.config_type):
        if isinstance(fields.get(field.name), list):
            fields[field.name] = tuple(fields[field.name])
    return family.config_type(**fields)

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
    """A backbone family: its config type, its builder and its parameter layout."""

    name: str
    config_type: type
    layout: ParamLayout
    build: Callable[[Any, int | None, tuple[Addition, ...]], nn.Module]

    def build_model(
        self, config: Any, num_classes: int | None, additions: Sequence[Addition] = ()
    ) -> nn.Module:
        """The model of `config` with a `num_classes` head (None: features) and the additions."""
        for addition in additions:
            self.layout.owned(addition)  # raises for a site the family does not offer
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
VIT = Family(
    "vit",
    ViTConfig,
    VIT_LAYOUT,
    lambda config, num_classes, additions: VisionTransformer(config, num_classes, additions),
)
FAMILIES = {family.name: family for family in (VIT,)}


def family_of(config: Any) -> Family:
    """The family whose config type `config` is."""
    for family in FAMILIES.values():
        if isinstance(config, family.config_type):
            return family
    raise TypeError(f"no backbone family has configs of type {type(config).__name__}")

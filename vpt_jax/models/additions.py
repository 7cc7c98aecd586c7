"""What a tuning strategy adds to a backbone, in one declared form.

An addition is a small frozen dataclass (hashable: it is part of a model's static description) that
declares three things:

* `site`: where it attaches. A backbone family offers sites and decides what attaching there means
  for its architecture (`vpt_jax.models.family`):
  - `tokens`: learned tokens in the token sequence (VPT prompts; the ViT inserts them after the
    class token, per block when deep);
  - `attention`: updates beside attention projections (LoRA on query and value);
  - `head`: layers between the pooled features and the classifier (an MLP head).
* `module(...)`: the Flax module(s) holding its parameters, created by the family at the site.
* `owned`: the parameter paths it owns, relative to the site's scope (a regex; the family's layout
  prefixes the scope, see `ParamLayout.owned`).

Strategies (rule tables), the checkpoint loader (which leaves a pretrained file lacks), the artifact
writer (which leaves a stage has) and attribution (how many tokens precede the patches) all read these
declarations; none of them knows a family's module names, and no family knows a strategy.
"""

from __future__ import annotations

import abc
import dataclasses
import math
import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax import paths

TOKENS, ATTENTION, HEAD = "tokens", "attention", "head"
SITES = (TOKENS, ATTENTION, HEAD)


@dataclasses.dataclass(frozen=True)
class Addition(abc.ABC):
    """The common declaration; subclasses set `kind`, `site` and `owned`."""

    kind: ClassVar[str]  # the name it is stored under in artifacts
    site: ClassVar[str]  # one of SITES

    @property
    @abc.abstractmethod
    def owned(self) -> str:
        """Regex of the parameter paths it owns, relative to its site's scope."""

    @property
    def extra_tokens(self) -> int:
        """Tokens it adds to the sequence (between the class token and the patches)."""
        return 0

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, **dataclasses.asdict(self)}


def prompt_init_bound(patch_size: int, prompt_dim: int) -> float:
    """The half-width `v` of VPT's uniform prompt initialisation (Xavier over patch-sized inputs)."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + prompt_dim))


class VisualPrompts(nn.Module):
    """Holds prompt parameters and returns them as `(num_sets, p, width)` tokens.

    Parameters: `embeddings` `(num_sets, p, d)`, initialised `U(-v, v)` with
    `v = prompt_init_bound(patch_size, d)`; with `prompt_dim=d` a Dense `projection` to the width.
    """

    num_sets: int
    num_prompts: int
    width: int
    patch_size: int
    prompt_dim: int | None = None  # None: prompts have the model width, no projection

    @nn.compact
    def __call__(self) -> jax.Array:
        dim = self.prompt_dim or self.width
        bound = prompt_init_bound(self.patch_size, dim)
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
        prompts = self.param("embeddings", init, (self.num_sets, self.num_prompts, dim))
        if self.prompt_dim is not None:
            prompts = nn.Dense(
                self.width,
                kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                name="projection",
            )(prompts)
        return prompts


@dataclasses.dataclass(frozen=True)
class Prompts(Addition):
    """VPT prompts: `count` learned tokens, one set at the input (shallow) or one per block (deep)."""

    count: int  # p, prompt tokens per set
    deep: bool = False  # a set per block instead of one at the input
    dropout: float = 0.0  # dropout on prompt tokens while training, separate from the backbone's
    dim: int | None = None  # prompt width before a projection to the model width; None: none

    kind: ClassVar[str] = "prompts"
    site: ClassVar[str] = TOKENS

    @property
    def owned(self) -> str:
        return "prompt/.*"

    @property
    def extra_tokens(self) -> int:
        return self.count

    def module(self, *, num_sets: int, width: int, patch_size: int) -> VisualPrompts:
        """The parameter holder; the family says how many sets its blocks need."""
        return VisualPrompts(num_sets, self.count, width, patch_size, self.dim, name="prompt")


class LowRankUpdate(nn.Module):
    """One projection's low-rank branch `x @ a @ b * (alpha / r)`: `a` `(D, r)` random, `b` zero."""

    rank: int
    features: tuple[int, ...]
    alpha: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.param("a", nn.initializers.he_uniform(), (x.shape[-1], self.rank))
        b = self.param("b", nn.initializers.zeros, (self.rank, *self.features))
        update = (x @ a.astype(x.dtype)) @ b.reshape(self.rank, -1).astype(x.dtype)
        return update.reshape(*x.shape[:-1], *self.features) * (self.alpha / self.rank)


@dataclasses.dataclass(frozen=True)
class LoRA(Addition):
    """LoRA: rank-r updates added to some attention projections (`<target>_lora/{a,b}`)."""

    rank: int
    alpha: float = 1.0  # updates are scaled by alpha / rank
    targets: tuple[str, ...] = ("query", "value")  # the projections that get an update

    kind: ClassVar[str] = "lora"
    site: ClassVar[str] = ATTENTION

    @property
    def owned(self) -> str:
        return rf"({'|'.join(self.targets)})_lora/[ab]"

    def module(self, target: str, features: tuple[int, ...]) -> LowRankUpdate:
        """The update of projection `target`, whose output has shape `features` per token."""
        return LowRankUpdate(self.rank, features, self.alpha, name=f"{target}_lora")

    def merge(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Folds every `<target>_lora/{a,b}` pair into `<target>/kernel` and drops the factors.

        Returns:
          The parameter tree of the plain model, whose outputs equal the LoRA model's.
        """
        flat = {k: np.asarray(v) for k, v in paths.flatten(params).items()}
        factor = re.compile(rf"(.*/)({'|'.join(self.targets)})_lora/a")
        merged = {k: v for k, v in flat.items() if not re.fullmatch(rf".*/{self.owned}", k)}
        for key in flat:
            match = factor.fullmatch(key)
            if match:
                kernel = f"{match.group(1)}{match.group(2)}/kernel"
                a, b = flat[key], flat[key[:-1] + "b"]
                delta = (a @ b.reshape(a.shape[1], -1)).reshape(merged[kernel].shape)
                merged[kernel] = merged[kernel] + delta * (self.alpha / a.shape[1])
        return paths.unflatten(merged)


@dataclasses.dataclass(frozen=True)
class MLPHead(Addition):
    """A ReLU MLP between the pooled features and the classifier (`head_mlp_{k}`)."""

    hidden: tuple[int, ...]  # hidden widths; with the classifier, len(hidden) + 1 layers

    kind: ClassVar[str] = "mlp_head"
    site: ClassVar[str] = HEAD

    @property
    def owned(self) -> str:
        return r"head_mlp_\d+/.*"

    def __call__(self, features: jax.Array) -> jax.Array:
        """Applies the layers; call it inside the family's compact method (they bind to it)."""
        for k, width in enumerate(self.hidden):
            features = nn.relu(nn.Dense(width, name=f"head_mlp_{k}")(features))
        return features


ADDITIONS: dict[str, type[Addition]] = {cls.kind: cls for cls in (Prompts, LoRA, MLPHead)}


def at_site(additions: Iterable[Addition], site: str) -> tuple[Addition, ...]:
    """The additions that attach at `site`, in order."""
    return tuple(a for a in additions if a.site == site)


def extra_tokens(additions: Iterable[Addition]) -> int:
    """Tokens the additions insert between the class token and the patches."""
    return sum(a.extra_tokens for a in additions)


def from_dict(data: Mapping[str, Any]) -> Addition:
    """The addition `Addition.to_dict` wrote."""
    fields = dict(data)
    cls = ADDITIONS[fields.pop("kind")]
    for field in dataclasses.fields(cls):
        if isinstance(fields.get(field.name), list):
            fields[field.name] = tuple(fields[field.name])
    return cls(**fields)

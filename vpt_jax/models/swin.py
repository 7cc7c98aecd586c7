"""Swin Transformer in Flax linen, with VPT prompts as the official VPT code attaches them.

`SwinConfig.from_variant("B")` is Swin-B (embed 128, depths 2-2-18-2, heads 4-8-16-32, window 7,
patch 4), the backbone of the paper's Tables 7-9. Parameter names (`vpt_jax.models.family`
`SWIN_LAYOUT`): `patch_embed/{proj,norm}`, blocks numbered across stages `block_{i}/{norm1, attn/
{query,key,value,out,relative_position_bias_table}, norm2, mlp/{fc1,fc2}}`,
`merge_{s}/{norm,reduction}` after stage `s`, the final `norm`, prompts `prompt/embeddings_{s}` and
the `head`.
`vpt_jax.models.swin_checkpoint` maps the official and timm files onto them.

Prompts (the `tokens` site, `Prompts`): shallow: `embeddings_0` `(1, P, embed_dim)` prepended after
the patch embedding and carried through every block and merge; deep: `embeddings_s`
`(depths[s], P, C_s)`, one set per block replacing the prompt slots before it (Swin-B: 24 sets,
12,032 x P parameters); initialised `U(-v, v)`, `v = sqrt(6 / (3 * patch^2 + embed_dim))` for every
stage, as the official code. The head pools prompts and patches together after the final norm.
Prompt dropout (with `train`) follows the official code too: the shallow set is dropped per image,
each deep set once for the whole batch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models.additions import (
    ATTENTION,
    TOKENS,
    Addition,
    Prompts,
    at_site,
    prompt_init_bound,
)
from vpt_jax.models.additions import extra_tokens as count_extra_tokens
from vpt_jax.models.drop_path import drop_path_rates
from vpt_jax.models.precision import check_precision, policy
from vpt_jax.models.swin_blocks import LN_EPS, PatchMerging, SwinBlock
from vpt_jax.models.vit import HEAD_INITS, classify
from vpt_jax.models.vit_blocks import PatchEmbedding

Array = jax.Array
VARIANTS: dict[str, dict[str, Any]] = {
    "T": dict(embed_dim=96, depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24)),
    "S": dict(embed_dim=96, depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24)),
    "B": dict(embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32)),
    "L": dict(embed_dim=192, depths=(2, 2, 18, 2), num_heads=(6, 12, 24, 48)),
}


@dataclasses.dataclass(frozen=True)
class SwinConfig:
    """Architecture of a Swin Transformer (LayerNorm eps 1e-5, exact GELU, no absolute posemb)."""

    embed_dim: int = 128  # width of stage 0; doubles at every merge
    depths: tuple[int, ...] = (2, 2, 18, 2)  # blocks per stage
    num_heads: tuple[int, ...] = (4, 8, 16, 32)  # attention heads per stage
    window_size: int = 7  # attention window side (clipped to a smaller stage's resolution)
    patch_size: int = 4
    mlp_ratio: float = 4.0
    image_size: int = 224
    drop_path_rate: float = 0.0  # stochastic depth, 0 .. rate over all blocks; with backbone_train
    head_init: str = "vpt"  # as ViTConfig.head_init; the official VPT head by default
    precision: str = "float32"
    # True: prompts join windows in the official code's window-major order, so the images of a
    # batch see each other's prompts (the paper's Swin numbers); False: each image's own prompts.
    prompt_batch_mixing: bool = False

    def __post_init__(self):
        check_precision(self.precision)
        if self.head_init not in HEAD_INITS:
            raise ValueError(f"unknown head_init {self.head_init!r}; use one of {list(HEAD_INITS)}")
        if len(self.depths) != len(self.num_heads) or not self.depths:
            raise ValueError(
                f"depths {self.depths} and num_heads {self.num_heads} differ in length"
            )
        for s, heads in enumerate(self.num_heads):
            if (self.embed_dim * 2**s) % heads:
                raise ValueError(
                    f"stage {s} width {self.embed_dim * 2**s} is not divisible by {heads} heads"
                )
        grid = self.image_size // self.patch_size
        if self.image_size % self.patch_size or grid % 2 ** (len(self.depths) - 1):
            raise ValueError(
                f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size} "
                f"times {2 ** (len(self.depths) - 1)} (one halving per merge)"
            )
        for s in range(len(self.depths)):
            r = grid >> s
            if r % min(self.window_size, r):
                raise ValueError(
                    f"stage {s} resolution {r} is not a multiple of window {self.window_size}"
                )
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> SwinConfig:
        """`T`, `S`, `B` or `L` (window 7, patch 4, at 224)."""
        if variant not in VARIANTS:
            raise ValueError(f"unknown Swin variant {variant!r}; use one of: {', '.join(VARIANTS)}")
        return cls(**VARIANTS[variant], **overrides)

    @property
    def hidden_size(self) -> int:
        """Width of the pooled features (the last stage's)."""
        return self.embed_dim * 2 ** (len(self.depths) - 1)

    @property
    def num_layers(self) -> int:
        return sum(self.depths)

    @property
    def gelu_approximate(self) -> bool:
        return False

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2

    def stage(self, s: int) -> tuple[int, int, int]:
        """(resolution, window, shift of odd blocks) of stage `s`, as the official code clips."""
        r = self.grid_size >> s
        if r <= self.window_size:
            return r, r, 0
        return r, self.window_size, self.window_size // 2


class SwinPrompts(nn.Module):
    """The prompt parameters: `embeddings_{s}` per stage (deep) or `embeddings_0` (shallow)."""

    config: SwinConfig
    prompts: Prompts

    @nn.compact
    def __call__(self) -> list[Array]:
        cfg, p = self.config, self.prompts.count
        bound = prompt_init_bound(cfg.patch_size, cfg.embed_dim)
        init = lambda key, shape: jax.random.uniform(key, shape, jnp.float32, -bound, bound)
        stages = range(len(cfg.depths)) if self.prompts.deep else range(1)
        return [
            self.param(
                f"embeddings_{s}",
                init,
                (cfg.depths[s] if self.prompts.deep else 1, p, cfg.embed_dim * 2**s),
            )
            for s in stages
        ]


class SwinTransformer(nn.Module):
    """Swin with a mean-pooled linear head; the same call and outputs as `VisionTransformer`.

    Returns `(logits, out)`; `out` holds `embedded`, `block_{i}`, `encoded` (all tokens after the
    final norm), `pre_logits` and `logits`. `from_features=True` runs only the head-site additions
    and the head on `(N, width)` features.
    """

    config: SwinConfig
    num_classes: int | None = None
    additions: tuple[Addition, ...] = ()
    head_init: Callable[..., Array] | None = None

    @property
    def extra_tokens(self) -> int:
        return count_extra_tokens(self.additions)

    @nn.compact
    def __call__(
        self,
        images: Array,
        *,
        train: bool = False,
        backbone_train: bool | None = None,
        from_features: bool = False,
    ) -> tuple[Array, dict[str, Array]]:
        if from_features:
            return self._classify(images.astype(jnp.float32), {})
        cfg = self.config
        if images.ndim != 4 or images.shape[1:3] != (cfg.image_size, cfg.image_size):
            raise ValueError(  # the windows and shift masks are laid out for config.image_size
                f"images must be NHWC of side {cfg.image_size} (config.image_size); "
                f"got shape {images.shape}"
            )
        backbone_train = train if backbone_train is None else backbone_train
        deterministic = not backbone_train
        out: dict[str, Array] = {}
        dtype = policy(cfg.precision).dtype
        x = out["embedded"] = _PatchEmbed(cfg, name="patch_embed")(images)
        prompt = self._prompt()
        sets = SwinPrompts(cfg, prompt, name="prompt")() if prompt else None
        p = prompt.count if prompt else 0
        rates = drop_path_rates(cfg.drop_path_rate, cfg.num_layers)
        i = 0
        for s, (depth, heads) in enumerate(zip(cfg.depths, cfg.num_heads, strict=True)):
            resolution, window, shift = cfg.stage(s)
            for j in range(depth):
                if prompt is not None and (i == 0 or prompt.deep):
                    x = self._insert(
                        x, sets[s][j] if prompt.deep else sets[0][0], prompt, i == 0, train
                    )
                x = out[f"block_{i}"] = SwinBlock(
                    heads,
                    resolution,
                    window,
                    shift if j % 2 else 0,
                    cfg.mlp_ratio,
                    p,
                    cfg.prompt_batch_mixing,
                    rates[i],
                    cfg.precision,
                    at_site(self.additions, ATTENTION),
                    name=f"block_{i}",
                )(x, deterministic=deterministic)
                i += 1
            if s < len(cfg.depths) - 1:
                x = PatchMerging(resolution, p, cfg.precision, name=f"merge_{s}")(x)
        x = out["encoded"] = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="norm")(x)
        return self._classify(x.astype(jnp.float32).mean(axis=1), out)

    def _prompt(self) -> Prompts | None:
        prompts = at_site(self.additions, TOKENS)
        if len(prompts) > 1 or any(not isinstance(p, Prompts) for p in prompts):
            raise ValueError(f"Swin takes one set of prompts at its tokens site; got {prompts}")
        if prompts and prompts[0].dim is not None:
            raise ValueError(
                "a prompt projection (prompt_dim) is not defined for Swin; set it to 0"
            )
        return prompts[0] if prompts else None

    def _insert(self, x: Array, prompts: Array, prompt: Prompts, first: bool, train: bool) -> Array:
        p = prompt.count
        dropout = nn.Dropout(prompt.dropout, deterministic=not train)
        prompts = prompts.astype(x.dtype)
        if not first:  # the official code drops a deep set before expanding it to the batch
            prompts = dropout(prompts)
        prompts = jnp.broadcast_to(prompts, (x.shape[0], p, x.shape[-1]))
        if first:  # and the shallow set after
            prompts = dropout(prompts)
        rest = x if first else x[:, p:]  # later blocks: the previous prompt outputs are dropped
        return jnp.concatenate([prompts, rest], axis=1)

    def _classify(self, x: Array, out: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        return classify(self, x, out)


class _PatchEmbed(nn.Module):
    """`proj` (a patch x patch convolution as a matmul, HWIO kernel) and `norm` (LayerNorm)."""

    config: SwinConfig

    @nn.compact
    def __call__(self, images: Array) -> Array:
        cfg = self.config
        x = PatchEmbedding(cfg.patch_size, cfg.embed_dim, cfg.precision, name="proj")(images)
        return nn.LayerNorm(epsilon=LN_EPS, dtype=policy(cfg.precision).dtype, name="norm")(x)


def block_stage(config: SwinConfig) -> list[int]:
    """The stage of every block, in order."""
    return [s for s, depth in enumerate(config.depths) for _ in range(depth)]

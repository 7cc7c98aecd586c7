"""Vision Transformer in Flax linen, with the parameter names of the google-research checkpoints.

Module names equal the names in the original ImageNet-21k `.npz` files (`embedding`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`, `Transformer/encoder_norm`, `pre_logits`,
`head`), so those files load leaf for leaf. What a tuning strategy adds (prompts, LoRA, an MLP
head: `vpt_jax.models.additions`) is a tuple of declarations the model attaches at its sites: tokens
before every block, updates beside the attention projections, layers before the head.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models.additions import ATTENTION, HEAD, TOKENS, Addition, Prompts, at_site
from vpt_jax.models.additions import extra_tokens as count_extra_tokens
from vpt_jax.models.drop_path import drop_path_rates
from vpt_jax.models.precision import check_precision, policy
from vpt_jax.models.vit_blocks import AddPositionEmbs, Encoder1DBlock, PatchEmbedding

Array = jax.Array

# Widths of the published sizes (ViT paper, Table 1; Ti and S from "How to train your ViT").
SIZES: dict[str, dict[str, int]] = {
    "Ti": dict(hidden_size=192, num_layers=12, num_heads=3, mlp_dim=768),
    "S": dict(hidden_size=384, num_layers=12, num_heads=6, mlp_dim=1536),
    "B": dict(hidden_size=768, num_layers=12, num_heads=12, mlp_dim=3072),
    "L": dict(hidden_size=1024, num_layers=24, num_heads=16, mlp_dim=4096),
    "H": dict(hidden_size=1280, num_layers=32, num_heads=16, mlp_dim=5120),
}
PATCH_SIZES = (8, 14, 16, 32)
POOLS = ("token", "gap")
# The classifier's (kernel, bias) initialisers. zeros: google's fine-tuning code. vpt: the official
# VPT head (`MLP(special_bias=True)`): torch kaiming_normal_(mode="fan_out") weights, i.e.
# N(0, 2 / num_classes), and every bias -log((1 - 0.01) / 0.01) (a constant: softmax ignores it).
VPT_HEAD_BIAS = -math.log((1 - 0.01) / 0.01)
HEAD_INITS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "zeros": (nn.initializers.zeros, nn.initializers.zeros),
    "vpt": (
        nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
        nn.initializers.constant(VPT_HEAD_BIAS),
    ),
}

# The self-supervised ViT-B/16s of the paper's appendix C, as their official model code builds them
# (KMnP `vit_backbones/vit_{mae,moco}.py`, timm 0.4.12 underneath): exact GELU, no dropout and the
# VPT head. MAE pools by average (then a fresh `fc_norm`) and finetunes with drop path 0.1; MoCo v3
# pools its class token and its sin-cos position embedding never trains. `ViTConfig.from_backbone`.
BACKBONE_CONFIGS: dict[str, dict[str, Any]] = {
    "mae": dict(
        variant="B/16", gelu_approximate=False, pool="gap", drop_path_rate=0.1, head_init="vpt"
    ),
    "moco_v3": dict(variant="B/16", gelu_approximate=False, frozen_posemb=True, head_init="vpt"),
}


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    """Architecture of a ViT. `ViTConfig.from_variant("B/16")` decodes a published size."""

    patch_size: int = 16  # side of a square patch, in pixels
    hidden_size: int = 768  # token width D
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # attention heads; hidden_size must be divisible by it
    mlp_dim: int = 3072  # hidden width of each block's MLP
    image_size: int = 224  # input side; position embeddings are sized for it
    representation_size: int | None = None  # width of the tanh `pre_logits` layer; None: no layer
    gelu_approximate: bool = (
        True  # tanh GELU (what the checkpoints used); False: exact erf (timm, VPT)
    )
    dropout_rate: float = 0.0  # backbone dropout after embeddings, attention output and MLP layers
    attention_dropout_rate: float = 0.0  # dropout on attention weights
    # True: the attention output is dropped at dropout_rate (google's ViT); False: at
    # attention_dropout_rate (the VPT code's ViT)
    dropout_after_attention: bool = True
    head_init: str = "zeros"  # zeros (google's fine-tuning) | vpt (kaiming fan_out, bias -log(99))
    # Compute precision (parameters stay float32): float32 | bf16 (bf16_matmul on CPU,
    # bf16_activations elsewhere) | bf16_matmul | bf16_activations; see models/precision.py.
    precision: str = "float32"
    # token: the class token after encoder_norm (supervised ViT, MoCo v3); gap: the mean of the tokens
    # after the class token (prompts included, as the official VPT-MAE code), then a fresh
    # LayerNorm `fc_norm` and no encoder_norm (MAE).
    pool: str = "token"
    # The position embedding never trains, under any strategy (MoCo v3 builds it requires_grad=False;
    # the family's layout turns this into a frozen rule, vpt_jax.models.family).
    frozen_posemb: bool = False
    # Stochastic depth of both residual branches, rising linearly 0 .. rate over the blocks (timm's
    # linspace); it runs only with backbone_train (MAE's finetuning uses 0.1).
    drop_path_rate: float = 0.0

    def __post_init__(self):
        check_precision(self.precision)
        if self.pool not in POOLS:
            raise ValueError(f"unknown pool {self.pool!r}; use one of: {', '.join(POOLS)}")
        if not 0 <= self.drop_path_rate < 1:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.head_init not in HEAD_INITS:
            raise ValueError(
                f"unknown head_init {self.head_init!r}; use one of: {', '.join(HEAD_INITS)}"
            )

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> ViTConfig:
        """Decodes `"B/16"`-style names (sizes Ti, S, B, L, H; patches 8, 14, 16, 32)."""
        match = re.fullmatch(r"(Ti|S|B|L|H)/(\d+)", variant)
        if not match or int(match.group(2)) not in PATCH_SIZES:
            valid = ", ".join(f"{s}/{p}" for s in SIZES for p in PATCH_SIZES)
            raise ValueError(f"unknown ViT variant {variant!r}; use one of: {valid}")
        return cls(patch_size=int(match.group(2)), **SIZES[match.group(1)], **overrides)

    @classmethod
    def from_backbone(cls, name: str, **overrides: Any) -> ViTConfig:
        """The exact config of a self-supervised backbone of `BACKBONE_CONFIGS` (`"mae"`)."""
        if name not in BACKBONE_CONFIGS:
            valid = ", ".join(BACKBONE_CONFIGS)
            raise ValueError(f"unknown ViT backbone {name!r}; use one of: {valid}")
        fields = {**BACKBONE_CONFIGS[name], **overrides}
        return dataclasses.replace(cls.from_variant(fields.pop("variant")), **fields)

    @property
    def grid_size(self) -> int:
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}; "
                "choose an image size divisible by the patch size"
            )
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_size**2


class Encoder(nn.Module):
    """Position embeddings, the blocks and the final LayerNorm (`Transformer/...`).

    Additions attach at two sites here. `tokens` (VPT prompts, as the official implementation
    defines them): the prompts are inserted right after the class token at the input of block 0,
    after the position embeddings were added (no position embedding, no embedding dropout of their
    own); deep prompts have a set per block, and before every later block `i` the `p` prompt slots
    are *replaced* by set `i` (the previous block's prompt outputs are dropped), so the sequence
    stays `1 + p + N` tokens. Prompt dropout is drawn per example and runs with `train`; the
    backbone's dropout runs with `backbone_train`, so a frozen backbone can run deterministic while
    prompts train. `attention`: passed to every block's attention (LoRA).
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    gelu_approximate: bool = True
    dropout_after_attention: bool = True  # see ViTConfig
    patch_size: int = 16  # the prompt initialisation depends on it
    precision: str = "float32"  # compute precision (see models/precision.py)
    additions: tuple[Addition, ...] = ()  # what a strategy attaches (tokens and attention sites)
    drop_path_rate: float = 0.0  # stochastic depth (see ViTConfig)
    final_norm: bool = True  # False: no encoder_norm (average-pooled models normalise the pool)

    @nn.compact
    def __call__(
        self, x: Array, *, train: bool, backbone_train: bool
    ) -> tuple[Array, dict[str, Array]]:
        out: dict[str, Array] = {}
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not backbone_train)
        prompts = at_site(self.additions, TOKENS)
        if len(prompts) > 1 or any(not isinstance(p, Prompts) for p in prompts):
            raise ValueError(f"the ViT takes one set of prompts at its tokens site; got {prompts}")
        prompt = prompts[0] if prompts else None
        sets = None
        if prompt is not None:
            num_sets = self.num_layers if prompt.deep else 1
            sets = prompt.module(num_sets=num_sets, width=x.shape[-1], patch_size=self.patch_size)()
        rates = drop_path_rates(self.drop_path_rate, self.num_layers)
        for i in range(self.num_layers):
            if prompt is not None and (i == 0 or prompt.deep):
                x = self._insert_prompts(x, sets[i], prompt, first=i == 0, train=train)
            out[f"block_{i}_input"] = x
            x = out[f"block_{i}"] = Encoder1DBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.attention_dropout_rate,
                self.gelu_approximate,
                self.precision,
                at_site(self.additions, ATTENTION),
                self.dropout_after_attention,
                rates[i],
                name=f"encoderblock_{i}",
            )(x, deterministic=not backbone_train)
        if not self.final_norm:
            return x, out
        norm = nn.LayerNorm(epsilon=1e-6, dtype=policy(self.precision).dtype, name="encoder_norm")
        return norm(x), out

    def _insert_prompts(
        self, x: Array, prompts: Array, prompt: Prompts, *, first: bool, train: bool
    ) -> Array:
        p = prompt.count
        prompts = jnp.broadcast_to(prompts.astype(x.dtype), (x.shape[0], p, x.shape[-1]))
        prompts = nn.Dropout(prompt.dropout)(prompts, deterministic=not train)
        rest = x[:, 1:] if first else x[:, 1 + p :]  # later blocks: drop the old prompt outputs
        return jnp.concatenate([x[:, :1], prompts, rest], axis=1)


class VisionTransformer(nn.Module):
    """ViT with a class token, an optional tanh representation layer and a linear head.

    Call with NHWC images; returns `(logits, out)`. `out` holds named intermediates: `embedded`
    (patch tokens), `block_{i}_input` and `block_{i}` (each block's input and output tokens),
    `encoded` (all tokens after `encoder_norm`), `pre_logits` (the features the head reads) and
    `logits`. Without a head (`num_classes=None`) the first return value is `pre_logits`.
    `additions` (`vpt_jax.models.additions`) attach at the tokens and attention sites of the encoder
    and at the head site (between `pre_logits` and the head).

    Called with `from_features=True`, the input is a batch of `pre_logits` features `(N, width)`:
    only the head-site additions and the head run (a probe trained on cached features; the
    backbone's parameters may be present in the variables and are not read).
    """

    config: ViTConfig
    num_classes: int | None = None
    additions: tuple[Addition, ...] = ()  # what a tuning strategy attaches (prompts, LoRA, ...)
    head_init: Callable[..., Array] | None = None  # the head's kernel init; None: config.head_init

    @property
    def extra_tokens(self) -> int:
        """Tokens between the class token and the patches (prompts)."""
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
        backbone_train = train if backbone_train is None else backbone_train
        out: dict[str, Array] = {}
        if images.ndim != 4 or images.shape[1] % cfg.patch_size or images.shape[2] % cfg.patch_size:
            raise ValueError(
                f"images must be NHWC with sides divisible by the patch size {cfg.patch_size}; "
                f"got shape {images.shape}"
            )
        x = out["embedded"] = PatchEmbedding(
            cfg.patch_size, cfg.hidden_size, cfg.precision, name="embedding"
        )(images)
        cls = self.param("cls", nn.initializers.zeros, (1, 1, cfg.hidden_size))
        x = jnp.concatenate(
            [jnp.broadcast_to(cls, (x.shape[0], 1, x.shape[2])).astype(x.dtype), x], 1
        )
        x, blocks = Encoder(
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            dropout_rate=cfg.dropout_rate,
            attention_dropout_rate=cfg.attention_dropout_rate,
            gelu_approximate=cfg.gelu_approximate,
            dropout_after_attention=cfg.dropout_after_attention,
            patch_size=cfg.patch_size,
            precision=cfg.precision,
            additions=self.additions,
            drop_path_rate=cfg.drop_path_rate,
            final_norm=cfg.pool == "token",
            name="Transformer",
        )(x, train=train, backbone_train=backbone_train)
        out.update(blocks)
        out["encoded"] = x
        if cfg.pool == "gap":  # MAE: mean over all but the class token, then its own norm
            pooled = x[:, 1:].astype(jnp.float32).mean(axis=1)
            x = nn.LayerNorm(epsilon=1e-6, name="fc_norm")(pooled)
        else:
            x = x[:, 0].astype(jnp.float32)  # the head runs in float32 in every precision
        if cfg.representation_size is not None:
            x = jnp.tanh(nn.Dense(cfg.representation_size, name="pre_logits")(x))
        return self._classify(x, out)

    def _classify(self, x: Array, out: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
        return classify(self, x, out)


def classify(model: Any, x: Array, out: dict[str, Array]) -> tuple[Array, dict[str, Array]]:
    """The head-site additions and the head on pooled features `x` (float32), for any family.

    Called from a model's compact method (`model.additions`, `num_classes`, `head_init` and
    `config.head_init` as `VisionTransformer`'s); the head is created as its child `head`.
    """
    out["pre_logits"] = x
    for addition in at_site(model.additions, HEAD):
        x = addition(x)
    if model.num_classes:
        kernel_init, bias_init = HEAD_INITS[model.config.head_init]
        head = nn.Dense(
            model.num_classes,
            kernel_init=model.head_init or kernel_init,
            bias_init=bias_init,
            name="head",
        )
        x = out["logits"] = head(x)
    return x, out


def create_model(
    variant: str | ViTConfig,
    num_classes: int | None = None,
    *,
    additions: tuple[Addition, ...] = (),
    **config_overrides: Any,
) -> VisionTransformer:
    """Builds a `VisionTransformer` for a variant name (`"B/16"`) or an explicit `ViTConfig`.

    Args:
      variant: a published variant such as `"B/16"`, or a `ViTConfig`.
      num_classes: size of the classifier head; None for a feature extractor.
      additions: what a tuning strategy attaches (`vpt_jax.models.additions`), e.g. prompts.
      **config_overrides: `ViTConfig` fields to change (`image_size=384`, `gelu_approximate=False`).
    """
    if isinstance(variant, ViTConfig):
        config = dataclasses.replace(variant, **config_overrides)
    else:
        config = ViTConfig.from_variant(variant, **config_overrides)
    config.grid_size  # noqa: B018 - validates image_size against patch_size early
    return VisionTransformer(config=config, num_classes=num_classes, additions=tuple(additions))


def init_params(model: VisionTransformer, rng: Array | int = 0) -> dict[str, Any]:
    """Randomly initialised parameters of `model` (a nested dict).

    Uses `lazy_init`: the initialisers run, the forward pass does not (no model-sized compile).
    """
    if isinstance(rng, int):
        rng = jax.random.key(rng)
    size = model.config.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return model.lazy_init(rng, images)["params"]


def param_shapes(model: VisionTransformer) -> dict[str, Any]:
    """The parameter tree of `model` as `jax.ShapeDtypeStruct`s, computed without allocating it
    (traced once per distinct model in a process: a study's runs ask for the same few)."""
    return jax.tree.map(lambda x: x, _param_shapes(model))  # a fresh tree: callers may edit it


@functools.lru_cache(maxsize=64)
def _param_shapes(model: VisionTransformer) -> dict[str, Any]:
    size = model.config.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]

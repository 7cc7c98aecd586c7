"""Vision Transformer in Flax linen, with the parameter names of the google-research checkpoints.

Module names equal the names in the original ImageNet-21k `.npz` files (`embedding`, `cls`,
`Transformer/posembed_input/pos_embedding`, `Transformer/encoderblock_{i}/LayerNorm_0`,
`MultiHeadDotProductAttention_1`, `LayerNorm_2`, `MlpBlock_3`, `Transformer/encoder_norm`, `pre_logits`,
`head`), so those files load leaf for leaf. The encoder class is injectable: prompting
(`vpt_jax.models.prompts`) subclasses `Encoder` and overrides `insert_tokens` instead of forking the model.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models.lora import LoRA
from vpt_jax.models.precision import attention, check_precision, policy

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
    # Compute precision (parameters stay float32): float32 | bf16 (bf16_matmul on CPU,
    # bf16_activations elsewhere) | bf16_matmul | bf16_activations; see models/precision.py.
    precision: str = "float32"

    def __post_init__(self):
        check_precision(self.precision)

    @classmethod
    def from_variant(cls, variant: str, **overrides: Any) -> ViTConfig:
        """Decodes `"B/16"`-style names (sizes Ti, S, B, L, H; patches 8, 14, 16, 32)."""
        match = re.fullmatch(r"(Ti|S|B|L|H)/(\d+)", variant)
        if not match or int(match.group(2)) not in PATCH_SIZES:
            valid = ", ".join(f"{s}/{p}" for s in SIZES for p in PATCH_SIZES)
            raise ValueError(f"unknown ViT variant {variant!r}; use one of: {valid}")
        return cls(patch_size=int(match.group(2)), **SIZES[match.group(1)], **overrides)

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


class PatchEmbedding(nn.Module):
    """Non-overlapping patches times a `(P, P, C, D)` HWIO kernel: the checkpoints' `embedding` Conv.

    Written as reshape + matmul rather than a strided convolution: the same function, slightly
    cheaper on CPU, and its input gradient (used by Integrated Gradients) is a plain matmul.
    """

    patch_size: int
    features: int
    precision: str = "float32"

    @nn.compact
    def __call__(self, images: Array) -> Array:
        p = self.patch_size
        b, h, w, c = images.shape
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (p, p, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        patches = images.reshape(b, h // p, p, w // p, p, c).transpose(0, 1, 3, 2, 4, 5)
        patches = patches.reshape(b, (h // p) * (w // p), p * p * c)
        kernel = kernel.reshape(p * p * c, self.features)
        compute = policy(self.precision)
        if compute.mode == "float32":
            return patches @ kernel.astype(patches.dtype) + bias
        return compute.cast(compute.matmul(patches, kernel) + bias)


class AddPositionEmbs(nn.Module):
    """Adds a learned `(1, N, D)` position embedding (`Transformer/posembed_input/pos_embedding`)."""

    @nn.compact
    def __call__(self, x: Array) -> Array:
        shape = (1, x.shape[1], x.shape[2])
        pos_embedding = self.param("pos_embedding", nn.initializers.normal(stddev=0.02), shape)
        return x + pos_embedding.astype(x.dtype)


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention with the checkpoint's `query`/`key`/`value`/`out` DenseGeneral layout.

    Kernels: query/key/value `(D, H, D/H)`, out `(H, D/H, D)`. Softmax runs in float32. With
    `lora_rank > 0`, query and value get trainable low-rank updates (`query_lora`, `value_lora`).
    In `bf16_activations` precision, attention without active dropout is the fused
    `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
    """

    num_heads: int
    dropout_rate: float = 0.0
    lora_rank: int = 0
    lora_alpha: float = 1.0
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        features = x.shape[-1]
        if features % self.num_heads:
            raise ValueError(f"hidden size {features} is not divisible by {self.num_heads} heads")
        head_dim = features // self.num_heads
        compute = policy(self.precision)
        dense = lambda name: nn.DenseGeneral(
            (self.num_heads, head_dim),
            kernel_init=nn.initializers.xavier_uniform(),
            name=name,
            **compute.dense_kwargs(),
        )
        query, key, value = dense("query")(x), dense("key")(x), dense("value")(x)
        if self.lora_rank:
            lora = lambda name: LoRA(
                self.lora_rank, (self.num_heads, head_dim), self.lora_alpha, name=name
            )
            query = query + lora("query_lora")(x)
            value = value + lora("value_lora")(x)
        if compute.fused_attention and (deterministic or not self.dropout_rate):
            attended = attention(query, key, value)
        else:
            # Heads-major operands, (B, H, T, d) @ (B, H, d, T): XLA:CPU runs these batched dots
            # ~1.5x faster (forward and backward) than einsums with the heads axis inside.
            query = (query / jnp.sqrt(head_dim).astype(query.dtype)).transpose(0, 2, 1, 3)
            logits = query @ key.transpose(0, 2, 3, 1)
            weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(query.dtype)
            weights = nn.Dropout(self.dropout_rate)(weights, deterministic=deterministic)
            attended = (weights @ value.transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        return nn.DenseGeneral(
            features,
            axis=(-2, -1),
            kernel_init=nn.initializers.xavier_uniform(),
            name="out",
            **compute.dense_kwargs(),
        )(attended)


class MlpBlock(nn.Module):
    """Dense -> GELU -> dropout -> Dense -> dropout (`MlpBlock_3/Dense_0`, `Dense_1`)."""

    mlp_dim: int
    dropout_rate: float = 0.0
    gelu_approximate: bool = True
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        dense = lambda features: nn.Dense(
            features,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            **policy(self.precision).dense_kwargs(),
        )
        y = nn.gelu(dense(self.mlp_dim)(x), approximate=self.gelu_approximate)
        y = nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = dense(x.shape[-1])(y)
        return nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)


class Encoder1DBlock(nn.Module):
    """Pre-LayerNorm transformer block; submodule names follow the pre-linen checkpoints."""

    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    gelu_approximate: bool = True
    lora_rank: int = 0
    lora_alpha: float = 1.0
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        dtype = policy(self.precision).dtype
        y = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="LayerNorm_0")(x)
        y = MultiHeadDotProductAttention(
            self.num_heads,
            self.attention_dropout_rate,
            self.lora_rank,
            self.lora_alpha,
            self.precision,
            name="MultiHeadDotProductAttention_1",
        )(y, deterministic=deterministic)
        x = x + nn.Dropout(self.dropout_rate)(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="LayerNorm_2")(x)
        y = MlpBlock(
            self.mlp_dim,
            self.dropout_rate,
            self.gelu_approximate,
            self.precision,
            name="MlpBlock_3",
        )(y, deterministic=deterministic)
        return x + y


class Encoder(nn.Module):
    """Position embeddings, the blocks and the final LayerNorm (`Transformer/...`).

    Subclasses add tokens through two hooks: `extra_tokens` runs once and creates what is inserted
    (the base class: nothing), `insert_tokens` runs before every block and places it. `train` drives
    the subclass's own dropout, `backbone_train` the backbone's, so a frozen backbone can run
    deterministic while prompts train. `lora_rank > 0` adds LoRA factors to every block's attention.
    """

    num_layers: int
    num_heads: int
    mlp_dim: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    gelu_approximate: bool = True
    patch_size: int = 16  # informs subclasses (the VPT prompt init depends on it)
    lora_rank: int = 0  # rank of LoRA updates on attention query/value; 0: none
    lora_alpha: float = 1.0  # LoRA updates are scaled by lora_alpha / lora_rank
    precision: str = "float32"  # compute precision (see models/precision.py)

    def extra_tokens(self, width: int, *, train: bool) -> Array | None:
        """Creates the tokens to insert (the base class inserts none)."""
        del width, train
        return None

    def insert_tokens(self, x: Array, layer: int, extra: Array | None, *, train: bool) -> Array:
        """Returns the token sequence fed to block `layer` (unchanged here)."""
        del layer, extra, train
        return x

    @nn.compact
    def __call__(
        self, x: Array, *, train: bool, backbone_train: bool
    ) -> tuple[Array, dict[str, Array]]:
        out: dict[str, Array] = {}
        x = AddPositionEmbs(name="posembed_input")(x)
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not backbone_train)
        extra = self.extra_tokens(x.shape[-1], train=train)
        for i in range(self.num_layers):
            x = out[f"block_{i}_input"] = self.insert_tokens(x, i, extra, train=train)
            x = out[f"block_{i}"] = Encoder1DBlock(
                self.num_heads,
                self.mlp_dim,
                self.dropout_rate,
                self.attention_dropout_rate,
                self.gelu_approximate,
                self.lora_rank,
                self.lora_alpha,
                self.precision,
                name=f"encoderblock_{i}",
            )(x, deterministic=not backbone_train)
        norm = nn.LayerNorm(epsilon=1e-6, dtype=policy(self.precision).dtype, name="encoder_norm")
        return norm(x), out


EncoderFactory = Callable[..., nn.Module]


class VisionTransformer(nn.Module):
    """ViT with a class token, an optional tanh representation layer and a linear head.

    Call with NHWC images; returns `(logits, out)`. `out` holds named intermediates: `embedded`
    (patch tokens), `block_{i}_input` and `block_{i}` (each block's input and output tokens),
    `encoded` (all tokens after `encoder_norm`), `pre_logits` (the features the head reads) and
    `logits`. Without a head (`num_classes=None`) the first return value is `pre_logits`.
    """

    config: ViTConfig
    num_classes: int | None = None
    encoder: EncoderFactory = Encoder  # injectable: e.g. functools.partial(PromptedEncoder, ...)
    head_init: Callable[..., Array] = nn.initializers.zeros  # zeros, as google's fine-tuning does
    head_mlp_dims: tuple[int, ...] = ()  # hidden widths of an MLP (ReLU) head; () = linear head

    @nn.compact
    def __call__(
        self, images: Array, *, train: bool = False, backbone_train: bool | None = None
    ) -> tuple[Array, dict[str, Array]]:
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
        x, blocks = self.encoder(
            num_layers=cfg.num_layers,
            num_heads=cfg.num_heads,
            mlp_dim=cfg.mlp_dim,
            dropout_rate=cfg.dropout_rate,
            attention_dropout_rate=cfg.attention_dropout_rate,
            gelu_approximate=cfg.gelu_approximate,
            patch_size=cfg.patch_size,
            precision=cfg.precision,
            name="Transformer",
        )(x, train=train, backbone_train=backbone_train)
        out.update(blocks)
        out["encoded"] = x
        x = x[:, 0].astype(jnp.float32)  # the head runs in float32 in every precision
        if cfg.representation_size is not None:
            x = jnp.tanh(nn.Dense(cfg.representation_size, name="pre_logits")(x))
        out["pre_logits"] = x
        for k, width in enumerate(self.head_mlp_dims):
            x = nn.relu(nn.Dense(width, name=f"head_mlp_{k}")(x))
        if self.num_classes:
            x = out["logits"] = nn.Dense(self.num_classes, kernel_init=self.head_init, name="head")(
                x
            )
        return x, out


def create_model(
    variant: str | ViTConfig,
    num_classes: int | None = None,
    *,
    encoder: EncoderFactory = Encoder,
    **config_overrides: Any,
) -> VisionTransformer:
    """Builds a `VisionTransformer` for a variant name (`"B/16"`) or an explicit `ViTConfig`.

    Args:
      variant: a published variant such as `"B/16"`, or a `ViTConfig`.
      num_classes: size of the classifier head; None for a feature extractor.
      encoder: the encoder class (or a partial of one), e.g. a prompted encoder.
      **config_overrides: `ViTConfig` fields to change (`image_size=384`, `gelu_approximate=False`).
    """
    if isinstance(variant, ViTConfig):
        config = dataclasses.replace(variant, **config_overrides)
    else:
        config = ViTConfig.from_variant(variant, **config_overrides)
    config.grid_size  # noqa: B018 - validates image_size against patch_size early
    return VisionTransformer(config=config, num_classes=num_classes, encoder=encoder)


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
    """The parameter tree of `model` as `jax.ShapeDtypeStruct`s, computed without allocating it."""
    size = model.config.image_size
    images = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)["params"]

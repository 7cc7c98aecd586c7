"""The ViT's building blocks, with the module names of the google-research checkpoints.

`PatchEmbedding` (`embedding`), `AddPositionEmbs` (`posembed_input`) and the pre-LayerNorm
`Encoder1DBlock` (`encoderblock_{i}`: `LayerNorm_0`, `MultiHeadDotProductAttention_1`, `LayerNorm_2`,
`MlpBlock_3`). The model around them is `vpt_jax.models.vit`.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models.additions import Addition
from vpt_jax.models.drop_path import DropPath
from vpt_jax.models.precision import attention, policy

Array = jax.Array


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

    Kernels: query/key/value `(D, H, D/H)`, out `(H, D/H, D)`. Softmax runs in float32. Additions
    at the `attention` site (LoRA) add their updates to the projections they target. In
    `bf16_activations` precision, attention without active dropout is the fused
    `jax.nn.dot_product_attention` (cuDNN flash attention on GPU).
    """

    num_heads: int
    dropout_rate: float = 0.0
    precision: str = "float32"
    additions: tuple[Addition, ...] = ()  # those attaching at the attention site

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
        projections = {name: dense(name)(x) for name in ("query", "key", "value")}
        for addition in self.additions:
            for target in addition.targets:
                update = addition.module(target, (self.num_heads, head_dim))(x)
                projections[target] = projections[target] + update
        query, key, value = projections["query"], projections["key"], projections["value"]
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
    precision: str = "float32"
    additions: tuple[Addition, ...] = ()  # those attaching at the attention site
    # True: the attention output is dropped at dropout_rate (google's ViT); False: at
    # attention_dropout_rate (the VPT code's ViT, whose `proj_dropout` takes the attention rate).
    dropout_after_attention: bool = True
    drop_path_rate: float = 0.0  # stochastic depth of both residual branches

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        dtype = policy(self.precision).dtype
        drop_path = lambda y: DropPath(self.drop_path_rate)(y, deterministic=deterministic)
        y = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="LayerNorm_0")(x)
        y = MultiHeadDotProductAttention(
            self.num_heads,
            self.attention_dropout_rate,
            self.precision,
            self.additions,
            name="MultiHeadDotProductAttention_1",
        )(y, deterministic=deterministic)
        after = self.dropout_rate if self.dropout_after_attention else self.attention_dropout_rate
        x = x + drop_path(nn.Dropout(after)(y, deterministic=deterministic))
        y = nn.LayerNorm(epsilon=1e-6, dtype=dtype, name="LayerNorm_2")(x)
        y = MlpBlock(
            self.mlp_dim,
            self.dropout_rate,
            self.gelu_approximate,
            self.precision,
            name="MlpBlock_3",
        )(y, deterministic=deterministic)
        return x + drop_path(y)

"""The Swin Transformer's blocks: shifted-window attention with VPT prompts, and patch merging.

Semantics of the official code (microsoft/Swin-Transformer; prompted: KMnP/vpt
`src/models/vit_prompt/swin_transformer.py`). Windows are ordered batch-major (window `b * nW + w`).
Prompts `(B, P, C)` join every window's sequence in front of its patches, with zero relative
position bias and no shift mask for them; their outputs are averaged over the windows. The
official code tiles them window-major (`prompt_batch_mixing=True`), so window `k` of image `k // nW`
gets the prompts of batch slot `k % B`; by default each image's prompts join its own windows.
The relative position index and the shift mask are numpy constants, never parameters.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.models.additions import Addition
from vpt_jax.models.drop_path import DropPath
from vpt_jax.models.precision import policy

Array = jax.Array
LN_EPS = 1e-5  # torch nn.LayerNorm's default, what Swin uses
MASKED = -100.0  # the official shift mask's value between tokens of different regions


def relative_position_index(window: int) -> np.ndarray:
    """`(w*w, w*w)` indices into the `((2w-1)^2, heads)` bias table, as the official code."""
    coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij")).reshape(
        2, -1
    )
    relative = (coords[:, :, None] - coords[:, None, :]).transpose(1, 2, 0) + (window - 1)
    return relative[..., 0] * (2 * window - 1) + relative[..., 1]


def shift_mask(resolution: int, window: int, shift: int) -> np.ndarray:
    """`(nW, w*w, w*w)`: 0 within a region of the shifted map, `MASKED` across regions."""
    regions = np.zeros((resolution, resolution), np.int32)
    bounds = (slice(0, -window), slice(-window, -shift), slice(-shift, None))
    label = 0
    for rows in bounds:
        for cols in bounds:
            regions[rows, cols] = label
            label += 1
    windows = partition(regions[None, :, :, None], window).reshape(-1, window * window)
    different = windows[:, None, :] != windows[:, :, None]
    return np.where(different, MASKED, 0.0).astype(np.float32)


def partition(x, window: int):
    """`(B, H, W, C)` -> `(B * nW, w*w, C)`, windows row-major within each image."""
    b, h, w, c = x.shape
    x = x.reshape(b, h // window, window, w // window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, c)


def merge_windows(x: Array, window: int, resolution: int) -> Array:
    """The inverse of `partition`: `(B * nW, w*w, C)` -> `(B, H, W, C)`."""
    n = resolution // window
    c = x.shape[-1]
    x = x.reshape(-1, n, n, window, window, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, resolution, resolution, c)


class WindowAttention(nn.Module):
    """Attention within windows, `query/key/value/out` projections and a relative position bias.

    Input `(B * nW, P + w*w, C)` with the `P` prompts first; LoRA additions (the `attention` site)
    add their updates to the projections they target, as in the ViT.
    """

    num_heads: int
    window: int
    num_prompts: int = 0
    precision: str = "float32"
    additions: tuple[Addition, ...] = ()

    @nn.compact
    def __call__(self, x: Array, mask: np.ndarray | None) -> Array:
        c = x.shape[-1]
        head_dim = c // self.num_heads
        compute = policy(self.precision)
        dense = lambda name: nn.DenseGeneral(
            (self.num_heads, head_dim), name=name, **compute.dense_kwargs()
        )
        projections = {name: dense(name)(x) for name in ("query", "key", "value")}
        for addition in self.additions:
            for target in addition.targets:
                update = addition.module(target, (self.num_heads, head_dim))(x)
                projections[target] = projections[target] + update
        table = self.param(
            "relative_position_bias_table",
            nn.initializers.truncated_normal(0.02),
            ((2 * self.window - 1) ** 2, self.num_heads),
        )
        n = self.window * self.window
        p = self.num_prompts
        bias = table[relative_position_index(self.window).reshape(-1)].reshape(n, n, -1)
        bias = jnp.pad(bias.transpose(2, 0, 1), ((0, 0), (p, 0), (p, 0)))  # prompts: no bias
        q = projections["query"].transpose(0, 2, 1, 3) * head_dim**-0.5
        k = projections["key"].transpose(0, 2, 3, 1)
        logits = (q @ k).astype(jnp.float32) + bias
        if mask is not None:  # (nW, N, N), window k of the batch-major order gets mask k % nW
            mask = np.pad(mask, ((0, 0), (p, 0), (p, 0)))
            nw = mask.shape[0]
            logits = logits.reshape(-1, nw, *logits.shape[1:]) + mask[None, :, None]
            logits = logits.reshape(-1, *logits.shape[2:])
        weights = jax.nn.softmax(logits, axis=-1).astype(q.dtype)
        attended = (weights @ projections["value"].transpose(0, 2, 1, 3)).transpose(0, 2, 1, 3)
        out = nn.DenseGeneral(c, axis=(-2, -1), name="out", **compute.dense_kwargs())
        return out(attended)


class SwinBlock(nn.Module):
    """One (shifted-)window block on `(B, P + r*r, C)` tokens, the `P` prompts first."""

    num_heads: int
    resolution: int
    window: int
    shift: int
    mlp_ratio: float
    num_prompts: int = 0
    batch_mixing: bool = False
    drop_path: float = 0.0
    precision: str = "float32"
    additions: tuple[Addition, ...] = ()

    @nn.compact
    def __call__(self, x: Array, *, deterministic: bool) -> Array:
        b, _, c = x.shape
        p, r, w = self.num_prompts, self.resolution, self.window
        dtype = policy(self.precision).dtype
        shortcut = x
        x = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="norm1")(x)
        prompts, patches = x[:, :p], x[:, p:].reshape(b, r, r, c)
        if self.shift:
            patches = jnp.roll(patches, (-self.shift, -self.shift), axis=(1, 2))
        windows = partition(patches, w)
        nw = windows.shape[0] // b
        if p:
            if self.batch_mixing:  # the official tiling: window-major against batch-major windows
                tiled = jnp.broadcast_to(prompts[None], (nw, b, p, c))
            else:
                tiled = jnp.broadcast_to(prompts[:, None], (b, nw, p, c))
            windows = jnp.concatenate([tiled.reshape(-1, p, c), windows], axis=1)
        mask = shift_mask(r, w, self.shift) if self.shift else None
        attended = WindowAttention(
            self.num_heads, w, p, self.precision, self.additions, name="attn"
        )(windows, mask)
        prompt_out, attended = attended[:, :p], attended[:, p:]
        patches = merge_windows(attended, w, r)
        if self.shift:
            patches = jnp.roll(patches, (self.shift, self.shift), axis=(1, 2))
        y = patches.reshape(b, r * r, c)
        if p:
            if self.batch_mixing:
                prompt_out = prompt_out.reshape(nw, b, p, c).mean(0)
            else:
                prompt_out = prompt_out.reshape(b, nw, p, c).mean(1)
            y = jnp.concatenate([prompt_out, y], axis=1)
        drop = lambda t: DropPath(self.drop_path)(t, deterministic=deterministic)
        x = shortcut + drop(y)
        y = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="norm2")(x)
        y = Mlp(int(c * self.mlp_ratio), self.precision, name="mlp")(y)
        return x + drop(y)


class Mlp(nn.Module):
    """`fc1`, exact (erf) GELU as torch's `nn.GELU`, `fc2` back to the input width."""

    hidden: int
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        kwargs = policy(self.precision).dense_kwargs()
        y = nn.Dense(self.hidden, name="fc1", **kwargs)(x)
        return nn.Dense(x.shape[-1], name="fc2", **kwargs)(nn.gelu(y, approximate=False))


class PatchMerging(nn.Module):
    """2x2 neighbours concatenated (`x[0::2,0::2], x[1::2,0::2], x[0::2,1::2], x[1::2,1::2]`),
    LayerNorm(4C), Linear(4C -> 2C, no bias); prompts are replicated 4x across channels first."""

    resolution: int
    num_prompts: int = 0
    precision: str = "float32"

    @nn.compact
    def __call__(self, x: Array) -> Array:
        b, _, c = x.shape
        p, r = self.num_prompts, self.resolution
        patches = x[:, p:].reshape(b, r, r, c)
        parts = [patches[:, 0::2, 0::2], patches[:, 1::2, 0::2], patches[:, 0::2, 1::2]]
        merged = jnp.concatenate([*parts, patches[:, 1::2, 1::2]], axis=-1)
        merged = merged.reshape(b, (r // 2) ** 2, 4 * c)
        if p:
            merged = jnp.concatenate([jnp.tile(x[:, :p], (1, 1, 4)), merged], axis=1)
        dtype = policy(self.precision).dtype
        merged = nn.LayerNorm(epsilon=LN_EPS, dtype=dtype, name="norm")(merged)
        kwargs = policy(self.precision).dense_kwargs()
        return nn.Dense(2 * c, use_bias=False, name="reduction", **kwargs)(merged)

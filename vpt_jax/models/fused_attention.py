"""PyTorch's fused attention weights <-> vpt_jax's per-head query/key/value/out (timm ViT, Swin).

timm and the official Swin store `attn.qkv` as one `(3C, C)` weight (rows `[q; k; v]`, each
head-major) and `(3C,)` bias, and `attn.proj` as a `(C, C)` weight; vpt_jax (like the
google-research checkpoints) keeps `query`/`key`/`value` kernels `(C, heads, head_dim)`, biases
`(heads, head_dim)`, and an `out` kernel `(heads, head_dim, C)`.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

QKV = ("query", "key", "value")


def split_qkv(value: np.ndarray, heads: int, *, weight: bool) -> dict[str, np.ndarray]:
    """`attn.qkv.weight` (`weight=True`) or `.bias` as `{query|key|value: kernel or bias}`."""
    width = value.shape[0] // 3
    parts = {name: value[s * width : (s + 1) * width] for s, name in enumerate(QKV)}
    if weight:
        return {n: p.T.reshape(width, heads, width // heads) for n, p in parts.items()}
    return {n: p.reshape(heads, width // heads) for n, p in parts.items()}


def fuse_qkv(parts: Mapping[str, np.ndarray], *, weight: bool) -> np.ndarray:
    """The inverse of `split_qkv`: `{query|key|value: ...}` as the fused weight or bias."""
    ordered = [parts[name] for name in QKV]
    if weight:
        return np.concatenate([p.reshape(p.shape[0], -1).T for p in ordered])
    return np.concatenate([p.reshape(-1) for p in ordered])


def split_proj(value: np.ndarray, heads: int) -> np.ndarray:
    """`attn.proj.weight` `(C, C)` as the `out` kernel `(heads, head_dim, C)`."""
    width = value.shape[0]
    return value.reshape(width, heads, width // heads).transpose(1, 2, 0)


def fuse_proj(kernel: np.ndarray) -> np.ndarray:
    """The `out` kernel `(heads, head_dim, C)` as `attn.proj.weight` `(C, C)`."""
    return kernel.transpose(2, 0, 1).reshape(kernel.shape[2], -1)

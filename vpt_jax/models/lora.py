"""LoRA: low-rank updates `x @ a @ b * (alpha / r)` added to the attention query and value projections.

The factors live beside the frozen kernels (`.../MultiHeadDotProductAttention_1/query_lora/{a,b}`);
`merge_lora` folds them into the kernels, giving a plain ViT parameter tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from vpt_jax import paths


class LoRA(nn.Module):
    """The low-rank branch of one projection: `a` `(D, r)` random, `b` `(r, *features)` zero."""

    rank: int
    features: tuple[int, ...]
    alpha: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        a = self.param("a", nn.initializers.he_uniform(), (x.shape[-1], self.rank))
        b = self.param("b", nn.initializers.zeros, (self.rank, *self.features))
        update = (x @ a.astype(x.dtype)) @ b.reshape(self.rank, -1).astype(x.dtype)
        return update.reshape(*x.shape[:-1], *self.features) * (self.alpha / self.rank)


def merge_lora(params: Mapping[str, Any], alpha: float) -> dict[str, Any]:
    """Folds every `<proj>_lora/{a,b}` pair into `<proj>/kernel` and drops the factors.

    Args:
      params: a parameter tree with LoRA factors.
      alpha: the LoRA scale numerator used in training (the update is scaled by alpha / rank).

    Returns:
      A parameter tree of the plain ViT whose outputs equal the LoRA model's.
    """
    flat = {k: np.asarray(v) for k, v in paths.flatten(params).items()}
    merged = {k: v for k, v in flat.items() if "_lora/" not in k}
    for key in flat:
        if key.endswith("_lora/a"):
            base = key[: -len("_lora/a")]
            a, b = flat[key], flat[base + "_lora/b"]
            rank = a.shape[1]
            delta = (a @ b.reshape(rank, -1)).reshape(merged[base + "/kernel"].shape)
            merged[base + "/kernel"] = merged[base + "/kernel"] + delta * (alpha / rank)
    return paths.unflatten(merged)

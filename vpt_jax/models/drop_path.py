"""Stochastic depth (drop path): a residual branch dropped per example, as timm's `DropPath`."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


def drop_path_rates(rate: float, depth: int) -> tuple[float, ...]:
    """Per-block rates rising linearly from 0 to `rate` over `depth` blocks (timm's linspace)."""
    return tuple(float(r) for r in np.linspace(0.0, rate, depth, dtype=np.float32))


class DropPath(nn.Module):
    """Zeroes a whole residual branch for a random `rate` of the examples, scaling the rest.

    Draws from the `dropout` rng stream; deterministic (or rate 0) is the identity.
    """

    rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(
            self.make_rng("dropout"), keep, (x.shape[0],) + (1,) * (x.ndim - 1)
        )
        return jnp.where(mask, x / keep, jnp.zeros_like(x))

"""Visual prompts (VPT), as the official implementation (KMnP/vpt) defines them.

* Shallow: `p` learned tokens inserted right after the class token, once, at the input of block 0,
  after the position embeddings were added (prompts get no position embedding and no embedding
  dropout): the sequence becomes `[cls, prompts, patches]`, `1 + p + N` tokens.
* Deep: a prompt set per block. Block 0 gets its set inserted as in shallow; before every later block
  `i` the `p` prompt slots are *replaced* by set `i` (the previous block's prompt outputs are dropped,
  not kept): the sequence length stays `1 + p + N`.
* Initialisation `U(-v, v)` with `v = sqrt(6 / (3 * patch * patch + d))` (`d`: the prompt width).
* Prompt dropout is separate from backbone dropout and drawn per example.
* Optional projection: prompts of width `prompt_dim` pass through a Dense layer to the model width.

Parameters (a separate subtree): `Transformer/prompt/embeddings` of shape `(1, p, d)` (shallow) or
`(num_layers, p, d)` (deep), and with a projection `Transformer/prompt/projection/{kernel,bias}`.
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.models.vit import Encoder

Array = jax.Array


def prompt_init_bound(patch_size: int, prompt_dim: int) -> float:
    """The half-width `v` of the uniform prompt initialisation (Xavier over patch-sized inputs)."""
    return math.sqrt(6.0 / (3 * patch_size * patch_size + prompt_dim))


class VisualPrompts(nn.Module):
    """Holds the prompt parameters and returns them as `(num_sets, p, width)` tokens."""

    num_sets: int
    num_prompts: int
    width: int
    patch_size: int
    prompt_dim: int | None = None  # None: prompts have the model width, no projection

    @nn.compact
    def __call__(self) -> Array:
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


class PromptedEncoder(Encoder):
    """An `Encoder` with VPT prompts; inject it with `create_model(..., encoder=partial(...))`."""

    num_prompts: int = 10  # p, prompt tokens per set
    deep: bool = (
        False  # a prompt set per block (replacing the previous one) instead of one at input
    )
    prompt_dropout: float = 0.0  # dropout on prompt tokens, active when train=True
    prompt_dim: int | None = None  # prompt width before a projection to the model width; None: none

    def extra_tokens(self, width: int, *, train: bool) -> Array:
        del train
        return VisualPrompts(
            self.num_layers if self.deep else 1,
            self.num_prompts,
            width,
            self.patch_size,
            self.prompt_dim,
            name="prompt",
        )()

    def insert_tokens(self, x: Array, layer: int, extra: Array | None, *, train: bool) -> Array:
        if layer > 0 and not self.deep:
            return x
        assert extra is not None
        p = self.num_prompts
        prompts = jnp.broadcast_to(extra[layer].astype(x.dtype), (x.shape[0], p, x.shape[-1]))
        prompts = nn.Dropout(self.prompt_dropout)(prompts, deterministic=not train)
        rest = x[:, 1:] if layer == 0 else x[:, 1 + p :]  # block > 0: drop the old prompt outputs
        return jnp.concatenate([x[:, :1], prompts, rest], axis=1)

"""GradCAM for finetuned and prompt-tuned ViTs, by `jax.grad`, without changing the model.

`gradcam` takes a `VisionTransformer` (plain, LoRA or VPT-prompted), its parameters, images in
model space (normalised NHWC float) and target classes (None: the predicted ones). It reads the
activations and gradients of one block's tokens (default: the last block's attention input, after
its first LayerNorm, as pytorch-grad-cam's `blocks[-1].norm1`): `flax.linen.intercept_methods`
adds a zero `delta` to that module's output, and the gradient with respect to `delta` is the
activation gradient. CLS and the `p` prompt tokens are dropped, the patch tokens reshaped to the
grid, channel weights = mean gradient over the grid, ReLU, bilinear upsampling and per-image
min-max scaling.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vpt_jax.analysis.attribution.classifier import (
    check_inputs,
    model_logits,
    resolve_targets,
    target_logits,
)
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer

Array = jax.Array
# Where GradCAM reads tokens: the block's first LayerNorm output, or the block's output.
SITES = {"attention_input": ("LayerNorm_0",), "output": ()}


@dataclasses.dataclass(frozen=True)
class GradCAMResult:
    """GradCAM maps of a batch.

    Attributes:
      maps: `(B, H, W)` maps upsampled to the image and min-max scaled per image to [0, 1].
      raw: `(B, grid_h, grid_w)` the ReLU'd weighted activations at the patch grid, unscaled.
      targets: `(B,)` the attributed classes.
      scores: `(B,)` the target logits.
      num_prompts: prompt tokens that were dropped besides CLS.
    """

    maps: Array
    raw: Array
    targets: Array
    scores: Array
    num_prompts: int


def gradcam(
    model: VisionTransformer,
    params: Any,
    images: Any,
    targets: Any = None,
    *,
    block: int = -1,
    site: str = "attention_input",
    num_prompts: int | None = None,
) -> GradCAMResult:
    """GradCAM on one block's patch tokens, for plain and VPT (shallow or deep) models.

    Args:
      model: a classifier `VisionTransformer`.
      params: its parameters.
      images: `(B, H, W, C)` normalised model inputs.
      targets: an int, `(B,)` ints, or None for each image's predicted class.
      block: the block index (negative counts from the end).
      site: `attention_input` (the block's first LayerNorm output) or `output` (its token outputs;
        at the last block only CLS reaches the head, so pick an earlier block there).
      num_prompts: prompt tokens after CLS; None derives it from the token count, which must
        agree with the prompts the model's encoder declares.

    Returns:
      A `GradCAMResult`.
    """
    images = check_inputs(model, images)
    if site not in SITES:
        raise UserError(f"unknown GradCAM site {site!r}; use one of {', '.join(SITES)}")
    depth = model.config.num_layers
    if not -depth <= block < depth:
        raise UserError(f"block {block} out of range for a {depth}-block model")
    block %= depth
    tokens_shape, prompts = _token_layout(model, params, images, block, num_prompts)
    targets = resolve_targets(model, params, images, targets)
    path = ("Transformer", f"encoderblock_{block}", *SITES[site])
    maps, raw, scores = _gradcam(model, params, images, targets, path, tokens_shape, 1 + prompts)
    return GradCAMResult(maps, raw, targets, scores, prompts)


def minmax_scale(maps: Array) -> Array:
    """Per-map `(m - min) / (max - min + 1e-7)` over the last two axes, as pytorch-grad-cam."""
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    return shifted / (1e-7 + shifted.max(axis=(-2, -1), keepdims=True))


@functools.partial(jax.jit, static_argnames=("model", "path", "tokens_shape", "num_prefix"))
def _gradcam(model, params, images, targets, path, tokens_shape, num_prefix):
    zeros = jnp.zeros(tokens_shape, images.dtype)

    def target_sum(delta: Array) -> tuple[Array, tuple[Array, Array]]:
        logits, tokens = _capture(model, params, images, path, delta)
        scores = target_logits(logits, targets)
        return scores.sum(), (tokens, scores)

    grads, (tokens, scores) = jax.grad(target_sum, has_aux=True)(zeros)
    batch, height, width = images.shape[:3]
    patch = model.config.patch_size
    grid = (batch, height // patch, width // patch, tokens.shape[-1])
    acts = tokens[:, num_prefix:].reshape(grid)
    channel_weights = grads[:, num_prefix:].reshape(grid).mean(axis=(1, 2))
    raw = jax.nn.relu(jnp.einsum("bhwd,bd->bhw", acts, channel_weights))
    upsampled = jax.image.resize(raw, (batch, height, width), "bilinear")
    return minmax_scale(upsampled), raw, scores


def _capture(model, params, images, path, delta):
    """Runs the model, returning its logits and the output of the module at `path`.

    The module's output continues into the model plus `delta`: the gradient with respect to a zero
    `delta` is the gradient with respect to that output.
    """
    captured = {}

    def interceptor(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or context.module.path != path:
            return out
        captured["tokens"] = out
        return out + delta

    with nn.intercept_methods(interceptor):
        logits = model_logits(model, params, images)
    if "tokens" not in captured:
        raise UserError(f"the model has no module {'/'.join(path)} to take GradCAM tokens from")
    return logits, captured["tokens"]


def _token_layout(
    model: VisionTransformer, params: Any, images: Array, block: int, num_prompts: int | None
) -> tuple[tuple[int, ...], int]:
    """The block's token shape and the prompt tokens between CLS and the patches.

    The prompt count comes from the token count and must agree with `num_prompts` and with the
    tokens the model's additions declare, so no non-patch token is silently put on the grid.
    """
    _, height, width, _ = images.shape
    patch = model.config.patch_size
    grid = (height // patch) * (width // patch)
    out = jax.eval_shape(lambda: model.apply({"params": params}, images, train=False)[1])
    tokens = out[f"block_{block}_input"].shape[1]
    found = tokens - 1 - grid
    claims = {"the token count": found, "num_prompts": num_prompts, "the model": model.extra_tokens}
    if found < 0 or len({v for v in claims.values() if v is not None}) > 1:
        said = ", ".join(f"{k}: {v}" for k, v in claims.items() if v is not None)
        raise UserError(
            f"{tokens} tokens do not fit CLS + prompts + a {height // patch}x{width // patch} patch "
            f"grid ({said}); pass the model's true num_prompts"
        )
    return tuple(out[f"block_{block}_input"].shape), found

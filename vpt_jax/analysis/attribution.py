"""Attribution for finetuned and prompt-tuned ViTs: Integrated Gradients and GradCAM, by `jax.grad`.

Both take a `VisionTransformer` (plain, LoRA or VPT-prompted), its parameters, images in model
space (normalised NHWC float, as the model eats them) and target classes (None: the predicted ones).

* `integrated_gradients`: `(x - b) * sum_k w_k * grad f_t(b + a_k (x - b))`, with the alphas and
  weights of captum's rules (`riemann_left`, `riemann_right`, `riemann_middle`,
  `riemann_trapezoid`, `gausslegendre`); the interpolation points are evaluated `chunk_size` at a
  time inside one `lax.scan`. The result carries captum's convergence delta
  `sum(attributions) - (f_t(x) - f_t(b))` per example: the completeness check.
* `gradcam`: activations and gradients of one block's tokens (default: the last block's attention
  input, after its first LayerNorm, as pytorch-grad-cam's `blocks[-1].norm1`), captured without
  changing the model: `flax.linen.intercept_methods` adds a zero `delta` to that module's output
  and the gradient with respect to `delta` is the activation gradient. CLS and the `p` prompt tokens
  are dropped, the patch tokens reshaped to the grid, channel weights = mean gradient over the grid,
  ReLU, bilinear upsampling and per-image min-max scaling.

Baselines (`zeros`, `black`, `blur`, an array) live in model space, so "black" depends on the
normalisation the model was trained with; they and the rules are in `attribution_paths` and are
re-exported here.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.analysis.attribution_paths import (
    BASELINES,
    METHODS,
    gaussian_blur,
    integration_points,
    make_baseline,
)
from vpt_jax.errors import UserError
from vpt_jax.models.prompts import PromptedEncoder
from vpt_jax.models.vit import Encoder, VisionTransformer

Array = jax.Array
__all__ = [
    "BASELINES",
    "METHODS",
    "SITES",
    "GradCAMResult",
    "IGResult",
    "gaussian_blur",
    "gradcam",
    "integrated_gradients",
    "integration_points",
    "make_baseline",
    "minmax_scale",
]
# Where GradCAM reads tokens: the block's first LayerNorm output, or the block's output.
SITES = {"attention_input": ("LayerNorm_0",), "output": ()}


@dataclasses.dataclass(frozen=True)
class IGResult:
    """Integrated Gradients of a batch, with its completeness check.

    Attributes:
      attributions: `(B, H, W, C)` per-input-value attributions (model space).
      targets: `(B,)` the attributed classes.
      scores: `(B,)` the target logits at the inputs, `f_t(x)`.
      baseline_scores: `(B,)` the target logits at the baselines, `f_t(b)`.
      delta: `(B,)` `sum(attributions) - (f_t(x) - f_t(b))` (captum's convergence delta).
      method: the integration rule.
      n_steps: the number of interpolation points.
    """

    attributions: Array
    targets: Array
    scores: Array
    baseline_scores: Array
    delta: Array
    method: str
    n_steps: int

    @property
    def relative_delta(self) -> Array:
        """`|delta| / |f_t(x) - f_t(b)|` per example (0 where both are 0)."""
        gap = jnp.abs(self.scores - self.baseline_scores)
        return jnp.abs(self.delta) / jnp.maximum(gap, jnp.finfo(jnp.float32).tiny)

    def heatmap(self, clip_percentile: float = 99.0) -> Array:
        """Per-pixel maps in [0, 1]: `|attributions|` summed over channels, scaled per image.

        Args:
          clip_percentile: each map is divided by this percentile of its values and clipped at 1,
            so a few extreme pixels do not wash out the rest (100: plain max scaling).

        Returns:
          `(B, H, W)` maps.
        """
        maps = jnp.abs(self.attributions).sum(-1)
        scale = jnp.percentile(maps.reshape(len(maps), -1), clip_percentile, axis=1)
        return jnp.clip(maps / jnp.maximum(scale, 1e-12)[:, None, None], 0.0, 1.0)


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


def integrated_gradients(
    model: VisionTransformer,
    params: Any,
    images: Any,
    targets: Any = None,
    *,
    baseline: str | Any = "black",
    normalization: str = "inception",
    blur_sigma: float = 5.0,
    n_steps: int = 50,
    method: str = "gausslegendre",
    chunk_size: int = 16,
) -> IGResult:
    """Integrated Gradients of the target logits with respect to the input values.

    Args:
      model: a classifier `VisionTransformer` (any encoder: plain, LoRA, prompted).
      params: its parameters.
      images: `(B, H, W, C)` normalised model inputs.
      targets: an int, `(B,)` ints, or None for each image's predicted class.
      baseline: `zeros`, `black`, `blur` or a model-space array (see `make_baseline`).
      normalization: the normalisation the images went through (`inception` or `imagenet`).
      blur_sigma: Gaussian standard deviation in pixels for the `blur` baseline.
      n_steps: interpolation points.
      method: integration rule, one of `METHODS` (captum's names and definitions).
      chunk_size: interpolation points per gradient evaluation (memory: `chunk_size * B` images).

    Returns:
      An `IGResult` with the attributions and the completeness delta.
    """
    images = _check_images(model, images)
    alphas, weights = integration_points(method, n_steps)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    baselines = make_baseline(images, baseline, normalization=normalization, blur_sigma=blur_sigma)
    targets = _resolve_targets(model, params, images, targets)
    chunk = min(chunk_size, n_steps)
    pad = -n_steps % chunk  # padded points have weight 0: one compiled scan for any n_steps
    alphas = np.pad(alphas, (0, pad)).reshape(-1, chunk).astype(np.float32)
    weights = np.pad(weights, (0, pad)).reshape(-1, chunk).astype(np.float32)
    attributions, scores, base_scores, delta = _ig(
        model, params, images, baselines, targets, alphas, weights
    )
    return IGResult(attributions, targets, scores, base_scores, delta, method, n_steps)


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
    images = _check_images(model, images)
    if site not in SITES:
        raise UserError(f"unknown GradCAM site {site!r}; use one of {', '.join(SITES)}")
    depth = model.config.num_layers
    if not -depth <= block < depth:
        raise UserError(f"block {block} out of range for a {depth}-block model")
    block %= depth
    tokens_shape, prompts = _token_layout(model, params, images, block, num_prompts)
    targets = _resolve_targets(model, params, images, targets)
    path = ("Transformer", f"encoderblock_{block}", *SITES[site])
    maps, raw, scores = _gradcam(model, params, images, targets, path, tokens_shape, 1 + prompts)
    return GradCAMResult(maps, raw, targets, scores, prompts)


def minmax_scale(maps: Array) -> Array:
    """Per-map `(m - min) / (max - min + 1e-7)` over the last two axes, as pytorch-grad-cam."""
    shifted = maps - maps.min(axis=(-2, -1), keepdims=True)
    return shifted / (1e-7 + shifted.max(axis=(-2, -1), keepdims=True))


def _check_images(model: VisionTransformer, images: Any) -> Array:
    if not isinstance(model, VisionTransformer) or not model.num_classes:
        raise UserError("attribution needs a VisionTransformer classifier (num_classes set)")
    if np.ndim(images) != 4:
        raise UserError(f"images must be NHWC (B, H, W, C); got shape {np.shape(images)}")
    if not jnp.issubdtype(jnp.asarray(images).dtype, jnp.floating):
        raise UserError(
            "images must be normalised float model inputs; convert uint8 pixels with "
            "vpt_jax.data.normalize(images, normalization)"
        )
    return jnp.asarray(images, jnp.float32)


def _logits(model: VisionTransformer, params: Any, images: Array) -> Array:
    return model.apply({"params": params}, images, train=False)[0]


@functools.partial(jax.jit, static_argnames="model")
def _predict(model: VisionTransformer, params: Any, images: Array) -> Array:
    return jnp.argmax(_logits(model, params, images), -1).astype(jnp.int32)


def _resolve_targets(model: VisionTransformer, params: Any, images: Array, targets: Any) -> Array:
    batch = images.shape[0]
    if targets is None:
        return _predict(model, params, images)
    targets = np.asarray(targets)
    if not np.issubdtype(targets.dtype, np.integer) or targets.shape not in ((), (batch,)):
        raise UserError(f"targets must be an int or {batch} ints; got shape {targets.shape}")
    if targets.size and (targets.min() < 0 or targets.max() >= model.num_classes):
        raise UserError(f"targets must lie in [0, {model.num_classes}); got {targets.tolist()}")
    return jnp.broadcast_to(jnp.asarray(targets, jnp.int32), (batch,))


def _pick(logits: Array, targets: Array) -> Array:
    return jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]


@functools.partial(jax.jit, static_argnames="model")
def _ig(model, params, images, baselines, targets, alphas, weights):
    diff = images - baselines

    def target_sum(points: Array) -> Array:  # (K, B, H, W, C) -> sum of the K*B target logits
        logits = _logits(model, params, points.reshape(-1, *points.shape[2:]))
        return _pick(logits.reshape(*points.shape[:2], -1), targets[None]).sum()

    def step(total: Array, chunk: tuple[Array, Array]) -> tuple[Array, None]:
        alpha, weight = chunk
        points = baselines[None] + alpha[:, None, None, None, None] * diff[None]
        return total + jnp.einsum("k,kbhwc->bhwc", weight, jax.grad(target_sum)(points)), None

    total, _ = jax.lax.scan(step, jnp.zeros_like(images), (alphas, weights))
    attributions = total * diff
    ends = _logits(model, params, jnp.concatenate([images, baselines]))
    scores, base_scores = jnp.split(_pick(ends, jnp.tile(targets, 2)), 2)
    delta = attributions.sum((1, 2, 3)) - (scores - base_scores)
    return attributions, scores, base_scores, delta


@functools.partial(jax.jit, static_argnames=("model", "path", "tokens_shape", "num_prefix"))
def _gradcam(model, params, images, targets, path, tokens_shape, num_prefix):
    zeros = jnp.zeros(tokens_shape, images.dtype)

    def target_sum(delta: Array) -> tuple[Array, tuple[Array, Array]]:
        logits, tokens = _capture(model, params, images, path, delta)
        scores = _pick(logits, targets)
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
        logits = _logits(model, params, images)
    if "tokens" not in captured:
        raise UserError(f"the model has no module {'/'.join(path)} to take GradCAM tokens from")
    return logits, captured["tokens"]


def _token_layout(
    model: VisionTransformer, params: Any, images: Array, block: int, num_prompts: int | None
) -> tuple[tuple[int, ...], int]:
    """The block's token shape and the prompt tokens between CLS and the patches.

    The prompt count comes from the token count and must agree with `num_prompts` and with what
    the encoder declares, so a custom layout cannot silently put non-patch tokens on the grid.
    """
    _, height, width, _ = images.shape
    patch = model.config.patch_size
    grid = (height // patch) * (width // patch)
    out = jax.eval_shape(lambda: model.apply({"params": params}, images, train=False)[1])
    tokens = out[f"block_{block}_input"].shape[1]
    found = tokens - 1 - grid
    declared = _declared_prompts(model)
    claims = {"the token count": found, "num_prompts": num_prompts, "the encoder": declared}
    if found < 0 or len({v for v in claims.values() if v is not None}) > 1:
        said = ", ".join(f"{k}: {v}" for k, v in claims.items() if v is not None)
        raise UserError(
            f"{tokens} tokens do not fit CLS + prompts + a {height // patch}x{width // patch} patch "
            f"grid ({said}); pass the model's true num_prompts"
        )
    return tuple(out[f"block_{block}_input"].shape), found


def _declared_prompts(model: VisionTransformer) -> int | None:
    """Prompt tokens the model's encoder declares: 0 for a plain encoder, None if unknown."""
    factory = model.encoder
    cls = getattr(factory, "func", factory)
    keywords = getattr(factory, "keywords", {})
    if isinstance(cls, type) and issubclass(cls, PromptedEncoder):
        return int(keywords.get("num_prompts", PromptedEncoder.num_prompts))
    if isinstance(cls, type) and issubclass(cls, Encoder):
        return 0 if cls.extra_tokens is Encoder.extra_tokens else None  # no tokens added
    return None

"""Integrated Gradients for finetuned and prompt-tuned ViTs, by `jax.grad`.

`integrated_gradients` takes a `VisionTransformer` (plain, LoRA or VPT-prompted), its parameters,
images in model space (normalised NHWC float, as the model eats them) and target classes (None:
the predicted ones), and computes `(x - b) * sum_k w_k * grad f_t(b + a_k (x - b))` with the
alphas and weights of captum's rules (`quadrature`); the interpolation points are evaluated
`chunk_size` at a time inside one `lax.scan`. The result carries captum's convergence delta
`sum(attributions) - (f_t(x) - f_t(b))` per example: the completeness check.

Baselines (`zeros`, `black`, `blur`, an array; see `baselines`) live in model space, so "black"
depends on the normalisation the model was trained with.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vpt_jax.analysis.attribution.baselines import make_baseline
from vpt_jax.analysis.attribution.classifier import (
    check_inputs,
    model_logits,
    resolve_targets,
    target_logits,
)
from vpt_jax.analysis.attribution.quadrature import integration_points
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer

Array = jax.Array


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
      method: integration rule, one of `quadrature.METHODS` (captum's names and definitions).
      chunk_size: interpolation points per gradient evaluation (memory: `chunk_size * B` images).

    Returns:
      An `IGResult` with the attributions and the completeness delta.
    """
    images = check_inputs(model, images)
    alphas, weights = integration_points(method, n_steps)
    if chunk_size < 1:
        raise UserError(f"chunk_size must be >= 1, got {chunk_size}")
    baselines = make_baseline(images, baseline, normalization=normalization, blur_sigma=blur_sigma)
    targets = resolve_targets(model, params, images, targets)
    chunk = min(chunk_size, n_steps)
    pad = -n_steps % chunk  # padded points have weight 0: one compiled scan for any n_steps
    alphas = np.pad(alphas, (0, pad)).reshape(-1, chunk).astype(np.float32)
    weights = np.pad(weights, (0, pad)).reshape(-1, chunk).astype(np.float32)
    attributions, scores, base_scores, delta = _ig(
        model, params, images, baselines, targets, alphas, weights
    )
    return IGResult(attributions, targets, scores, base_scores, delta, method, n_steps)


@functools.partial(jax.jit, static_argnames="model")
def _ig(model, params, images, baselines, targets, alphas, weights):
    diff = images - baselines

    def target_sum(points: Array) -> Array:  # (K, B, H, W, C) -> sum of the K*B target logits
        logits = model_logits(model, params, points.reshape(-1, *points.shape[2:]))
        return target_logits(logits.reshape(*points.shape[:2], -1), targets[None]).sum()

    def step(total: Array, chunk: tuple[Array, Array]) -> tuple[Array, None]:
        alpha, weight = chunk
        points = baselines[None] + alpha[:, None, None, None, None] * diff[None]
        return total + jnp.einsum("k,kbhwc->bhwc", weight, jax.grad(target_sum)(points)), None

    total, _ = jax.lax.scan(step, jnp.zeros_like(images), (alphas, weights))
    attributions = total * diff
    ends = model_logits(model, params, jnp.concatenate([images, baselines]))
    scores, base_scores = jnp.split(target_logits(ends, jnp.tile(targets, 2)), 2)
    delta = attributions.sum((1, 2, 3)) - (scores - base_scores)
    return attributions, scores, base_scores, delta

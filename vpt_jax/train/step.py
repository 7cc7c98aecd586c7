"""The train and evaluation steps, at module level so tests and benchmarks import them.

Gradients are taken only with respect to the trainable leaves: the frozen part of the tree enters the
loss as a constant, so XLA computes no weight gradients for it (only the input gradients that reach
earlier trainable leaves, such as deep prompts). The optimizer is the label-driven
`optax.multi_transform`; frozen leaves receive `set_to_zero` updates (zeros that XLA folds away).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vpt_jax.tuning.rules import merge, split

Batch = Mapping[str, jax.Array]
Preprocess = Callable[[jax.Array], jax.Array]


@flax.struct.dataclass
class TrainState:
    """Everything a training run carries from step to step."""

    step: jax.Array
    params: Any  # the full parameter tree (frozen leaves included)
    opt_state: optax.OptState  # arrays for trainable leaves only
    rng: jax.Array  # key for dropout, split every step

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> TrainState:
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Per-example softmax cross-entropy with integer labels, in float32."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def masked_mean(values: jax.Array, mask: jax.Array | None) -> jax.Array:
    """Mean over the rows where `mask` is True (all rows without a mask)."""
    if mask is None:
        return jnp.mean(values)
    mask = mask.astype(values.dtype)
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def train_step(
    state: TrainState,
    batch: Batch,
    *,
    apply_fn: Callable[..., Any],
    tx: optax.GradientTransformation,
    labels: Mapping[str, Any],
    backbone_train: bool,
    preprocess: Preprocess | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One optimizer step on a batch `{"image", "label"}` (and `mask`: padding rows are ignored).

    Args:
      state: the current state.
      batch: images (NHWC; raw if `preprocess` is given) and integer labels.
      apply_fn: the model's `apply`.
      tx: the optimizer over the full parameter tree (see `tuning.rules.masked_optimizer`).
      labels: the label tree of the strategy (frozen / decay / no_decay).
      backbone_train: whether the backbone's dropout runs (False for prompt tuning).
      preprocess: maps raw images to model inputs on the device.

    Returns:
      The new state and the batch's mean `loss` and `accuracy`.
    """
    images = preprocess(batch["image"]) if preprocess else batch["image"]
    rng, dropout_rng = jax.random.split(state.rng)
    trainable, frozen = split(state.params, labels)

    def loss_fn(trainable_params):
        logits, _ = apply_fn(
            {"params": merge(trainable_params, frozen)},
            images,
            train=True,
            backbone_train=backbone_train,
            rngs={"dropout": dropout_rng},
        )
        return masked_mean(cross_entropy(logits, batch["label"]), mask), logits

    mask = batch.get("mask")
    (loss, logits), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable)
    grads = merge(grads, jax.tree_util.tree_map(jnp.zeros_like, frozen))
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    accuracy = masked_mean((jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32), mask)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, {"loss": loss, "accuracy": accuracy}


def eval_step(
    params: Any,
    batch: Batch,
    *,
    apply_fn: Callable[..., Any],
    preprocess: Preprocess | None = None,
) -> dict[str, jax.Array]:
    """Sums of loss and correct predictions over the real (`mask`) examples of a padded batch."""
    images = preprocess(batch["image"]) if preprocess else batch["image"]
    logits, _ = apply_fn({"params": params}, images, train=False)
    mask = batch["mask"].astype(jnp.float32)
    correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
    return {
        "loss_sum": jnp.sum(cross_entropy(logits, batch["label"]) * mask),
        "correct": jnp.sum(correct * mask),
        "count": jnp.sum(mask),
    }

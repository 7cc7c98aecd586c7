"""The train and evaluation steps, and their compiled forms, at module level.

Gradients are taken only with respect to the trainable leaves: the frozen part of the tree enters the
loss as a constant, so XLA computes no weight gradients for it (only the input gradients that reach
earlier trainable leaves, such as deep prompts). The optimizer is the label-driven
`optax.multi_transform`; frozen leaves receive `set_to_zero` updates (zeros that XLA folds away).

`train_on_indices` and `accumulate_eval` are the jitted functions the trainer calls. They are
specialised on a hashable `TrainProgram` / `EvalProgram` (static arguments): runs whose programs are
equal (a grid's runs differ only in learning rate and weight decay, which are optimizer state) reuse
one compiled step in-process, and their jit caches say how often each compiled.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding

from vpt_jax import paths
from vpt_jax.data.preprocess import preprocess_batch
from vpt_jax.train.optimizer import OptimizerSpec
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


@dataclasses.dataclass(frozen=True)
class Augmentation:
    """How raw uint8 images become model inputs on the device."""

    normalization: str = "inception"
    flip: bool = False
    crop_padding: int = 0
    # > 0: the training split holds canvases (`data.resize_crop`), cropped at random to this size.
    crop_size: int = 0


@dataclasses.dataclass(frozen=True)
class TrainProgram:
    """What the compiled train step is specialised on; equal programs share one compilation."""

    model: nn.Module
    labels: tuple[tuple[str, str], ...]  # (path, label) of every leaf, in the tree's order
    optimizer: OptimizerSpec
    backbone_train: bool  # whether the backbone's dropout runs
    augmentation: Augmentation
    batch_sharding: NamedSharding
    # True: the training split holds the frozen backbone's pooled features, not images; only the
    # head-site additions and the head run (`vpt_jax.train.features`).
    from_features: bool = False

    @classmethod
    def create(cls, model, labels: Mapping[str, Any], **fields: Any) -> TrainProgram:
        return cls(model, tuple(paths.flatten(labels).items()), **fields)

    def label_tree(self) -> dict[str, Any]:
        return paths.unflatten(dict(self.labels))

    def tx(self, lr: float = 0.0, weight_decay: float = 0.0) -> optax.GradientTransformation:
        """The optimizer (`lr` and `weight_decay` seed the state `init` creates)."""
        return self.optimizer.build(self.label_tree(), lr, weight_decay)

    def evaluation(self) -> EvalProgram:
        """The evaluation step's specialisation for this program's model and inputs."""
        return EvalProgram(self.model, self.augmentation.normalization, self.from_features)


@dataclasses.dataclass(frozen=True)
class EvalProgram:
    """What the compiled evaluation step is specialised on."""

    model: nn.Module
    normalization: str
    from_features: bool = False  # batches hold pooled features (see `TrainProgram`)

    def inputs(self) -> tuple[Callable[..., Any], Preprocess | None]:
        """The model's apply and the preprocessing its inputs get."""
        if self.from_features:
            return functools.partial(self.model.apply, from_features=True), None
        return self.model.apply, functools.partial(
            preprocess_batch, normalization=self.normalization
        )


@functools.partial(jax.jit, static_argnames="program", donate_argnums=(0, 1))
def train_on_indices(state, sums, train_arrays, indices, mask, *, program: TrainProgram):
    """Gathers a step's examples from the on-device split, trains, and accumulates loss sums
    (`indices_step` compiled)."""
    return indices_step(state, sums, train_arrays, indices, mask, program)


def indices_step(state, sums, train_arrays, indices, mask, program: TrainProgram):
    """Gathers a step's examples from the on-device split, trains, and accumulates loss sums.

    Args:
      state: the `TrainState`.
      sums: `(loss * n, correct, n)` accumulated over the epoch so far.
      train_arrays: `{"image", "label"}` of the whole training split, on the devices (and
        `"extent"` where the images are canvases), or of one streamed batch.
      indices: the step's example indices (padded to the batch size).
      mask: which of them are real.
      program: the static specialisation.
    """
    gather = lambda x: jax.lax.with_sharding_constraint(x[indices], program.batch_sharding)
    aug_rng = jax.random.fold_in(state.rng, 1)
    aug = program.augmentation
    batch = {"image": gather(train_arrays["image"]), "label": gather(train_arrays["label"])}
    extents = gather(train_arrays["extent"]) if aug.crop_size else None
    apply_fn, preprocess = (
        program.model.apply,
        lambda images: preprocess_batch(
            images,
            rng=aug_rng,
            normalization=aug.normalization,
            flip=aug.flip,
            crop_padding=aug.crop_padding,
            extents=extents,
            crop_size=aug.crop_size,
        ),
    )
    if program.from_features:
        apply_fn, preprocess = program.evaluation().inputs()
    state, metrics = train_step(
        state,
        dict(batch, mask=mask),
        apply_fn=apply_fn,
        tx=program.tx(),
        labels=program.label_tree(),
        backbone_train=program.backbone_train,
        preprocess=preprocess,
    )
    n = jnp.sum(mask.astype(jnp.float32))
    return state, sums + jnp.stack([metrics["loss"] * n, metrics["accuracy"] * n, n])


@functools.partial(jax.jit, static_argnames="program", donate_argnums=(0,))
def accumulate_eval(sums, params, batch, *, program: EvalProgram):
    """Adds a padded batch's `(loss sum, correct, count)` to `sums`."""
    return eval_sums(sums, params, batch, program)


def eval_sums(sums, params, batch, program: EvalProgram):
    """`sums` plus a padded batch's `(loss sum, correct, count)` (`accumulate_eval` compiled)."""
    apply_fn, preprocess = program.inputs()
    out = eval_step(params, batch, apply_fn=apply_fn, preprocess=preprocess)
    return sums + jnp.stack([out["loss_sum"], out["correct"], out["count"]])


@functools.partial(jax.jit, static_argnames=("program", "sharding"))
def pooled_features(params, images, indices, *, program: EvalProgram, sharding: NamedSharding):
    """The model's `pre_logits` (what its head site reads) of `images[indices]` (all images when
    `indices` is None), computed deterministically as in evaluation; sharded over the batch."""
    images = images if indices is None else images[indices]
    images = jax.lax.with_sharding_constraint(images, sharding)
    _, out = program.model.apply(
        {"params": params}, preprocess_batch(images, normalization=program.normalization)
    )
    return out["pre_logits"]

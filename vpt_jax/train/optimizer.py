"""The study's optimizers: SGD with momentum or AdamW, cosine decay with linear warmup, by label.

Two forms of each choice the recipes differ in (`vpt_jax.recipe`): the warmup-cosine evaluated per
step (`schedule`) or once per epoch as the official `WarmupCosineSchedule` (`epoch_schedule`), and
AdamW as `optax.adamw` or as the official VPT code's own AdamW (`vpt_adamw`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from vpt_jax.tuning.rules import masked_optimizer


def learning_rate(base_lr: float, batch_size: int, scale_by_batch: bool) -> float:
    """The peak learning rate: `base_lr * batch_size / 256` when asked (the VPT code's rule)."""
    return base_lr * batch_size / 256 if scale_by_batch else base_lr


def schedule(peak: float, warmup_steps: int, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `peak`, then cosine decay to 0 at `total_steps`."""
    warmup_steps = min(warmup_steps, total_steps)
    if warmup_steps == 0:
        return optax.cosine_decay_schedule(peak, max(total_steps, 1))
    return optax.warmup_cosine_decay_schedule(
        0.0, peak, warmup_steps, max(total_steps, warmup_steps + 1)
    )


def epoch_schedule(
    peak: float, warmup_epochs: int, total_epochs: int, steps_per_epoch: int
) -> optax.Schedule:
    """The official `WarmupCosineSchedule`, a `LambdaLR` stepped once per epoch, at step level.

    The rate is constant within an epoch: epoch `e` (0-based) trains at `peak * e / warmup` while
    `e < warmup` (so the first epoch trains at rate 0), then at
    `peak * 0.5 * (1 + cos(pi * (e - warmup) / (total - warmup)))`.
    """
    warmup = float(warmup_epochs)
    span = float(max(1, total_epochs - warmup_epochs))

    def rate(count):
        epoch = (jnp.asarray(count) // max(steps_per_epoch, 1)).astype(jnp.float32)
        warm = epoch / max(1.0, warmup)
        cosine = jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(math.pi * (epoch - warmup) / span)))
        return peak * jnp.where(epoch < warmup, warm, cosine)

    return rate


class VptAdamWState(NamedTuple):
    count: jax.Array
    mu: Any
    nu: Any


def vpt_adamw(
    learning_rate: optax.ScalarOrSchedule,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-6,
    weight_decay: float = 0.0,
) -> optax.GradientTransformation:
    """The official VPT code's AdamW (`src/solver/optimizer.py`), as an optax transformation.

    Per leaf, at step t (from 1) with rate `lr`: `m = b1 m + (1 - b1) g`, `v = b2 v + (1 - b2) g^2`,
    `p' = p - lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`, then
    `p'' = p' - lr * wd * p'`. It differs from `optax.adamw` in two places: eps is added to
    `sqrt(v)` before the bias correction (optax: after), and the decay acts on the updated
    parameters `p'` (optax: on `p`).
    """
    rate: Callable[[jax.Array], jax.Array] = (
        learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    )

    def init(params):
        zeros = lambda: jax.tree_util.tree_map(jnp.zeros_like, params)
        return VptAdamWState(jnp.zeros((), jnp.int32), zeros(), zeros())

    def update(grads, state, params):
        if params is None:
            raise ValueError("vpt_adamw needs the parameters")
        count = state.count + 1
        lr = rate(state.count)
        mu = jax.tree_util.tree_map(lambda m, g: b1 * m + (1 - b1) * g, state.mu, grads)
        nu = jax.tree_util.tree_map(lambda v, g: b2 * v + (1 - b2) * g * g, state.nu, grads)
        t = count.astype(jnp.float32)
        step_size = lr * jnp.sqrt(1 - b2**t) / (1 - b1**t)

        def leaf(m, v, p):
            adam = -step_size * m / (jnp.sqrt(v) + eps)
            return adam - lr * weight_decay * (p + adam)

        updates = jax.tree_util.tree_map(leaf, mu, nu, params)
        return updates, VptAdamWState(count, mu, nu)

    return optax.GradientTransformation(init, update)


def make_optimizer(
    labels: Mapping[str, Any],
    *,
    name: str,
    lr: float,
    weight_decay: float,
    schedule_shape: optax.Schedule | None = None,
    momentum: float = 0.9,
    b1: float = 0.9,
    b2: float = 0.999,
    eps: float = 1e-8,
    grad_clip: float = 0.0,
    adamw: str = "optax",
) -> optax.GradientTransformation:
    """The optimizer over the whole parameter tree, driven by the strategy's labels.

    The learning rate and the weight decay are optimizer *state* (`optax.inject_hyperparams`),
    not constants of the compiled step: the runs of a grid search, which differ only in them,
    trace to the same program, so XLA's persistent compilation cache compiles it once per shape
    instead of once per run.

    Args:
      labels: label tree (frozen / decay / no_decay).
      name: `sgd` (momentum, L2 weight decay added to the gradient, as torch SGD) or `adamw`
        (decoupled weight decay).
      lr: the (peak) learning rate.
      weight_decay: applied to `decay` leaves only.
      schedule_shape: the rate at step `t` is `lr * schedule_shape(t)` (e.g. `schedule(1.0, ...)`);
        None: constant.
      momentum: SGD momentum.
      b1: AdamW beta1.
      b2: AdamW beta2.
      eps: AdamW epsilon.
      grad_clip: clip the global gradient norm to this first; 0 disables.
      adamw: `optax` (`optax.adamw`) or `vpt` (the official code's AdamW, `vpt_adamw`).
    """
    if name == "sgd":
        make = lambda rate, wd: optax.chain(
            optax.add_decayed_weights(wd), optax.sgd(rate, momentum=momentum)
        )
    elif name == "adamw" and adamw == "optax":
        make = lambda rate, wd: optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    elif name == "adamw" and adamw == "vpt":
        make = lambda rate, wd: vpt_adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)
    else:
        raise ValueError(f"unknown optimizer {name!r}")

    def build(learning_rate: jax.Array, weight_decay: jax.Array) -> optax.GradientTransformation:
        rate = learning_rate
        if schedule_shape is not None:
            rate = lambda count: learning_rate * schedule_shape(count)
        tx = masked_optimizer(labels, make, rate, weight_decay)
        return optax.chain(optax.clip_by_global_norm(grad_clip), tx) if grad_clip else tx

    return optax.inject_hyperparams(build)(learning_rate=lr, weight_decay=weight_decay)


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
    """An optimizer without its learning rate and weight decay, which are state (see above).

    Hashable: it is part of what the compiled train step is specialised on, so the runs of a grid
    (equal specs, other lr and weight decay) share one compiled program.
    """

    name: str  # sgd | adamw
    warmup_steps: int  # linear warmup from 0 over these steps
    total_steps: int  # cosine decay to 0 at this step
    momentum: float = 0.9
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 0.0
    steps_per_epoch: int = 0  # > 0: the rate changes once per epoch of this many steps
    adamw: str = "optax"  # optax | vpt (see make_optimizer)

    def shape(self) -> optax.Schedule:
        """The schedule with peak 1: per step, or per epoch when `steps_per_epoch` is set."""
        if self.steps_per_epoch:
            per = self.steps_per_epoch
            return epoch_schedule(1.0, self.warmup_steps // per, self.total_steps // per, per)
        return schedule(1.0, self.warmup_steps, self.total_steps)

    def build(
        self, labels: Mapping[str, Any], lr: float = 0.0, weight_decay: float = 0.0
    ) -> optax.GradientTransformation:
        """The optimizer; `lr` and `weight_decay` only seed the state `init` creates."""
        return make_optimizer(
            labels,
            name=self.name,
            lr=lr,
            weight_decay=weight_decay,
            schedule_shape=self.shape(),
            momentum=self.momentum,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            grad_clip=self.grad_clip,
            adamw=self.adamw,
        )

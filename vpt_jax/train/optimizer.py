"""The study's optimizers: SGD with momentum or AdamW, cosine decay with linear warmup, by label."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
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
    """
    if name == "sgd":
        make = lambda rate, wd: optax.chain(
            optax.add_decayed_weights(wd), optax.sgd(rate, momentum=momentum)
        )
    elif name == "adamw":
        make = lambda rate, wd: optax.adamw(rate, b1=b1, b2=b2, eps=eps, weight_decay=wd)
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

    def build(
        self, labels: Mapping[str, Any], lr: float = 0.0, weight_decay: float = 0.0
    ) -> optax.GradientTransformation:
        """The optimizer; `lr` and `weight_decay` only seed the state `init` creates."""
        return make_optimizer(
            labels,
            name=self.name,
            lr=lr,
            weight_decay=weight_decay,
            schedule_shape=schedule(1.0, self.warmup_steps, self.total_steps),
            momentum=self.momentum,
            b1=self.b1,
            b2=self.b2,
            eps=self.eps,
            grad_clip=self.grad_clip,
        )

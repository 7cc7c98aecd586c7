"""Probes on cached features: the frozen backbone runs once per split, not once per step.

A stage whose trainable leaves all sit in the head (the classifier and head-site additions such as
the MLP probe's layers), whose backbone runs deterministic (no backbone dropout, no token
additions such as prompts) and whose training images get no random augmentation, computes the same
backbone output for an example at every step. `on_features` computes those pooled features
(`pre_logits`) once at the stage's start, for the training split and for every evaluation split
(and its curve subset), keeps them on the devices, and trains and evaluates the head on them
(`TrainProgram.from_features`). The parameter tree, the optimizer, the batches, the step order and
the records are those of the end-to-end path; the numbers agree with it to float rounding (the
backbone's forward pass runs at other batch shapes). `train.cache_features=False` keeps the
end-to-end path.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vpt_jax.models.additions import HEAD
from vpt_jax.train import feed, step
from vpt_jax.train.setup import StagePlan
from vpt_jax.tuning.rules import FROZEN

log = logging.getLogger("vpt_jax")


def blocker(plan: StagePlan, program: step.TrainProgram) -> str | None:
    """Why a stage cannot train on cached features, or None when it can."""
    strategy, aug = plan.strategy, program.augmentation
    trunk = [a for a in strategy.additions if a.site != HEAD]
    if trunk:
        return f"it adds {', '.join(type(a).__name__ for a in trunk)} inside the backbone"
    if strategy.backbone_dropout:
        return "its backbone's dropout runs while training"
    head = (rf"{re.escape(strategy.layout.head)}/.*",)
    head += tuple(strategy.owned(a) for a in strategy.additions)
    trained = [path for path, label in program.labels if label != FROZEN]
    outside = [p for p in trained if not any(re.fullmatch(h, p) for h in head)]
    if outside:
        return f"it trains backbone parameters ({outside[0]}, ...)"
    if aug.flip or aug.crop_padding:
        return "its training images are augmented (data.flip / data.crop_padding)"
    return None


class FeatureSplit:
    """An evaluation split as its examples' pooled features: padded batches kept on the devices.

    It stands in for a `feed.EvalData` (`name`, `batches`, `curve`).
    """

    def __init__(self, name: str, batches: list[dict[str, jax.Array]], batch_size: int):
        self.name = name
        self._batches = batches
        self._batch_size = batch_size
        self.curve: FeatureSplit | None = None

    @classmethod
    def of(cls, data: feed.EvalData, params, program: step.EvalProgram, batch_size: int, mesh):
        """The features of every example of `data` (and of its curve subset)."""
        sharding = feed.batch_sharded(mesh)
        batches = [
            dict(batch, image=step.pooled_features(
                params, batch["image"], None, program=program, sharding=sharding
            ))
            for batch in data.batches(batch_size, mesh, keep=False)
        ]  # fmt: skip
        split = cls(data.name, batches, batch_size)
        if data.curve is data:
            split.curve = split
        elif data.curve is not None:
            split.curve = cls.of(data.curve, params, program, batch_size, mesh)
        return split

    def batches(self, batch_size: int, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
        if batch_size != self._batch_size:
            raise ValueError(f"features were batched by {self._batch_size}, not {batch_size}")
        yield from self._batches

    @property
    def num_examples(self) -> int:
        return int(sum(np.asarray(jax.device_get(b["mask"])).sum() for b in self._batches))


def on_features(plan: StagePlan, program: step.TrainProgram, params: Any, ctx) -> tuple[Any, Any]:
    """The stage's context and program on cached features when it allows them (else unchanged).

    `ctx` is the stage's `RunContext`; its training images become their features (same order, so
    the epoch's index batches pick the same examples) and its evaluation splits `FeatureSplit`s.
    """
    if not ctx.train.cache_features:
        return ctx, program
    why_not = blocker(plan, program)
    if why_not is not None:
        log.debug("stage %d runs its backbone every step: %s", plan.index + 1, why_not)
        return ctx, program
    settings, mesh = ctx.train, ctx.mesh
    features = program.evaluation()
    frozen = dataclasses.replace(features, from_features=False)
    train_features = _train_features(params, ctx, frozen, settings.eval_batch_size, mesh)
    evals = tuple(
        FeatureSplit.of(data, params, frozen, settings.eval_batch_size, mesh) for data in ctx.evals
    )
    log.info(
        "stage %d: the frozen backbone's features of %d training and %s evaluation examples "
        "computed once; the head trains on them (train.cache_features=False: end to end)",
        plan.index + 1, ctx.num_train, " + ".join(str(e.num_examples) for e in evals),
    )  # fmt: skip
    arrays = {"image": train_features, "label": ctx.train_arrays["label"]}
    ctx = dataclasses.replace(ctx, train_arrays=arrays, evals=evals)
    return ctx, dataclasses.replace(program, from_features=True)


def _train_features(params, ctx, program: step.EvalProgram, batch_size: int, mesh) -> jax.Array:
    """The pooled features of the training split, in its order, replicated like its images."""
    shard = feed.batch_sharded(mesh)
    steps = -(-ctx.num_train // batch_size)  # every example once, in order; the last batch padded
    indices = np.zeros(steps * batch_size, np.int32)
    indices[: ctx.num_train] = np.arange(ctx.num_train)
    parts = [
        step.pooled_features(
            params,
            ctx.train_arrays["image"],
            feed.global_array(batch, shard),
            program=program,
            sharding=shard,
        )
        for batch in indices.reshape(steps, batch_size)
    ]
    gather = jax.jit(
        lambda *xs: jnp.concatenate(xs)[: ctx.num_train], out_shardings=feed.replicated(mesh)
    )
    return gather(*parts)

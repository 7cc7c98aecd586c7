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

Runs of one process that differ only in what the head sees of them (a grid's learning rates and
weight decays, a final phase's seeds, linear against MLP) share the features: they are kept, up to
`REUSE_BYTES`, under a key of the run's data settings, the backbone's configuration, a hash of its
frozen parameters, the normalisation, the evaluation batch and the devices. A study worker, which
runs its runs in one process, computes them once per task and phase instead of once per run.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import re
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from vpt_jax import paths
from vpt_jax.models.additions import HEAD
from vpt_jax.train import feed, step
from vpt_jax.train.setup import StagePlan
from vpt_jax.tuning.rules import FROZEN

log = logging.getLogger("vpt_jax")
REUSE_BYTES = 2 * 1024**3  # features kept for later runs of this process (oldest dropped first)


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
    if aug.flip or aug.crop_padding or aug.crop_size:
        return "its training images are augmented (data.flip / data.crop_padding / resize_crop)"
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
    def nbytes(self) -> int:
        """Device bytes of its batches (and of a separate curve subset's)."""
        own = sum(v.nbytes for batch in self._batches for v in batch.values())
        curve = self.curve.nbytes if self.curve is not None and self.curve is not self else 0
        return own + curve

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
    if why_not is None and ctx.train_arrays is None:
        why_not = "its training split streams from the host"
    if why_not is not None:
        log.debug("stage %d runs its backbone every step: %s", plan.index + 1, why_not)
        return ctx, program
    settings, mesh = ctx.train, ctx.mesh
    frozen = dataclasses.replace(program.evaluation(), from_features=False)
    key = _key(program, params, ctx) if ctx.data_key else None
    found = _kept.get(key) if key is not None else None
    if found is not None:
        _kept.move_to_end(key)
        train_features, evals = found
        how = "reused from an earlier run of this process"
    else:
        train_features = _train_features(params, ctx, frozen, settings.eval_batch_size, mesh)
        evals = tuple(
            FeatureSplit.of(data, params, frozen, settings.eval_batch_size, mesh)
            for data in ctx.evals
        )
        if key is not None:
            _keep(key, train_features, evals)
        how = "computed once"
    log.info(
        "stage %d: the frozen backbone's features of %d training and %s evaluation examples %s; "
        "the head trains on them (train.cache_features=False: end to end)",
        plan.index + 1, ctx.num_train, " + ".join(str(e.num_examples) for e in evals), how,
    )  # fmt: skip
    arrays = {"image": train_features, "label": ctx.train_arrays["label"]}
    ctx = dataclasses.replace(ctx, train_arrays=arrays, evals=evals)
    return ctx, dataclasses.replace(program, from_features=True)


_kept: collections.OrderedDict[tuple, tuple[jax.Array, tuple[FeatureSplit, ...]]] = (
    collections.OrderedDict()
)


def _key(program: step.TrainProgram, params: Any, ctx) -> tuple:
    """What a stage's features depend on: data, backbone, its frozen weights, how they are read."""
    digest = hashlib.blake2b(digest_size=16)
    flat = paths.flatten(params)
    for path, label in program.labels:  # in the tree's order
        if label == FROZEN:
            leaf = np.asarray(jax.device_get(flat[path]))
            digest.update(f"{path}:{leaf.dtype}:{leaf.shape}".encode())
            digest.update(np.ascontiguousarray(leaf).tobytes())
    curves = (ctx.train.curve_every_epochs > 0, ctx.train.curve_examples)
    model = (type(program.model).__name__, program.model.config)
    mesh = (ctx.mesh.axis_names, tuple(d.id for d in ctx.mesh.devices.flat))
    normalization = program.augmentation.normalization
    return (ctx.data_key, model, digest.hexdigest(), normalization, ctx.train.eval_batch_size,
            curves, mesh)  # fmt: skip


def _keep(key: tuple, train_features: jax.Array, evals: tuple[FeatureSplit, ...]) -> None:
    size = train_features.nbytes + sum(e.nbytes for e in evals)
    if size > REUSE_BYTES:
        return
    _kept[key] = (train_features, evals)
    while sum(t.nbytes + sum(e.nbytes for e in es) for t, es in _kept.values()) > REUSE_BYTES:
        _kept.popitem(last=False)


def clear() -> None:
    """Forgets the features kept for later runs."""
    _kept.clear()


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

"""One stage of a run: its optimizer, its resumable epoch loop, its evaluations and records.

A run has one stage (or two for FT-then-PT). A stage trains the strategy's trainable leaves with the
compiled step of `vpt_jax.train.step`, evaluates after every `eval_every_epochs` epochs and at its
end (and, for loss curves, a fixed subset of each eval split every `curve_every_epochs`), saves its
trainable state to orbax checkpoints and appends one record per epoch. Started again it resumes
from its newest checkpoint; a stage that had finished returns its last record.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh

from vpt_jax import faults
from vpt_jax.data.pipeline import epoch_batch_indices
from vpt_jax.errors import UserError
from vpt_jax.train import features, feed, step
from vpt_jax.train.checkpoints import StageCheckpoints
from vpt_jax.train.optimizer import OptimizerSpec, learning_rate
from vpt_jax.train.records import RunLog
from vpt_jax.train.setup import StagePlan
from vpt_jax.train.train_data import TrainStream, step_inputs
from vpt_jax.tuning.budget import parameter_budget
from vpt_jax.tuning.rules import label_tree, merge, split, vpt_decay_labels

log = logging.getLogger("vpt_jax")
_METRIC_SUFFIXES = ("_loss", "_top1", "_accuracy")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


class RunStopped(Exception):
    """The run's `should_stop` said to stop (a study worker's claim on the run was taken over)."""


@dataclasses.dataclass(frozen=True)
class RunContext:
    """What every stage of a run shares: settings, devices, data on them, the workdir, the log."""

    train: ml_collections.ConfigDict  # the config's `train` section
    augmentation: step.Augmentation
    mesh: Mesh
    train_arrays: dict[str, jax.Array] | None  # the training split on the devices (or None:)
    num_train: int
    evals: tuple[feed.EvalData, ...]
    workdir: str
    log: RunLog
    num_stages: int
    should_stop: Callable[[], bool] = lambda: False  # checked before every epoch
    # The run's data settings; stages with equal ones share cached probe features (features.py).
    data_key: str = ""
    stream: TrainStream | None = None  # reads each step's examples when the split streams

    def checkpoint_dir(self, index: int) -> str:
        return os.path.join(self.workdir, "checkpoints", f"stage{index}")


@dataclasses.dataclass(frozen=True)
class Schedule:
    """A stage's learning-rate schedule in steps, and the optimizer it drives."""

    peak: float
    steps_per_epoch: int
    warmup_steps: int
    total_steps: int
    spec: OptimizerSpec

    @classmethod
    def create(cls, plan: StagePlan, num_train: int, batch_size: int) -> Schedule:
        o = plan.optimizer
        per_epoch = -(-num_train // batch_size)
        peak = learning_rate(o.lr, batch_size, o.scale_lr_by_batch)
        warmup, total = o.warmup_epochs * per_epoch, plan.epochs * per_epoch
        spec = OptimizerSpec(
            o.name, warmup, total, o.momentum, o.b1, o.b2, o.eps, o.grad_clip,
            steps_per_epoch=per_epoch if o.schedule_unit == "epoch" else 0, adamw=o.adamw,
        )  # fmt: skip
        return cls(peak, per_epoch, warmup, total, spec)

    def rate(self, step_count: int) -> float:
        """The learning rate of the step taken after `step_count` steps."""
        return float(self.peak * self.spec.shape()(step_count))


def train_stage(
    plan: StagePlan, model: Any, params: dict, ctx: RunContext
) -> tuple[dict, dict[str, float]]:
    """Trains one stage (resuming from its checkpoints); returns its params and last metrics."""
    rates = Schedule.create(plan, ctx.num_train, ctx.train.batch_size)
    program = train_program(plan, model, params, rates, ctx.augmentation, ctx.mesh)
    rep = feed.replicated(ctx.mesh)
    key = jax.random.fold_in(jax.random.key(ctx.train.seed), 1000 + plan.index)
    state = jax.device_put(
        step.TrainState.create(params, program.tx(rates.peak, plan.optimizer.weight_decay), key),
        rep,
    )
    counted = parameter_budget(plan.strategy, params)
    log.info(
        "stage %d/%d (%s): %s trainable of %s parameters, %s, peak lr %.4g, %d epochs x %d steps",
        plan.index + 1, ctx.num_stages, plan.strategy.name, f"{counted.tuned:,}",
        f"{counted.total:,}", plan.optimizer.name, rates.peak, plan.epochs, rates.steps_per_epoch,
    )  # fmt: skip
    checkpoints = StageCheckpoints(ctx.checkpoint_dir(plan.index))
    start = checkpoints.latest_epoch() or 0
    if start:
        state = _restore(checkpoints, start, state, program, rep)
        log.info("resumed stage %d from its epoch-%d checkpoint", plan.index + 1, start)
    if start < plan.epochs:  # a probe trains on the frozen backbone's features, computed once
        ctx, program = features.on_features(plan, program, params, ctx)
    row: dict[str, Any] | None = None
    started = time.time()
    for epoch in range(start + 1, plan.epochs + 1):
        if ctx.should_stop():
            raise RunStopped(f"stopped before epoch {epoch} of stage {plan.index + 1}")
        state, row = _epoch(plan, epoch, state, program, rates, checkpoints, ctx)
        eta = (time.time() - started) / (epoch - start) * (plan.epochs - epoch)
        _log_epoch(plan, row, eta)
    if row is None:  # the stage had finished before a restart: its last record has the metrics
        row = ctx.log.last_row(plan.index, plan.epochs)
        if row is None:  # resume_point only resumes from checkpoints whose epoch is recorded
            raise RuntimeError(f"stage {plan.index} finished but its last epoch has no record")
    checkpoints.close()
    metrics = {k: v for k, v in row.items() if k.endswith(_METRIC_SUFFIXES) and "_curve_" not in k}
    return jax.device_get(state.params), metrics


def train_program(
    plan: StagePlan, model, params, rates: Schedule, augmentation: step.Augmentation, mesh: Mesh
) -> step.TrainProgram:
    """The compiled step's specialisation for a stage: model, labels, optimizer, augmentation."""
    labels = label_tree(params, plan.strategy.rules)
    if plan.optimizer.decay_set == "vpt":
        labels = vpt_decay_labels(labels, plan.optimizer.name, plan.strategy.layout.head)
    return step.TrainProgram.create(
        model,
        labels,
        optimizer=rates.spec,
        backbone_train=plan.strategy.backbone_dropout,
        augmentation=augmentation,
        batch_sharding=feed.batch_sharded(mesh),
    )


def _restore(checkpoints, epoch: int, state, program: step.TrainProgram, rep):
    trainable, frozen = split(state.params, program.label_tree())
    like = jax.device_put(checkpoint_tree(state, trainable, 0), rep)
    restored = checkpoints.restore(epoch, like)
    return step.TrainState(
        step=restored["step"],
        params=merge(restored["trainable"], frozen),
        opt_state=restored["opt_state"],
        rng=restored["rng"],
    )


def _epoch(plan, epoch, state, program, rates: Schedule, checkpoints, ctx: RunContext):
    """Trains one epoch, evaluates when due, checkpoints when due, and records the epoch."""
    epoch_start = time.time()
    settings = ctx.train
    shard, rep = feed.batch_sharded(ctx.mesh), feed.replicated(ctx.mesh)
    indices, mask = epoch_batch_indices(
        ctx.num_train, settings.batch_size, seed=settings.seed, epoch=epoch + 1000 * plan.index
    )
    sums = jax.device_put(jnp.zeros(3, jnp.float32), rep)
    inputs = step_inputs(ctx.train_arrays, ctx.stream, indices, ctx.mesh)
    for s, (arrays, step_indices) in enumerate(inputs):
        state, sums = step.train_on_indices(
            state,
            sums,
            arrays,
            feed.global_array(step_indices, shard),
            feed.global_array(mask[s], shard),
            program=program,
        )
        if settings.log_every_steps and (s + 1) % settings.log_every_steps == 0:
            done = np.asarray(jax.device_get(sums))
            log.info("  epoch %d step %d: loss %.4f", epoch, s + 1, done[0] / done[2])
    loss_sum, correct, seen = (float(x) for x in jax.device_get(sums))
    train_loss = loss_sum / seen
    if not math.isfinite(train_loss):
        raise diverged(plan, epoch, train_loss, rates, checkpoints)
    train_seconds = time.time() - epoch_start
    metrics = {"train_loss": train_loss, "train_accuracy": correct / seen}
    metrics.update(_evaluations(plan, epoch, state.params, program, ctx))
    step_count = int(jax.device_get(state.step))
    row = {
        "stage": plan.index,
        "epoch": epoch,
        "step": step_count,
        "lr": rates.rate(step_count),
        "images_per_sec": seen / train_seconds,
        "epoch_seconds": time.time() - epoch_start,
        **metrics,
    }
    # The record first, then the checkpoint: a checkpoint proves its epoch was recorded, and a
    # record past the newest checkpoint is dropped and recomputed on resume (run.resume_point).
    ctx.log.append(row)
    faults.point("metrics_row")
    if checkpoint_due(settings.checkpoint_every_epochs, epoch, plan, ctx.num_stages):
        trained, _ = split(state.params, program.label_tree())
        checkpoints.save(epoch, checkpoint_tree(state, trained, epoch))
        faults.point("checkpoint")
    return state, row


def checkpoint_due(every: int, epoch: int, plan: StagePlan, num_stages: int) -> bool:
    """Whether a stage saves its state after `epoch`: every `every` epochs and after its last.
    With `every` 0 only a stage that another stage follows saves, after its last epoch (a resumed
    run restores it instead of training it again); a killed run otherwise starts over."""
    last = epoch == plan.epochs
    if every == 0:
        return last and plan.index + 1 < num_stages
    return epoch % every == 0 or last


def diverged(plan, epoch: int, loss: float, rates: Schedule, checkpoints) -> TrainingDiverged:
    """The error of a stage whose epoch ended with a non-finite training loss."""
    latest = checkpoints.latest_epoch()
    kept = (
        f"the last good checkpoint (epoch {latest}) is kept in {checkpoints.directory}"
        if latest
        else "no checkpoint was kept (train.checkpoint_every_epochs=0)"
    )
    return TrainingDiverged(
        f"training diverged: the loss is {loss} in epoch {epoch} of stage "
        f"{plan.index + 1} (learning rate peak {rates.peak:.4g}); {kept}; lower "
        "--config.optimizer.lr and run again with a new --workdir, or with "
        "--config.train.move_aside_other_run=True to keep this run beside the new one"
    )


def _evaluations(plan, epoch: int, params, program, ctx: RunContext) -> dict[str, float]:
    eval_program = program.evaluation()
    measure = lambda data, prefix: [
        evaluate(eval_program, params, data, ctx.train, ctx.mesh, prefix)
    ]
    return due_evaluations(plan, epoch, ctx, measure)[0]


def due_evaluations(
    plan, epoch: int, ctx: RunContext, measure, models: int = 1
) -> list[dict[str, float]]:
    """The evaluations due after an epoch: each eval split in full every `eval_every_epochs`
    epochs and after the stage's last; its curve subset every `curve_every_epochs` epochs and after
    the last (`{split}_curve_*`; the full split's numbers where the subset is the whole split).

    `measure(data, prefix)` evaluates on a split and returns one metrics dict per model trained
    (one for a run, one per member for a grid trained together); so does this, for `models`.
    """
    settings = ctx.train
    last = epoch == plan.epochs
    every, curve_every = settings.eval_every_epochs, settings.curve_every_epochs
    full_due = last or (every > 0 and epoch % every == 0)
    curve_due = curve_every > 0 and (last or epoch % curve_every == 0)
    outs: list[dict[str, float]] | None = None
    for data in ctx.evals:
        found = []
        if full_due:
            found.append(measure(data, None))
        if curve_due and data.curve is not None:
            if data.curve is data and full_due:
                curve = [{k: m[f"{data.name}{k}"] for k in ("_loss", "_top1")} for m in found[0]]
            else:
                curve = measure(data.curve, "")
            found.append([{f"{data.name}_curve{k}": v for k, v in m.items()} for m in curve])
        for per_model in found:
            outs = outs or [{} for _ in per_model]
            for out, metrics in zip(outs, per_model, strict=True):
                out.update(metrics)
    return outs or [{} for _ in range(models)]


def evaluate(
    program: step.EvalProgram, params, data: feed.EvalData, settings, mesh: Mesh, prefix=None
):
    """`{prefix}_loss` and `{prefix}_top1` (prefix: the split's name) over every example of an
    evaluation split."""
    sums = jax.device_put(jnp.zeros(3, jnp.float32), feed.replicated(mesh))
    for batch in data.batches(settings.eval_batch_size, mesh):
        sums = step.accumulate_eval(sums, params, batch, program=program)
    loss_sum, correct, seen = (float(x) for x in jax.device_get(sums))
    name = data.name if prefix is None else prefix
    return {f"{name}_loss": loss_sum / seen, f"{name}_top1": correct / seen}


def checkpoint_tree(state, trainable: Any, epoch: int) -> dict[str, Any]:
    return {
        "trainable": trainable,
        "opt_state": state.opt_state,
        "step": state.step,
        "rng": state.rng,
        "epoch": jnp.asarray(epoch, jnp.int32),
    }


def _log_epoch(plan: StagePlan, row: dict[str, Any], eta: float) -> None:
    evaluated = {k: v for k, v in row.items() if k.endswith(("_loss", "_top1"))}
    log.info(
        "stage %d epoch %d/%d  loss %.4f  acc %.3f  %s  %.0f img/s  %s left",
        plan.index + 1,
        row["epoch"],
        plan.epochs,
        row["train_loss"],
        row["train_accuracy"],
        "  ".join(f"{k} {v:.4f}" for k, v in evaluated.items() if not k.startswith("train")),
        row["images_per_sec"],
        duration(eta),
    )


def duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"

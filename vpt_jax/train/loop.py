"""One training run: data on the device, jitted steps over a device mesh, resumable stages, records.

`train_and_evaluate(config, workdir)` is the whole contract. A run writes `config.json`, per-epoch
`metrics.jsonl` (and TensorBoard summaries), orbax checkpoints of its trainable state, and at the end
`artifact.npz` (the tuned leaves) and `result.json`. Started again on the same workdir it resumes
from the last checkpoint (ending with the same metrics as an uninterrupted run); a finished run is
not redone.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import logging
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vpt_jax import config as config_lib
from vpt_jax import paths
from vpt_jax.data import ArraySplit, DataSource, get_dataset, preprocess_batch
from vpt_jax.data.pipeline import epoch_batch_indices
from vpt_jax.data.splits import one_shot_indices
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import load_pretrained, read_npz, save_npz, to_canonical
from vpt_jax.models.vit import init_params
from vpt_jax.train import feed, records
from vpt_jax.train.checkpoints import StageCheckpoints
from vpt_jax.train.optimizer import learning_rate, make_optimizer, schedule
from vpt_jax.train.step import TrainState, eval_step, train_step
from vpt_jax.tuning.artifact import export_artifact
from vpt_jax.tuning.budget import Budget
from vpt_jax.tuning.rules import count, label_tree, merge, split
from vpt_jax.tuning.strategies import Strategy

log = logging.getLogger("vpt_jax")
# Times the train step's Python body ran, i.e. was traced (tests assert one trace per stage).
TRACE_COUNTS: collections.Counter[str] = collections.Counter()
EVAL_CACHE_BYTES = 2 * 1024**3  # evaluation splits up to this size are decoded once and kept
# Fields that do not change what a run computes: a resumed run may differ in them.
_NON_SEMANTIC = {("train", "log_every_steps"), ("train", "checkpoint_every_epochs")}


_METRIC_SUFFIXES = ("_loss", "_top1", "_accuracy")


class TrainingDiverged(UserError):
    """The loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """What one stage trains and with which optimizer settings."""

    index: int
    strategy: Strategy
    optimizer: str
    lr: float
    weight_decay: float
    warmup_epochs: int
    epochs: int


def stage_plans(c: ml_collections.ConfigDict, strategy: Strategy) -> list[StagePlan]:
    """The stages of a run: the last uses `optimizer`/`train`, earlier ones `ft_stage`."""
    stages = strategy.stages or (strategy,)
    plans = []
    for i, stage in enumerate(stages):
        if i < len(stages) - 1:
            f = c.ft_stage
            plans.append(
                StagePlan(i, stage, f.optimizer, f.lr, f.weight_decay, f.warmup_epochs, f.epochs)
            )
        else:
            o = c.optimizer
            name = o.name or stage.optimizer
            plans.append(
                StagePlan(i, stage, name, o.lr, o.weight_decay, o.warmup_epochs, c.train.epochs)
            )
    return plans


def _semantic(config_dict: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config_dict.items()}
    for section, field in _NON_SEMANTIC:
        out.get(section, {}).pop(field, None)
    return out


def prepare_workdir(workdir: str, c: ml_collections.ConfigDict) -> dict | None:
    """Checks the workdir against the config; returns the result of a finished run, else None."""
    os.makedirs(workdir, exist_ok=True)
    config_path = os.path.join(workdir, records.CONFIG)
    current = config_lib.to_dict(c)
    if os.path.exists(config_path):
        previous = records.read_json(config_path)
        if _semantic(previous) != _semantic(records.jsonable(current)):
            raise UserError(
                f"{workdir} holds a run with another config ({config_path}); use a new --workdir "
                "or delete that one"
            )
        result_path = os.path.join(workdir, records.RESULT)
        if os.path.exists(result_path):
            return records.read_json(result_path)
    elif jax.process_index() == 0:
        records.write_json(config_path, current)
    return None


def train_and_evaluate(c: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates one run as the config says; returns its result record."""
    mesh = feed.make_mesh()
    config_lib.validate(c, mesh.size)
    finished = prepare_workdir(workdir, c)
    if finished is not None:
        log.info("%s already finished: %s", workdir, _summary(finished["final"]))
        return finished
    start_time = time.time()

    data_dir = c.data.data_dir or None
    size = c.model.image_size
    train_data = get_dataset(
        c.data.dataset, c.data.train_split, data_dir=data_dir, image_size=size, seed=c.data.seed
    )
    eval_sources = []
    for split_name in c.data.eval_splits:
        source = get_dataset(
            c.data.dataset, split_name, data_dir=data_dir, image_size=size, seed=c.data.seed
        )
        if c.data.shots and split_name.startswith("val"):  # k-shot selection on k-shot validation
            few = few_shot(source.materialize(), c.data.shots, c.data.seed + 1)
            source = DataSource.from_arrays(few)
        eval_sources.append(feed.EvalData(split_name, source, EVAL_CACHE_BYTES))
    checkpoint_flat = None
    if c.model.checkpoint:
        checkpoint_flat, _ = to_canonical(read_npz(c.model.checkpoint))
    vit = config_lib.vit_config(c, checkpoint_flat)
    strategy = config_lib.strategy(c, vit.num_layers)
    plans = stage_plans(c, strategy)
    train = train_data.materialize()
    if c.data.shots:
        train = few_shot(train, c.data.shots, c.data.seed)
    num_classes = train.num_classes
    log.info(
        "%s %s: %d training examples, %d classes; strategy %s on ViT (hidden %d, %d layers, patch "
        "%d) at %dx%d on %d device(s)",
        c.data.dataset,
        c.data.train_split,
        len(train),
        num_classes,
        strategy.name,
        vit.hidden_size,
        vit.num_layers,
        vit.patch_size,
        size,
        size,
        mesh.size,
    )

    key = jax.random.key(c.train.seed)
    first = plans[0].strategy.build_model(vit, num_classes)
    if c.model.checkpoint:
        base = load_pretrained(c.model.checkpoint, first, rng=jax.random.fold_in(key, 0))
    else:
        log.warning("model.checkpoint is empty: training from random initialisation")
        base = jax.device_get(init_params(first, jax.random.fold_in(key, 0)))

    writer = _summary_writer(workdir)
    train_arrays = {
        "image": feed.global_array(train.images, feed.replicated(mesh)),
        "label": feed.global_array(train.labels.astype(np.int32), feed.replicated(mesh)),
    }
    params: dict[str, Any] = base
    metrics_log = None
    if jax.process_index() == 0:
        metrics_log = records.MetricsLog(
            os.path.join(workdir, records.METRICS), _resume_point(workdir, len(plans))
        )
    final_metrics: dict[str, float] = {}
    for plan in plans:
        model = plan.strategy.build_model(vit, num_classes)
        if plan.index:  # later stages add parameters (prompts) to the previous stage's
            params = _carry_over(
                params, init_params(model, jax.random.fold_in(key, plan.index + 1))
            )
        params, final_metrics, metrics_log = _train_stage(
            c, plan, model, params, train_arrays, len(train), eval_sources, mesh, workdir,
            writer, metrics_log, len(plans),
        )  # fmt: skip

    final_strategy = strategy
    tuned = Budget(*_tuned_and_total(final_strategy, params))
    result = {
        "config": config_lib.to_dict(c),
        "final": final_metrics,
        "num_classes": num_classes,
        "train_examples": len(train),
        "tuned_parameters": tuned.tuned,
        "total_parameters": tuned.total,
        "tuned_percent": tuned.percent,
        "wall_time_s": time.time() - start_time,
    }
    if jax.process_index() == 0:
        export_artifact(
            os.path.join(workdir, records.ARTIFACT),
            params,
            strategy=final_strategy,
            config=vit,
            num_classes=num_classes,
            base_params=base,
            extra={
                "dataset": c.data.dataset,
                "train_split": c.data.train_split,
                "image_size": c.model.image_size,
                "normalization": c.data.normalization,
                **final_metrics,
            },
        )
        if c.train.export_checkpoint:
            save_npz(os.path.join(workdir, records.CHECKPOINT), params)
        records.write_json(os.path.join(workdir, records.RESULT), records.jsonable(result))
    writer.close()
    log.info("finished %s: %s", workdir, _summary(final_metrics))
    return result


def few_shot(split: ArraySplit, shots: int, seed: int) -> ArraySplit:
    """`shots` examples per class of a split, drawn reproducibly by `seed` (the one-shot study)."""
    return split.subset(
        one_shot_indices(split.labels, seed, shots), name=f"{split.name}:{shots}shot"
    )


def _resume_point(workdir: str, num_stages: int) -> tuple[int, int] | None:
    """The (stage, epoch) of the newest checkpoint: metrics after it are recomputed on resume."""
    point = None
    for index in range(num_stages):
        directory = os.path.join(workdir, "checkpoints", f"stage{index}")
        if os.path.isdir(directory):
            epoch = StageCheckpoints(directory).latest_epoch()
            if epoch:
                point = (index, epoch)
    return point


def _tuned_and_total(strategy: Strategy, params: dict) -> tuple[int, int]:
    from vpt_jax.tuning.artifact import tuned_paths

    flat = paths.flatten(params)
    tuned = sum(int(np.size(flat[k])) for k in tuned_paths(strategy, params))
    return tuned, sum(int(np.size(v)) for v in flat.values())


def _carry_over(previous: dict, fresh: dict) -> dict:
    """Parameters of a stage: the previous stage's where they exist, fresh ones (prompts) elsewhere."""
    prev = paths.flatten(previous)
    return paths.unflatten({k: prev.get(k, v) for k, v in paths.flatten(fresh).items()})


def _summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("top1"))


def _summary_writer(workdir: str):
    from clu import metric_writers

    if jax.process_index() != 0:
        return metric_writers.MultiWriter([])
    return metric_writers.SummaryWriter(os.path.join(workdir, "tensorboard"))


def _train_stage(
    c, plan, model, params, train_arrays, num_train, eval_sources, mesh, workdir, writer,
    metrics_log, num_stages,
):  # fmt: skip
    """Trains one stage (resuming from its checkpoints); returns params, last metrics, the log."""
    labels = label_tree(params, plan.strategy.rules)
    batch = c.train.batch_size
    steps_per_epoch = -(-num_train // batch)
    peak = learning_rate(plan.lr, batch, c.optimizer.scale_lr_by_batch)
    warmup_steps, total_steps = plan.warmup_epochs * steps_per_epoch, plan.epochs * steps_per_epoch
    lr_schedule = schedule(peak, warmup_steps, total_steps)  # for the logs; the step reads state
    o = c.optimizer
    tx = make_optimizer(
        labels,
        name=plan.optimizer,
        lr=peak,
        weight_decay=plan.weight_decay,
        schedule_shape=schedule(1.0, warmup_steps, total_steps),
        momentum=o.momentum,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        grad_clip=o.grad_clip,
    )
    rep, shard = feed.replicated(mesh), feed.batch_sharded(mesh)
    key = jax.random.fold_in(jax.random.key(c.train.seed), 1000 + plan.index)
    state = jax.device_put(TrainState.create(params, tx, key), rep)
    trainable, frozen = split(state.params, labels)
    log.info(
        "stage %d/%d (%s): %s trainable of %s parameters, %s, peak lr %.4g, %d epochs x %d steps",
        plan.index + 1,
        num_stages,
        plan.strategy.name,
        f"{count(trainable):,}",
        f"{count(state.params):,}",
        plan.optimizer,
        peak,
        plan.epochs,
        steps_per_epoch,
    )

    checkpoints = StageCheckpoints(os.path.join(workdir, "checkpoints", f"stage{plan.index}"))
    start = checkpoints.latest_epoch() or 0
    if start:
        like = _checkpoint_tree(state, trainable, 0)
        restored = checkpoints.restore(start, jax.device_put(like, rep))
        state = TrainState(
            step=restored["step"],
            params=merge(restored["trainable"], frozen),
            opt_state=restored["opt_state"],
            rng=restored["rng"],
        )
        log.info("resumed stage %d from its epoch-%d checkpoint", plan.index + 1, start)

    pre = functools.partial(
        preprocess_batch,
        normalization=c.data.normalization,
        flip=c.data.flip,
        crop_padding=c.data.crop_padding,
    )
    step_fn = jax.jit(
        functools.partial(
            _train_on_indices,
            apply_fn=model.apply,
            tx=tx,
            labels=labels,
            backbone_train=plan.strategy.backbone_dropout,
            preprocess=pre,
            batch_sharding=shard,
        ),
        donate_argnums=(0, 1),
    )
    eval_fn = jax.jit(
        functools.partial(
            _eval_accumulate,
            apply_fn=model.apply,
            preprocess=functools.partial(preprocess_batch, normalization=c.data.normalization),
        ),
        donate_argnums=(0,),
    )
    metrics: dict[str, float] = {}
    started = time.time()
    for epoch in range(start + 1, plan.epochs + 1):
        epoch_start = time.time()
        indices, mask = epoch_batch_indices(
            num_train, batch, seed=c.train.seed, epoch=epoch + 1000 * plan.index
        )
        sums = jax.device_put(jnp.zeros(3, jnp.float32), rep)
        for s in range(len(indices)):
            state, sums = step_fn(
                state,
                sums,
                train_arrays,
                feed.global_array(indices[s], shard),
                feed.global_array(mask[s], shard),
            )
            if c.train.log_every_steps and (s + 1) % c.train.log_every_steps == 0:
                done = np.asarray(jax.device_get(sums))
                log.info("  epoch %d step %d: loss %.4f", epoch, s + 1, done[0] / done[2])
        loss_sum, correct, seen = (float(x) for x in jax.device_get(sums))
        train_loss = loss_sum / seen
        if not math.isfinite(train_loss):
            last = checkpoints.latest_epoch()
            raise TrainingDiverged(
                f"training diverged: the loss is {train_loss} in epoch {epoch} of stage "
                f"{plan.index + 1} (learning rate peak {peak:.4g}); the last good checkpoint "
                f"(epoch {last}) is kept in {checkpoints.directory}; lower optimizer.lr"
            )
        train_seconds = time.time() - epoch_start
        metrics = {"train_loss": train_loss, "train_accuracy": correct / seen}
        if epoch % c.train.eval_every_epochs == 0 or epoch == plan.epochs:
            for data in eval_sources:
                metrics.update(
                    _evaluate(eval_fn, state.params, data, c.train.eval_batch_size, mesh)
                )
        epoch_seconds = time.time() - epoch_start
        row = {
            "stage": plan.index,
            "epoch": epoch,
            "step": int(jax.device_get(state.step)),
            "lr": float(lr_schedule(int(jax.device_get(state.step)))),
            "images_per_sec": seen / train_seconds,
            "epoch_seconds": epoch_seconds,
            **metrics,
        }
        if epoch % c.train.checkpoint_every_epochs == 0 or epoch == plan.epochs:
            trained, _ = split(state.params, labels)
            checkpoints.save(epoch, _checkpoint_tree(state, trained, epoch))
        if metrics_log is not None:
            metrics_log.append(row)
            scalars = {k: v for k, v in row.items() if k not in ("stage", "epoch", "step")}
            writer.write_scalars(row["step"], scalars)
        eta = (time.time() - started) / (epoch - start) * (plan.epochs - epoch)
        log.info(
            "stage %d epoch %d/%d  loss %.4f  acc %.3f  %s  %.0f img/s  %s left",
            plan.index + 1,
            epoch,
            plan.epochs,
            train_loss,
            metrics["train_accuracy"],
            "  ".join(f"{k} {v:.4f}" for k, v in metrics.items() if not k.startswith("train")),
            row["images_per_sec"],
            _duration(eta),
        )
    if not metrics:  # the stage had finished before a restart: its last record has the metrics
        rows = records.read_metrics(os.path.join(workdir, records.METRICS))
        last = [r for r in rows if r["stage"] == plan.index and r["epoch"] == plan.epochs]
        metrics = (
            {k: v for k, v in last[-1].items() if k.endswith(_METRIC_SUFFIXES)} if last else {}
        )
    checkpoints.close()
    return jax.device_get(state.params), metrics, metrics_log


def _checkpoint_tree(state: TrainState, trainable: Any, epoch: int) -> dict[str, Any]:
    return {
        "trainable": trainable,
        "opt_state": state.opt_state,
        "step": state.step,
        "rng": state.rng,
        "epoch": jnp.asarray(epoch, jnp.int32),
    }


def _train_on_indices(
    state, sums, train_arrays, indices, mask, *, apply_fn, tx, labels, backbone_train, preprocess,
    batch_sharding,
):  # fmt: skip
    """Gathers the step's examples from the on-device split, trains, and accumulates sums."""
    TRACE_COUNTS["train_step"] += 1
    gather = lambda x: jax.lax.with_sharding_constraint(x[indices], batch_sharding)
    aug_rng = jax.random.fold_in(state.rng, 1)
    batch = {
        "image": gather(train_arrays["image"]),
        "label": gather(train_arrays["label"]),
        "mask": mask,
    }
    state, metrics = train_step(
        state,
        batch,
        apply_fn=apply_fn,
        tx=tx,
        labels=labels,
        backbone_train=backbone_train,
        preprocess=lambda images: preprocess(images, rng=aug_rng),
    )
    n = jnp.sum(mask.astype(jnp.float32))
    return state, sums + jnp.stack([metrics["loss"] * n, metrics["accuracy"] * n, n])


def _eval_accumulate(sums, params, batch, *, apply_fn, preprocess):
    out = eval_step(params, batch, apply_fn=apply_fn, preprocess=preprocess)
    return sums + jnp.stack([out["loss_sum"], out["correct"], out["count"]])


def _evaluate(eval_fn, params, data: feed.EvalData, batch_size: int, mesh) -> dict[str, float]:
    sums = jax.device_put(jnp.zeros(3, jnp.float32), feed.replicated(mesh))
    for batch in data.batches(batch_size, mesh):
        sums = eval_fn(sums, params, batch)
    loss_sum, correct, seen = (float(x) for x in jax.device_get(sums))
    return {f"{data.name}_loss": loss_sum / seen, f"{data.name}_top1": correct / seen}


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"

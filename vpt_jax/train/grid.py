"""Runs that differ only in learning rate, weight decay or seed, trained together as one program.

A grid search's runs (and a final phase's seeds) share the backbone, the data, the strategy, the
schedule's shape and every compiled shape; they differ in the learning rate and weight decay (both
optimizer state, `vpt_jax.train.optimizer`) and in the seed (the head's and prompts'
initialisation, the batch order, dropout and augmentation). `train_grid` trains such runs at once:
their trainable leaves, optimizer states, step counters and keys are stacked on a leading member
axis and one compiled step (`jax.vmap` of the single-run step) updates them all, with the frozen
part of the tree (the backbone, identical in every member) held once. Each epoch reads the
training split once for all members (each gathers its own batch order from it), and each
evaluation streams every split once for all members. A probe's cached features
(`vpt_jax.train.features`) are computed once for the whole grid.

Each member writes exactly what `train_and_evaluate` writes in its workdir: `config.json`, the
same per-epoch records, orbax checkpoints of its own trainable state, `artifact.npz` and
`result.json`. So a killed grid resumes member by member on the single-run path, and a member's
numbers equal its single run's to float rounding (the batched matmuls may sum in another order;
tests/test_grid.py states the tolerance). Members that diverge or whose `should_stop` says stop
leave the grid; the others go on.

Members are trained in chunks that fit the device's memory (`members_that_fit`). Runs a grid
cannot take (a finished run, a partly trained one, a multi-stage strategy, members whose frozen
weights differ) train one at a time through `train_and_evaluate`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from vpt_jax import faults, recipe
from vpt_jax.data.pipeline import epoch_batch_indices
from vpt_jax.train import features, feed, records, step
from vpt_jax.train.checkpoints import StageCheckpoints
from vpt_jax.train.grid_step import (
    GridState,
    grid_accumulate_eval,
    grid_train_on_indices,
    member,
    members_that_fit,
    stack,
)
from vpt_jax.train.run import (
    RunStopped,
    TrainingDiverged,
    initial_params,
    run_context,
    run_result,
    summary,
    train_and_evaluate,
    write_outputs,
)
from vpt_jax.train.setup import RunSetup, build_run, open_data
from vpt_jax.train.stage import (
    RunContext,
    Schedule,
    checkpoint_due,
    checkpoint_tree,
    diverged,
    due_evaluations,
    train_program,
)
from vpt_jax.train.train_data import step_inputs
from vpt_jax.train.workdir import check_workdir, resume_point, start_workdir
from vpt_jax.tuning.rules import merge, split
from vpt_jax.tuning.strategies import STRATEGIES, get_strategy

log = logging.getLogger("vpt_jax")
# What members of a grid may differ in (everything else of their configs is equal).
MEMBER_FIELDS = (("optimizer", "lr"), ("optimizer", "weight_decay"), ("train", "seed"))
Outcome = dict[str, Any] | TrainingDiverged | RunStopped


def batch_key(c: ml_collections.ConfigDict) -> str:
    """Runs with equal keys can train together: their resolved configs are equal but for
    `MEMBER_FIELDS`, and their weight decays train with the same optimizer (the reference recipe
    trains AdamW without decay as SGD)."""
    r = recipe.resolve(c)
    o, name = r.optimizer, r.strategy.name
    declared = get_strategy(name).final.optimizer if name in STRATEGIES else "sgd"
    trained = recipe.effective_optimizer(
        o.name or declared,
        o.weight_decay,
        fixed_adamw_decay=o.fixed_adamw_decay,
        sgd_when_no_decay=o.sgd_when_no_decay,
    )[0]
    d = records.jsonable(r.to_dict())
    for section, field in MEMBER_FIELDS:
        d[section].pop(field, None)
    d["train"].pop("move_aside_other_run", None)
    d["optimizer"]["trained_as"] = trained
    return json.dumps(d, sort_keys=True)


def train_grid(
    configs: Sequence[ml_collections.ConfigDict],
    workdirs: Sequence[str],
    *,
    should_stop: Sequence[Callable[[], bool]] | None = None,
    max_members: int = 0,
) -> list[Outcome]:
    """Trains runs of one `batch_key` together; returns each run's result record, or the
    `TrainingDiverged` / `RunStopped` that ended it.

    Args:
      configs: the runs' configs (`vpt_jax.config.base_config`).
      workdirs: one directory per run, as `train_and_evaluate` takes it.
      should_stop: per run, asked before every epoch (a study worker: "my claim was taken over").
      max_members: at most this many runs train at once; 0: as many as fit the device's memory.
    """
    if len(configs) != len(workdirs):
        raise ValueError(f"{len(configs)} configs for {len(workdirs)} workdirs")
    keys = {batch_key(c) for c in configs}
    if len(keys) > 1:
        raise ValueError("train_grid's runs must differ only in lr, weight decay and seed")
    stops = list(should_stop) if should_stop is not None else [lambda: False] * len(configs)
    mesh = feed.make_mesh()
    first = build_run(configs[0], mesh.size)
    setups = [first] + [build_run(c, mesh.size, checkpoint=first.checkpoint) for c in configs[1:]]
    outcomes: list[Outcome | None] = [None] * len(configs)
    together = []
    for i, (setup, workdir) in enumerate(zip(setups, workdirs, strict=True)):
        why_not = _single_reason(setup, workdir)
        if why_not is None:
            together.append(i)
        else:
            log.info("%s trains on its own: %s", workdir, why_not)
            outcomes[i] = train_one(configs[i], workdir, stops[i])
    if len(together) == 1:
        i = together[0]
        outcomes[i] = train_one(configs[i], workdirs[i], stops[i])
    elif together:
        members = [_Member(setups[i], workdirs[i], stops[i]) for i in together]
        for i, outcome in zip(together, _train_members(members, mesh, max_members), strict=True):
            outcomes[i] = outcome
    return outcomes  # type: ignore[return-value]


@dataclasses.dataclass
class _Member:
    setup: RunSetup
    workdir: str
    should_stop: Callable[[], bool]
    base: Any = None  # its initial parameters
    ctx: RunContext | None = None
    checkpoints: StageCheckpoints | None = None
    rates: Schedule | None = None
    outcome: Outcome | None = None  # set when it leaves the grid
    row: dict[str, Any] | None = None  # its last record

    @property
    def config(self) -> ml_collections.ConfigDict:
        return self.setup.config

    @property
    def active(self) -> bool:
        return self.outcome is None


def train_one(c, workdir: str, stop: Callable[[], bool]) -> Outcome:
    """`train_and_evaluate`, with a divergence or a stop returned as the run's outcome."""
    try:
        return train_and_evaluate(c, workdir, should_stop=stop)
    except (TrainingDiverged, RunStopped) as e:
        return e


def _single_reason(setup: RunSetup, workdir: str) -> str | None:
    """Why a run cannot join a grid (None: it can)."""
    if len(setup.stages) > 1:
        return f"strategy {setup.strategy.name} has {len(setup.stages)} stages"
    if check_workdir(workdir, setup.config) is not None:
        return "it has finished"
    if os.path.isdir(workdir) and resume_point(workdir, 1) is not None:
        return "it resumes from its checkpoint"
    return None


def _train_members(members: list[_Member], mesh, max_members: int) -> list[Outcome]:
    """Trains members in chunks that fit; falls back to single runs if their backbones differ."""
    c = members[0].config
    data = open_data(c, members[0].setup.dataset)
    plan = members[0].setup.stages[0]
    model = plan.strategy.build_model(members[0].setup.backbone, data.train.num_classes)
    for m in members:
        key = jax.random.fold_in(jax.random.key(m.config.train.seed), 0)
        m.base = initial_params(m.setup, model, key)
    labels = train_program(
        plan, model, members[0].base, _rates(members[0], data), step.Augmentation(), mesh
    ).label_tree()
    frozen = split(members[0].base, labels)[1]
    if any(not _equal(frozen, split(m.base, labels)[1]) for m in members[1:]):
        log.info("the runs' frozen weights differ (no pretrained checkpoint?): one at a time")
        return [train_one(m.config, m.workdir, m.should_stop) for m in members]
    fit = members_that_fit(members[0].setup, members[0].base, labels, c.train.batch_size, mesh)
    size = min(fit, max_members) if max_members else fit
    out: list[Outcome] = []
    for start in range(0, len(members), max(1, size)):
        chunk = members[start : start + max(1, size)]
        if len(chunk) == 1:
            log.info("training run %d of %d on its own", start + 1, len(members))
            m = chunk[0]
            out.append(train_one(m.config, m.workdir, m.should_stop))
            continue
        log.info(
            "training %d runs together (%d-%d of %d; up to %d fit in memory)",
            len(chunk), start + 1, start + len(chunk), len(members), fit,
        )  # fmt: skip
        out.extend(_train_chunk(chunk, model, frozen, data, mesh))
    return out


def _rates(m: _Member, data) -> Schedule:
    return Schedule.create(m.setup.stages[0], len(data.train), m.config.train.batch_size)


def _equal(a, b) -> bool:
    fa, fb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(fa) == len(fb) and all(
        x.shape == y.shape and np.array_equal(np.asarray(x), np.asarray(y))
        for x, y in zip(fa, fb, strict=True)
    )


def _train_chunk(members: list[_Member], model, frozen, data, mesh) -> list[Outcome]:
    started = time.time()
    plan = members[0].setup.stages[0]
    for m in members:
        start_workdir(m.workdir, m.config)
        m.ctx = run_context(m.config, m.setup, data, mesh, m.workdir) if m is members[0] else None
    base_ctx = members[0].ctx
    for m in members:
        m.rates = _rates(m, data)
        m.ctx = dataclasses.replace(
            base_ctx,
            train=m.config.train,
            workdir=m.workdir,
            log=m.ctx.log if m.ctx else records.RunLog(m.workdir, None, writes=_writes()),
            should_stop=m.should_stop,
        )
        m.checkpoints = StageCheckpoints(m.ctx.checkpoint_dir(0))
    programs = [
        train_program(m.setup.stages[0], model, m.base, m.rates, base_ctx.augmentation, mesh)
        for m in members
    ]
    if any(p != programs[0] for p in programs) or len({m.rates.spec for m in members}) > 1:
        raise ValueError("the runs of a grid must compile to one program (see batch_key)")
    program = programs[0]
    states = [
        step.TrainState.create(
            m.base,
            program.tx(m.rates.peak, _wd(m)),
            jax.random.fold_in(jax.random.key(m.config.train.seed), 1000 + plan.index),
        )
        for m in members
    ]
    impl = jax.random.key_impl(states[0].rng)
    labels = program.label_tree()
    rep = feed.replicated(mesh)
    state = jax.device_put(
        GridState(
            step=stack([s.step for s in states]),
            trainable=stack([split(s.params, labels)[0] for s in states]),
            opt_state=stack([s.opt_state for s in states]),
            rng=jax.random.wrap_key_data(
                stack([jax.random.key_data(s.rng) for s in states]), impl=impl
            ),
        ),
        rep,
    )
    frozen = jax.device_put(frozen, rep)
    ctx, program = features.on_features(plan, program, members[0].base, base_ctx)
    for m in members:  # the features (or images) on the devices are shared
        m.ctx = dataclasses.replace(
            m.ctx, train_arrays=ctx.train_arrays, stream=ctx.stream, evals=ctx.evals
        )
    log.info(
        "%d runs of %s on %s train together: lr %s, weight decay %s, seeds %s; %d epochs x %d "
        "steps", len(members), plan.strategy.name, members[0].config.data.dataset,
        _values(members, lambda m: m.rates.peak), _values(members, _wd),
        _values(members, lambda m: m.config.train.seed), plan.epochs, members[0].rates.steps_per_epoch,
    )  # fmt: skip
    for epoch in range(1, plan.epochs + 1):
        for m in members:
            if m.active and m.should_stop():
                m.outcome = RunStopped(f"stopped before epoch {epoch} of stage 1")
        if not any(m.active for m in members):
            break
        state = _epoch(members, plan, epoch, state, frozen, program, ctx, mesh)
        losses = [m.row["train_loss"] for m in members if m.active]
        log.info(
            "grid epoch %d/%d: %d runs training, train loss %.4f-%.4f, %s left",
            epoch, plan.epochs, len(losses), min(losses, default=math.nan),
            max(losses, default=math.nan),
            _eta(started, epoch, plan.epochs),
        )  # fmt: skip
    out = []
    trained = jax.device_get(state.trainable)
    for i, m in enumerate(members):
        m.checkpoints.close()
        m.ctx.log.close()
        if not m.active:
            out.append(m.outcome)
            continue
        params = merge(member(trained, i), jax.device_get(frozen))
        metrics = {
            k: v
            for k, v in m.row.items()
            if k.endswith(("_loss", "_top1", "_accuracy")) and "_curve_" not in k
        }
        result = run_result(m.config, m.setup, params, data.train, metrics, time.time() - started)
        if _writes():
            write_outputs(m.config, m.setup, m.workdir, params, m.base, result)
        log.info("finished %s: %s", m.workdir, summary(metrics))
        out.append(result)
    return out


def _wd(m: _Member) -> float:
    return m.setup.stages[0].optimizer.weight_decay


def _values(members, get) -> str:
    return ", ".join(dict.fromkeys(f"{get(m):g}" for m in members))


def _eta(started: float, epoch: int, epochs: int) -> str:
    left = (time.time() - started) / epoch * (epochs - epoch)
    return f"{int(left) // 60}m{int(left) % 60:02d}s"


def _writes() -> bool:
    return jax.process_index() == 0


def _epoch(members, plan, epoch, state, frozen, program, ctx: RunContext, mesh) -> GridState:
    """One epoch of every member: steps, evaluations, records and checkpoints (as `stage._epoch`
    does for one run)."""
    epoch_start = time.time()
    batch = ctx.train.batch_size
    orders = [
        epoch_batch_indices(
            ctx.num_train, batch, seed=m.config.train.seed, epoch=epoch + 1000 * plan.index
        )
        for m in members
    ]
    indices = np.stack([o[0] for o in orders], axis=1)  # [steps, members, batch]
    mask = np.stack([o[1] for o in orders], axis=1)
    shard = NamedSharding(mesh, P(None, *feed.batch_sharded(mesh).spec))
    sums = jax.device_put(jnp.zeros((len(members), 3), jnp.float32), feed.replicated(mesh))
    for s, (arrays, step_indices) in enumerate(
        step_inputs(ctx.train_arrays, ctx.stream, indices, mesh)
    ):
        state, sums = grid_train_on_indices(
            state,
            sums,
            frozen,
            arrays,
            feed.global_array(step_indices, shard),
            feed.global_array(mask[s], shard),
            program=program,
        )
    totals = np.asarray(jax.device_get(sums), np.float64)
    train_seconds = time.time() - epoch_start
    eval_program = program.evaluation()

    def measure(data, prefix):
        sums = jax.device_put(jnp.zeros((len(members), 3), jnp.float32), feed.replicated(mesh))
        for b in data.batches(ctx.train.eval_batch_size, mesh):
            sums = grid_accumulate_eval(sums, state.trainable, frozen, b, program=eval_program)
        name = data.name if prefix is None else prefix
        return [
            {f"{name}_loss": float(loss / n), f"{name}_top1": float(correct / n)}
            for loss, correct, n in np.asarray(jax.device_get(sums), np.float64)
        ]

    evaluated = due_evaluations(plan, epoch, ctx, measure, len(members))
    step_counts = np.asarray(jax.device_get(state.step))
    due = checkpoint_due(ctx.train.checkpoint_every_epochs, epoch, plan, ctx.num_stages)
    # Checkpoints are cut from one host copy of the stacked state (a device slice per leaf and
    # member would compile a program per leaf shape).
    saved = jax.device_get((state.trainable, state.opt_state)) if due else None
    keys = np.asarray(jax.device_get(jax.random.key_data(state.rng))) if due else None
    for i, m in enumerate(members):
        if not m.active:
            continue
        loss_sum, correct, seen = (float(x) for x in totals[i])
        loss = loss_sum / seen
        if not math.isfinite(loss):
            m.outcome = diverged(plan, epoch, loss, m.rates, m.checkpoints)
            continue
        m.row = {
            "stage": plan.index,
            "epoch": epoch,
            "step": int(step_counts[i]),
            "lr": m.rates.rate(int(step_counts[i])),
            "images_per_sec": seen / train_seconds,
            "epoch_seconds": time.time() - epoch_start,
            "train_loss": loss,
            "train_accuracy": correct / seen,
            **evaluated[i],
        }
        m.ctx.log.append(m.row)  # the record first, then the checkpoint (as stage._epoch)
        faults.point("metrics_row")
        if due:
            rng = jax.random.wrap_key_data(keys[i], impl=jax.random.key_impl(state.rng))
            own = step.TrainState(step_counts[i], None, member(saved[1], i), rng)
            m.checkpoints.save(epoch, checkpoint_tree(own, member(saved[0], i), epoch))
            faults.point("checkpoint")
    return state

"""A study worker: claims the next runnable run, trains it, repeats; writes the report at the end.

Any number of workers (processes on one machine, GPUs, hosts, a Slurm job array) can be started on
the same study directory: each needs only the directory on a shared filesystem. A killed worker's
run resumes from its checkpoints when the run is claimed again; finished runs are never redone.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import shutil
import time
from typing import Any

import jax
import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.study import protocol, quadrant_report
from vpt_jax.study.config import study_config
from vpt_jax.study.planning import plan
from vpt_jax.study.protocol import SEARCH, RunSpec
from vpt_jax.study.report import write_report
from vpt_jax.study.shard import Shard, parse_shard
from vpt_jax.study.store import StudyStore
from vpt_jax.train import grid, records
from vpt_jax.train.run import RunStopped, TrainingDiverged
from vpt_jax.train.setup import build_run

log = logging.getLogger("vpt_jax")
STUDY_CONFIG = "study.json"
# How workers share a study, not what it computes: workers may differ in them.
_WORKER_FIELDS = ("shard", "claim_timeout_s", "poll_interval_s", "batch_runs", "keep_checkpoints")
WAIT_LOG_INTERVAL_S = 60.0
AUTO_BATCH_RUNS = 8  # study.batch_runs=0 on an accelerator


def check_study_dir(workdir: str, config: ml_collections.ConfigDict) -> None:
    """Records the study's config in its directory, or refuses a directory of another study."""
    path = os.path.join(workdir, STUDY_CONFIG)
    current = records.jsonable(config.to_dict())
    if os.path.exists(path) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file; give a directory")
    if os.path.exists(path):
        if _semantic(records.read_json(path)) != _semantic(current):
            raise UserError(
                f"{workdir} holds a study with another config ({path}); use a new --workdir, or "
                "the same config to continue it"
            )
    else:
        os.makedirs(workdir, exist_ok=True)
        records.write_json(path, current)


def _semantic(study_json: dict) -> dict:
    """A study config without the fields that only say how workers share it."""
    out = dict(study_json, study=dict(study_json.get("study", {})))
    for field in _WORKER_FIELDS:
        out["study"].pop(field, None)
    return out


def check_runs(config: ml_collections.ConfigDict) -> None:
    """Builds the run config of every group (dataset, strategy, size, shots) of the study once: a
    mistake in any of them is one line now, not after hours of other runs. The checkpoint is read
    once."""
    study = config.study
    protocol.check_template(config.run, study_config().run, config.study.grids)
    quadrant_report.check(config)
    checkpoint = None
    for dataset, strategy, size, shots in protocol.groups(study):
        example = RunSpec(SEARCH, dataset, strategy, size, shots, 1.0, 0.0, study.search.seed)
        setup = build_run(protocol.run_config(config, example), 1, checkpoint=checkpoint)
        checkpoint = setup.checkpoint


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Works on the study until every run is done (sharing the work with other workers), or, for a
    static shard (`study.shard`), until every run of its share is done."""
    study = config.study
    protocol.check_study(study)
    shard = parse_shard(study.shard)
    check_runs(config)
    check_study_dir(workdir, config)
    store = StudyStore(workdir, study.claim_timeout_s)
    ran = work([Member(config, store)], shard, study.poll_interval_s)
    store.sweep()
    who = f"shard {shard}" if shard else "this worker"
    log.info("study %s complete (%s by %s)", workdir, _runs(ran), who)
    return write_report(config, workdir)


@dataclasses.dataclass(frozen=True)
class Member:
    """A study a worker works on: its config and its store. A paper's parts are several studies
    whose stores share one run pool, so a run two parts have in common is trained once."""

    config: ml_collections.ConfigDict
    store: StudyStore


def work(members: list[Member], shard: Shard | None, poll_interval_s: float) -> int:
    """Claims and trains the studies' runs until none is left (for a shard: none of its share);
    returns how many runs this worker trained. A run of several studies (one pool key) is one."""
    waits = _WaitLog()
    ran = 0
    while True:
        known: dict[str, tuple[Member, RunSpec]] = {}
        waiting = False
        for member in members:
            specs, member_waits = plan(member.config, member.store)
            waiting = waiting or member_waits
            for spec in specs:
                known.setdefault(member.store.run_key(spec), (member, spec))
        pending = [(m, s) for m, s in known.values() if not m.store.done(s)]
        mine = [(m, s) for m, s in pending if shard is None or shard.owns(s, m.store.run_key(s))]
        if not mine and not waiting:
            return ran
        taken = next(((m, s) for m, s in _ordered(mine) if _take(m.store, s, shard)), None)
        if taken is None:  # the rest is held by other workers, or waits for other shards' runs
            waits.log(shard, [p for p in pending if p not in mine] if shard else pending)
            time.sleep(poll_interval_s)
            continue
        member, spec = taken
        same = [s for m, s in mine if m is member]
        batch = [spec] + _companions(member.config, member.store, spec, same, shard)
        done = len(known) - len(pending)
        _execute(member.config, member.store, batch, done=done, total=len(known))
        ran += len(batch)


def _take(store: StudyStore, spec: RunSpec, shard: Shard | None) -> bool:
    """Claims a run, or (statically sharded) starts one of the shard's runs without a claim."""
    if shard is None:
        return store.try_claim(spec)
    store.record_spec(spec)
    return True


class _WaitLog:
    """Says, at most once a minute, what a worker with nothing to run waits for."""

    def __init__(self):
        self.last = -math.inf

    def log(self, shard: Shard | None, others: list[tuple[Member, RunSpec]]) -> None:
        if time.monotonic() - self.last < WAIT_LOG_INTERVAL_S:
            return
        self.last = time.monotonic()
        if shard is not None:
            log.info(
                "shard %s: its remaining runs wait for %s of other shards (the grid searches "
                "that select its final runs), e.g. %s",
                shard, _runs(len(others)), ", ".join(s.run_id for _, s in others[:3]) or "-",
            )  # fmt: skip
            return
        held = [(s, m.store.claim_info(s)) for m, s in others]
        log.info("waiting for %s held by other workers:", _runs(len(held)))
        for spec, info in held[:5]:
            log.info("  %s", _describe_claim(spec, info))
        if len(held) > 5:
            log.info("  ... and %d more", len(held) - 5)


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _describe_claim(spec: RunSpec, info: dict[str, Any] | None) -> str:
    if info is None:
        return f"{spec.run_id} (its claim was just released)"
    holder = info["worker"] or "a worker whose claim is unreadable"
    return (
        f"{spec.run_id} held by {holder} (refreshed {info['refreshed_s']:.0f} s ago; "
        f"taken over if silent {info['stale_in_s']:.0f} s more)"
    )


def _ordered(specs: list) -> list:
    """Search runs first (they unlock finals), in a stable order so workers spread over the grid.
    Items are specs or (member, spec) pairs."""
    spec = lambda item: item[1] if isinstance(item, tuple) else item
    return sorted(specs, key=lambda item: (spec(item).phase != SEARCH, spec(item).run_id))


def batch_limit(batch_runs: int) -> int:
    """Runs trained together at most: `study.batch_runs`, or (0) 8 on an accelerator and 1 on a
    CPU, where a grid step costs 1.02-1.11x a single run's per image and compiles slower
    (`benchmarks/grid.py`)."""
    if batch_runs:
        return batch_runs
    return 1 if jax.default_backend() == "cpu" else AUTO_BATCH_RUNS


def _companions(config, store: StudyStore, spec: RunSpec, mine, shard) -> list[RunSpec]:
    """Runs claimed to train together with `spec` (`vpt_jax.train.grid`): of its phase and group,
    differing only in lr, weight decay and seed, up to `study.batch_runs` in all."""
    limit = batch_limit(config.study.batch_runs) - 1
    if limit < 1:
        return []
    key = grid.batch_key(protocol.run_config(config, spec))
    out = []
    for other in _ordered(mine):
        if len(out) == limit:
            break
        same = (other.phase, other.group, other.ft_lr, other.ft_weight_decay) == (
            spec.phase, spec.group, spec.ft_lr, spec.ft_weight_decay
        )  # fmt: skip
        if other == spec or not same:
            continue
        if grid.batch_key(protocol.run_config(config, other)) == key and _take(store, other, shard):
            out.append(other)
    return out


def _execute(config, store: StudyStore, specs: list[RunSpec], *, done: int, total: int) -> None:
    """Trains claimed runs (together when there are several) and records how each ended."""
    dirs = [store.run_dir(s) for s in specs]
    for spec in specs:
        log.info("[%d/%d known runs done] %s %s", done, total, spec.phase.upper(), spec.run_id)
    interval = max(1.0, config.study.claim_timeout_s / 10)
    stops = [store.heartbeat(s, interval) for s in specs]
    lost = [lambda s=s: store.lost(s) for s in specs]
    try:
        configs = [protocol.run_config(config, s) for s in specs]
        if len(specs) == 1:
            outcomes = [grid.train_one(configs[0], dirs[0], lost[0])]
        else:
            outcomes = grid.train_grid(configs, dirs, should_stop=lost)
        for spec, run_dir, outcome in zip(specs, dirs, outcomes, strict=True):
            _record(store, spec, run_dir, outcome)
            if (
                store.done(spec)
                and not store.lost(spec)
                and not config.study.get("keep_checkpoints")
            ):
                drop_checkpoints(run_dir)
    finally:
        for spec, stop in zip(specs, stops, strict=True):
            stop.set()
            store.release(spec)


def drop_checkpoints(run_dir: str) -> None:
    """Deletes a finished run's orbax checkpoints (`study.keep_checkpoints`): its records,
    artifact and result stay, and a finished run is never resumed."""
    shutil.rmtree(os.path.join(run_dir, "checkpoints"), ignore_errors=True)


def _record(store: StudyStore, spec: RunSpec, run_dir: str, outcome) -> None:
    if isinstance(outcome, RunStopped):
        log.warning("%s: another worker took this run over; leaving it to that worker", spec.run_id)
    elif isinstance(outcome, TrainingDiverged):
        log.warning("%s diverged; recorded as failed: %s", spec.run_id, outcome)
        if not store.lost(spec):  # only the run's owner writes its result
            records.write_json(
                os.path.join(run_dir, records.RESULT),
                {"status": "diverged", "error": str(outcome), "final": {}},
            )


__all__ = ["check_runs", "check_study_dir", "run_study"]

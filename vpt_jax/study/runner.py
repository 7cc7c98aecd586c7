"""A study worker: claims the next runnable run, trains it, repeats; writes the report at the end.

Any number of workers (processes on one machine, GPUs, hosts, a Slurm job array) can be started on
the same study directory: each needs only the directory on a shared filesystem. A killed worker's
run resumes from its checkpoints when the run is claimed again; finished runs are never redone.
"""

from __future__ import annotations

import itertools
import logging
import os
import time
from typing import Any

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.study import protocol
from vpt_jax.study.planning import plan
from vpt_jax.study.protocol import SEARCH, RunSpec
from vpt_jax.study.report import write_report
from vpt_jax.study.store import StudyStore
from vpt_jax.train import records
from vpt_jax.train.run import TrainingDiverged, train_and_evaluate
from vpt_jax.train.setup import build_run

log = logging.getLogger("vpt_jax")
STUDY_CONFIG = "study.json"


def check_study_dir(workdir: str, config: ml_collections.ConfigDict) -> None:
    path = os.path.join(workdir, STUDY_CONFIG)
    current = records.jsonable(config.to_dict())
    if os.path.exists(path):
        if records.read_json(path) != current:
            raise UserError(
                f"{workdir} holds a study with another config ({path}); use a new --workdir, or "
                "the same config to continue it"
            )
    else:
        os.makedirs(workdir, exist_ok=True)
        records.write_json(path, current)


def check_runs(config: ml_collections.ConfigDict) -> None:
    """Builds the run config of every group (dataset, strategy, size, shots) of the study once: a
    mistake in any of them is one line now, not after hours of other runs. The checkpoint is read
    once."""
    study = config.study
    checkpoint = None
    groups = itertools.product(study.datasets, study.strategies, protocol.points(study))
    for dataset, strategy, (size, shots) in groups:
        example = RunSpec(SEARCH, dataset, strategy, size, shots, 1.0, 0.0, study.search.seed)
        setup = build_run(protocol.run_config(config, example), 1, checkpoint=checkpoint)
        checkpoint = setup.checkpoint


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Works on the study until every run is done (sharing the work with other workers)."""
    study = config.study
    protocol.check_study(study)
    check_runs(config)
    check_study_dir(workdir, config)
    store = StudyStore(workdir, study.claim_timeout_s)
    ran = 0
    while True:
        specs, waiting = plan(config, store)
        pending = [s for s in specs if not store.done(s)]
        if not pending and not waiting:
            break
        spec = next((s for s in _ordered(pending) if store.try_claim(s)), None)
        if spec is None:  # everything runnable is claimed by other workers: wait for them
            time.sleep(study.poll_interval_s)
            continue
        _execute(config, store, spec, done=sum(store.done(s) for s in specs), total=len(specs))
        ran += 1
    log.info("study %s complete (%d runs by this worker)", workdir, ran)
    return write_report(config, workdir)


def _ordered(specs: list[RunSpec]) -> list[RunSpec]:
    # Search runs first (they unlock finals), in a stable order so workers spread over the grid.
    return sorted(specs, key=lambda s: (s.phase != SEARCH, s.run_id))


def _execute(config, store: StudyStore, spec: RunSpec, *, done: int, total: int) -> None:
    run_dir = store.run_dir(spec)
    log.info("[%d/%d known runs done] %s %s", done, total, spec.phase.upper(), spec.run_id)
    stop = store.heartbeat(spec, max(1.0, config.study.claim_timeout_s / 10))
    try:
        train_and_evaluate(protocol.run_config(config, spec), run_dir)
    except TrainingDiverged as e:
        log.warning("%s diverged; recorded as failed: %s", spec.run_id, e)
        records.write_json(
            os.path.join(run_dir, records.RESULT),
            {"status": "diverged", "error": str(e), "final": {}},
        )
    finally:
        stop.set()
        store.release(spec)


__all__ = ["check_runs", "check_study_dir", "run_study"]

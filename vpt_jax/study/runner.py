"""A study worker: claims the next runnable run, trains it, repeats; writes the report at the end.

Any number of workers (processes on one machine, GPUs, hosts, a Slurm job array) can be started on
the same study directory: each needs only the directory on a shared filesystem. A killed worker's
run resumes from its checkpoints when the run is claimed again; finished runs are never redone.
"""

from __future__ import annotations

import logging
import math
import os
import time
from typing import Any

import ml_collections

from vpt_jax import config as config_lib
from vpt_jax.errors import UserError
from vpt_jax.study import protocol
from vpt_jax.study.protocol import FINAL, SEARCH, RunSpec
from vpt_jax.study.store import StudyStore
from vpt_jax.train import records

log = logging.getLogger("vpt_jax")
STUDY_CONFIG = "study.json"


def plan(config: ml_collections.ConfigDict, store: StudyStore) -> tuple[list[RunSpec], bool]:
    """Every run known now, and whether more will appear once runs finish (finals after selection)."""
    study = config.study
    ft_choice = {}
    if "full" in study.strategies:
        for (dataset, strategy, size, shots), selected in selections(config, store).items():
            if strategy == "full" and selected is not None:
                ft_choice[(dataset, size, shots)] = (selected.lr, selected.weight_decay)
    else:
        ft_choice = _default_ft_choice(config)
    search = protocol.search_specs(study, ft_choice)
    specs = list(search)
    waiting = "ft_then_pt" in study.strategies and len(ft_choice) < len(study.datasets) * len(
        protocol.points(study)
    )
    for selected in selections(config, store, search).values():
        if selected is None:
            waiting = True
        else:
            specs.extend(protocol.final_specs(study, selected))
    return specs, waiting


def _default_ft_choice(config) -> dict:
    c = config.run.ft_stage
    return {
        (d, size, shots): (c.lr, c.weight_decay)
        for d in config.study.datasets
        for size, shots in protocol.points(config.study)
    }


def validation_score(
    config: ml_collections.ConfigDict, spec: RunSpec, result: dict | None
) -> float:
    """A search run's last-epoch validation top-1 (nan if it diverged)."""
    if result is None or result.get("status") == "diverged":
        return math.nan
    split = protocol.run_config(config, spec).data.eval_splits[0]
    return float(result["final"].get(f"{split}_top1", math.nan))


def selections(
    config: ml_collections.ConfigDict, store: StudyStore, search: list[RunSpec] | None = None
) -> dict[tuple, RunSpec | None]:
    """The selected setting of each group whose grid is complete (None while it is not)."""
    if search is None:
        search = protocol.search_specs(config.study, _default_ft_choice(config))
        search = [s for s in search if s.strategy != "ft_then_pt"]
    groups: dict[tuple, list[RunSpec]] = {}
    for spec in search:
        groups.setdefault(spec.group, []).append(spec)
    out: dict[tuple, RunSpec | None] = {}
    for group, specs in groups.items():
        results = [store.result(s) for s in specs]
        if any(r is None for r in results):
            out[group] = None
        else:
            scored = [
                (s, validation_score(config, s, r)) for s, r in zip(specs, results, strict=True)
            ]
            out[group] = protocol.select(scored)
    return out


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


def run_study(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Works on the study until every run is done (sharing the work with other workers)."""
    study = config.study
    protocol.check_study(study)
    example = protocol.search_specs(study, _default_ft_choice(config))[0]
    config_lib.validate(protocol.run_config(config, example), 1)
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
    from vpt_jax.study.report import write_report

    return write_report(config, workdir)


def _ordered(specs: list[RunSpec]) -> list[RunSpec]:
    # Search runs first (they unlock finals), in a stable order so workers spread over the grid.
    return sorted(specs, key=lambda s: (s.phase != SEARCH, s.run_id))


def _execute(config, store: StudyStore, spec: RunSpec, *, done: int, total: int) -> None:
    from vpt_jax.train.loop import TrainingDiverged, train_and_evaluate

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


__all__ = ["FINAL", "SEARCH", "plan", "run_study", "selections"]

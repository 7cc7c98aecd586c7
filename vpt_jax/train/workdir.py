"""A run's directory: which run it holds, where a restarted run resumes, nothing written early.

`check_workdir` only reads: it refuses a directory that holds a run of another config (or a file),
and returns the record of a finished run. `start_workdir` is the first write, made once the run's
settings and data have passed every check, so a run that fails validation leaves the directory as
it was and the corrected retry is not refused. `resume_point` says which checkpoint a restarted run
continues from.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import jax
import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.train import records
from vpt_jax.train.checkpoints import StageCheckpoints

log = logging.getLogger("vpt_jax")
# Fields that do not change what a run computes: a resumed run may differ in them.
_NON_SEMANTIC = {
    ("train", "log_every_steps"),
    ("train", "checkpoint_every_epochs"),
    ("train", "move_aside_other_run"),
    ("train", "cache_features"),  # the same numbers to float rounding
}
MOVE_ASIDE = "--config.train.move_aside_other_run=True"


def check_workdir(workdir: str, c: ml_collections.ConfigDict) -> dict[str, Any] | None:
    """Checks that `workdir` can hold this run; returns the result of a finished one, else None.

    Raises:
      UserError: `workdir` is a file, or holds a run of another config (unless
        `train.move_aside_other_run`, when `start_workdir` will set that run aside).
    """
    if os.path.exists(workdir) and not os.path.isdir(workdir):
        raise UserError(f"--workdir {workdir} is a file; give a directory (new or of this run)")
    previous = _recorded_config(workdir)
    if previous is None:
        return None
    if not _same_run(previous, c):
        if c.train.move_aside_other_run:
            return None
        raise UserError(
            f"{workdir} holds a run with another config ({os.path.join(workdir, records.CONFIG)}); "
            f"use a new --workdir, or add {MOVE_ASIDE} to keep that run in "
            f"{_aside_name(workdir)} and start this one"
        )
    result_path = os.path.join(workdir, records.RESULT)
    return records.read_json(result_path) if os.path.exists(result_path) else None


def start_workdir(workdir: str, c: ml_collections.ConfigDict) -> None:
    """Creates the run's directory and records its config (setting another run aside first)."""
    if jax.process_index() != 0:
        return
    previous = _recorded_config(workdir)
    if previous is not None and not _same_run(previous, c):
        aside = _aside_name(workdir)
        os.rename(workdir, aside)
        log.warning("%s held a run of another config: kept as %s", workdir, aside)
        previous = None
    os.makedirs(workdir, exist_ok=True)
    if previous is None:
        records.write_json(os.path.join(workdir, records.CONFIG), c.to_dict())


def resume_point(workdir: str, num_stages: int) -> tuple[int, int] | None:
    """The (stage, epoch) a restarted run resumes from: its newest checkpoint whose epoch is recorded.

    An epoch is recorded before it is checkpointed, so every checkpoint this code writes is proven
    by its record; a checkpoint without one (written by an older version, say) is deleted, and the
    run resumes from the one before it. Records after the point are dropped and recomputed.
    """
    rows = records.read_metrics(os.path.join(workdir, records.METRICS))
    recorded = {(r["stage"], r["epoch"]) for r in rows}
    point = None
    for index in range(num_stages):
        directory = os.path.join(workdir, "checkpoints", f"stage{index}")
        if not os.path.isdir(directory):
            continue
        checkpoints = StageCheckpoints(directory)
        for epoch in checkpoints.epochs():
            if (index, epoch) in recorded:
                point = (index, epoch)
            else:
                log.warning(
                    "stage %d epoch %d: a checkpoint without its record; recomputing the epoch",
                    index + 1,
                    epoch,
                )
                checkpoints.delete(epoch)
        checkpoints.close()
    return point


def _recorded_config(workdir: str) -> dict | None:
    path = os.path.join(workdir, records.CONFIG)
    return records.read_json(path) if os.path.exists(path) else None


def _same_run(previous: dict, c: ml_collections.ConfigDict) -> bool:
    return _semantic(previous) == _semantic(records.jsonable(c.to_dict()))


def _semantic(config_dict: dict) -> dict:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in config_dict.items()}
    for section, field in _NON_SEMANTIC:
        out.get(section, {}).pop(field, None)
    return out


def _aside_name(workdir: str) -> str:
    """`<workdir>.previous-N` with the first N not taken."""
    base = os.path.normpath(workdir)
    n = 1
    while os.path.exists(f"{base}.previous-{n}"):
        n += 1
    return f"{base}.previous-{n}"

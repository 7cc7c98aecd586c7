"""The files a run writes: config.json, metrics.jsonl, result.json (all written safely)."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping
from typing import Any

from vpt_jax import atomic

CONFIG, METRICS, RESULT, ARTIFACT, CHECKPOINT = (
    "config.json",
    "metrics.jsonl",
    "result.json",
    "artifact.npz",
    "checkpoint.npz",
)


def write_json(path: str, data: Any) -> None:
    """Writes JSON atomically: a reader sees the old file or the complete new one, never a part."""
    atomic.write_json(path, jsonable(data))


def jsonable(data: Any) -> Any:
    """`data` as JSON would read it back (tuples become lists, numpy scalars numbers)."""
    return json.loads(
        json.dumps(data, default=lambda x: x.item() if hasattr(x, "item") else str(x))
    )


def read_json(path: str) -> Any:
    with open(path) as f:
        return json.load(f)


def read_metrics(path: str) -> list[dict[str, Any]]:
    """The per-epoch records of a metrics.jsonl file (a torn last line from a kill is skipped)."""
    if not os.path.exists(path):
        return []
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                break
    return rows


class MetricsLog:
    """Appends one JSON line per epoch; on resume it keeps only epochs covered by the checkpoint."""

    def __init__(self, path: str, keep_through: tuple[int, int] | None):
        self.path = path
        rows = read_metrics(path)
        if keep_through is None:
            rows = []
        else:
            rows = [r for r in rows if (r["stage"], r["epoch"]) <= keep_through]
        write_jsonl(path, rows)
        self.rows = rows  # the records kept from before a restart

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str, rows: list[Mapping[str, Any]]) -> None:
    atomic.write_text(path, "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows))


class RunLog:
    """A run's per-epoch records: `metrics.jsonl` and TensorBoard summaries (process 0 writes)."""

    def __init__(self, workdir: str, keep_through: tuple[int, int] | None, *, writes: bool):
        from clu import metric_writers

        self.workdir = workdir
        self.metrics = MetricsLog(os.path.join(workdir, METRICS), keep_through) if writes else None
        if not writes:
            self.writer = metric_writers.MultiWriter([])
            return
        # TensorBoard's event files are rebuilt from the kept records on a restart, so the
        # epochs recomputed after the checkpoint do not appear twice.
        board = os.path.join(workdir, "tensorboard")
        stale = glob.glob(os.path.join(board, "events.out.tfevents.*"))
        self.writer = metric_writers.SummaryWriter(board)
        if stale:
            for row in self.metrics.rows:
                self._write_scalars(row)
            self.writer.flush()
            for path in stale:
                os.unlink(path)

    def append(self, row: Mapping[str, Any]) -> None:
        """Records one epoch (`stage`, `epoch`, `step` and scalars)."""
        if self.metrics is None:
            return
        self.metrics.append(row)
        self._write_scalars(row)

    def _write_scalars(self, row: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in row.items() if k not in ("stage", "epoch", "step")}
        self.writer.write_scalars(row["step"], scalars)

    def last_row(self, stage: int, epoch: int) -> dict[str, Any] | None:
        """The record of a stage's epoch written before (by an earlier process), if any."""
        rows = read_metrics(os.path.join(self.workdir, METRICS))
        found = [r for r in rows if r["stage"] == stage and r["epoch"] == epoch]
        return found[-1] if found else None

    def close(self) -> None:
        self.writer.close()

"""The files a run writes: config.json, metrics.jsonl, result.json (all written safely)."""

from __future__ import annotations

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

    def append(self, row: Mapping[str, Any]) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


def write_jsonl(path: str, rows: list[Mapping[str, Any]]) -> None:
    atomic.write_text(path, "".join(json.dumps(dict(row), sort_keys=True) + "\n" for row in rows))

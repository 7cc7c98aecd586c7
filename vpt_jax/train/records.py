"""The files a run writes: config.json, metrics.jsonl, result.json (all written safely)."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Mapping
from typing import Any

_UMASK = os.umask(0o022)
os.umask(_UMASK)

CONFIG, METRICS, RESULT, ARTIFACT, CHECKPOINT = (
    "config.json",
    "metrics.jsonl",
    "result.json",
    "artifact.npz",
    "checkpoint.npz",
)


def write_json(path: str, data: Any) -> None:
    """Writes JSON atomically: a reader sees the old file or the complete new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".json")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared files
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(jsonable(data), f, indent=2, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-", suffix=".jsonl")
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; results are shared files
    with os.fdopen(fd, "w") as f:
        for row in rows:
            f.write(json.dumps(dict(row), sort_keys=True) + "\n")
    os.replace(tmp, path)

"""A study directory: one run directory per RunSpec, and claims so several workers share the work.

A worker claims a run by creating `claims/<id>.json` with `O_CREAT | O_EXCL` (atomic on local and
NFS-style shared filesystems), keeps the claim fresh while it works (a heartbeat rewrites its time),
and deletes it once the run's `result.json` exists. A claim whose worker is gone (same host, dead
pid) or silent for longer than the timeout is taken over by renaming it away first, so only one
taker wins. Nothing here parses directory names: a run's record (`study_run.json`) holds its spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

from vpt_jax.study.protocol import RunSpec
from vpt_jax.train import records

SPEC_FILE = "study_run.json"


class StudyStore:
    """Run directories and claims under a study's workdir."""

    def __init__(self, workdir: str, claim_timeout_s: float = 600.0):
        self.workdir = os.path.abspath(workdir)
        self.runs_dir = os.path.join(self.workdir, "runs")
        self.claims_dir = os.path.join(self.workdir, "claims")
        self.claim_timeout_s = claim_timeout_s
        self.worker = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        os.makedirs(self.runs_dir, exist_ok=True)
        os.makedirs(self.claims_dir, exist_ok=True)

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.runs_dir, spec.run_id)

    def result(self, spec: RunSpec) -> dict[str, Any] | None:
        path = os.path.join(self.run_dir(spec), records.RESULT)
        return records.read_json(path) if os.path.exists(path) else None

    def done(self, spec: RunSpec) -> bool:
        return os.path.exists(os.path.join(self.run_dir(spec), records.RESULT))

    def _claim_path(self, spec: RunSpec) -> str:
        return os.path.join(self.claims_dir, spec.run_id.replace("/", "__") + ".json")

    def try_claim(self, spec: RunSpec) -> bool:
        """Claims a run for this worker; False if another live worker holds it."""
        path = self._claim_path(spec)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                if not self._take_over_stale(path):
                    return False
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._claim_record(), f)
            if self.done(spec):  # finished between our listing and the claim
                self.release(spec)
                return False
            os.makedirs(self.run_dir(spec), exist_ok=True)
            records.write_json(
                os.path.join(self.run_dir(spec), SPEC_FILE), dataclasses.asdict(spec)
            )
            return True
        return False

    def _claim_record(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "time": time.time(),
        }

    def _take_over_stale(self, path: str) -> bool:
        try:
            with open(path) as f:
                claim = json.load(f)
            age = time.time() - os.path.getmtime(path)
        except (FileNotFoundError, json.JSONDecodeError):
            return os.path.exists(path) is False  # released meanwhile: try again
        dead = claim.get("host") == socket.gethostname() and not _pid_alive(claim.get("pid", -1))
        if not (dead or age > self.claim_timeout_s):
            return False
        try:  # only one worker can rename the stale claim away
            os.rename(path, f"{path}.stale-{uuid.uuid4().hex[:8]}")
        except FileNotFoundError:
            return False
        return True

    def release(self, spec: RunSpec) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._claim_path(spec))

    def heartbeat(self, spec: RunSpec, interval_s: float) -> threading.Event:
        """Touches the claim every `interval_s` until the returned event is set."""
        stop = threading.Event()
        path = self._claim_path(spec)

        def beat():
            while not stop.wait(interval_s):
                try:
                    os.utime(path)
                except FileNotFoundError:
                    return

        threading.Thread(target=beat, daemon=True).start()
        return stop

    def records(self) -> Iterator[tuple[RunSpec, dict[str, Any] | None, str]]:
        """Every run directory's spec, result (None while unfinished) and path."""
        for root, _, files in os.walk(self.runs_dir):
            if SPEC_FILE in files:
                spec = RunSpec(**records.read_json(os.path.join(root, SPEC_FILE)))
                result_path = os.path.join(root, records.RESULT)
                result = records.read_json(result_path) if os.path.exists(result_path) else None
                yield spec, result, root


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

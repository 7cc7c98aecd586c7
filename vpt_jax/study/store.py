"""A study directory: one run directory per RunSpec, and claims so several workers share the work.

Claims. A run's claim files are `claims/<id>.<g>.json`; the highest generation `g` present is the
current claim, and its writer owns the run. A claim file is complete from its first moment (a temp
file `os.link`ed to its name, which fails if the name exists) and carries a unique token. To claim:
with no file, create generation 0; if the current claim is stale, create g+1; then list again and
keep the claim only if no generation is above ours, our file still holds our token, every other
file is stale and the run is not done; else delete ours. A kept claim deletes the files it judged
stale.

Why one owner: a file is deleted only by its writer or by a claimant that kept its claim after
judging that file stale. Of two claims kept at once, the later-made one listed after the other was
made, so it saw that file and kept its claim only by judging it stale: a takeover, which the old
writer's heartbeat notices (its file is gone). Two takers of g cannot both create g+1. A slow
taker may create g+1 long after its look (names are reused: generation 0 again after a release);
its listing then shows the new live claim, and it gives up. Both may give up; never both keep.
As with any lease, a worker silent for the timeout while alive is taken over (and told so). On
NFS this needs only exclusive link (an EEXIST from a retried link is checked by the temp's link
count), unlink, and a listing after one's own create (which makes the client revalidate it).

Staleness. A claim from this host is stale at once if its pid is dead, else once its mtime is older
than the timeout. A claim from another host, or an unreadable one (torn by an older writer or a
full disk), is stale once this worker has seen it unchanged (mtime, size, content) for the timeout
on its own monotonic clock: immune to clock skew, at the cost of watching a full timeout first.
Temp files of dead writers go once older than the timeout. Nothing here parses directory names:
a run's record (`study_run.json`) holds its spec.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from vpt_jax import faults
from vpt_jax.study.protocol import RunSpec
from vpt_jax.train import records

SPEC_FILE = "study_run.json"
log = logging.getLogger("vpt_jax")


@dataclasses.dataclass(frozen=True)
class _Claim:
    """A claim file as read once: its record (None if unreadable) and its stat."""

    path: str
    record: dict[str, Any] | None
    stat: os.stat_result

    @property
    def token(self) -> str | None:
        return self.record["token"] if self.record else None

    @property
    def signature(self) -> tuple:
        """Changes whenever the file is refreshed or replaced."""
        return (self.token, self.stat.st_ino, self.stat.st_size, self.stat.st_mtime_ns)


class StudyStore:
    """Run directories and claims under a study's workdir."""

    def __init__(
        self,
        workdir: str,
        claim_timeout_s: float = 600.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        pool: str | None = None,
        key: Callable[[RunSpec], str] | None = None,
    ):
        """Opens (creating) a study directory.

        Args:
          workdir: the study directory.
          claim_timeout_s: a claim not refreshed for this long is taken over.
          clock: the monotonic clock that times claims of other hosts (tests pass a fake one).
          pool: the directory whose `runs/` and `claims/` hold the run directories (default:
            `workdir`). Studies that share a pool share every run they have in common.
          key: a run's directory name under `runs/` (default: `RunSpec.run_id`). In a shared
            pool the key must name the run's whole config, so that equal runs of different
            studies are one directory (`vpt_jax.study.pool`).
        """
        if not claim_timeout_s > 0:
            raise ValueError(f"claim_timeout_s must be > 0 seconds, got {claim_timeout_s}")
        self.workdir = os.path.abspath(workdir)
        root = os.path.abspath(pool) if pool else self.workdir
        self.runs_dir = os.path.join(root, "runs")
        self.claims_dir = os.path.join(root, "claims")
        self.run_key: Callable[[RunSpec], str] = key or (lambda spec: spec.run_id)
        self.claim_timeout_s = claim_timeout_s
        self.clock = clock
        self.host, self.pid = socket.gethostname(), os.getpid()
        self.worker = f"{self.host}:{self.pid}:{uuid.uuid4().hex[:6]}"
        self._held: dict[str, tuple[str, str]] = {}  # run id -> (claim path, token)
        self._lost: set[str] = set()
        self._seen: dict[str, tuple[tuple, float]] = {}  # path -> (signature, seen since)
        os.makedirs(self.runs_dir, exist_ok=True)
        os.makedirs(self.claims_dir, exist_ok=True)

    def run_dir(self, spec: RunSpec) -> str:
        return os.path.join(self.runs_dir, self.run_key(spec))

    def result(self, spec: RunSpec) -> dict[str, Any] | None:
        path = os.path.join(self.run_dir(spec), records.RESULT)
        return records.read_json(path) if os.path.exists(path) else None

    def done(self, spec: RunSpec) -> bool:
        return os.path.exists(os.path.join(self.run_dir(spec), records.RESULT))

    def try_claim(self, spec: RunSpec) -> bool:
        """Claims a run for this worker; False if it is done or another live worker holds it."""
        if self.done(spec):
            return False
        key = self.run_key(spec).replace("/", "__")
        claims = self._claims(key)
        if claims:
            top = _read(claims[max(claims)])
            if top is None or not self._stale(top):
                return False
        gen = max(claims, default=-1) + 1
        path = os.path.join(self.claims_dir, f"{key}.{gen}.json")
        token = self._create(key, path)
        if token is None:
            return False
        superseded = self._verify(spec, key, gen, token)
        if superseded is None:
            _remove(path, token)
            return False
        for old in superseded:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(old)
        self._held[self.run_key(spec)] = (path, token)
        self._lost.discard(self.run_key(spec))
        self.record_spec(spec)
        return True

    def record_spec(self, spec: RunSpec) -> None:
        """Writes a run's record of what it is (`study_run.json`) before it starts."""
        os.makedirs(self.run_dir(spec), exist_ok=True)
        records.write_json(os.path.join(self.run_dir(spec), SPEC_FILE), dataclasses.asdict(spec))

    def _claims(self, key: str) -> dict[int, str]:
        """generation -> path of a run's claim files; removes old temp files of dead writers."""
        pattern = re.compile(re.escape(key) + r"\.(\d+)\.json", re.ASCII)
        claims = {}
        for name in os.listdir(self.claims_dir):
            path = os.path.join(self.claims_dir, name)
            if match := pattern.fullmatch(name):
                claims[int(match[1])] = path
            elif name.startswith(f".{key}.") and name.endswith(".tmp"):
                self._sweep_temp(path)
        for path in [p for p in self._seen if pattern.fullmatch(os.path.basename(p))]:
            if path not in claims.values():
                del self._seen[path]
        return claims

    def _sweep_temp(self, path: str) -> None:
        """Removes a claim's temporary file whose writer died (this host) or that is old."""
        with contextlib.suppress(FileNotFoundError):  # a live temp lives microseconds
            old = time.time() - os.stat(path).st_mtime > self.claim_timeout_s
            if old or self._dead_here(_read(path)):
                os.unlink(path)

    def _dead_here(self, claim: _Claim | None) -> bool:
        record = claim.record if claim is not None else None
        return (
            bool(record) and record.get("host") == self.host and not _pid_alive(record.get("pid"))
        )

    def sweep(self) -> None:
        """Removes what dead workers of this host left in `claims/`: temporary files, claims (a dead
        worker's claim is as good as released) and an older version's `.stale-*` files. Run when a
        study ends."""
        for name in os.listdir(self.claims_dir):
            path = os.path.join(self.claims_dir, name)
            if ".stale-" in name:  # what the previous takeover protocol renamed claims to
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            elif name.endswith(".tmp"):
                self._sweep_temp(path)
            elif self._dead_here(_read(path)):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)

    def _create(self, key: str, path: str) -> str | None:
        """Creates a claim file, complete from its first moment; its token, or None if it exists."""
        token = uuid.uuid4().hex
        record = {"token": token, "worker": self.worker, "host": self.host, "pid": self.pid}
        temp = os.path.join(self.claims_dir, f".{key}.{token}.tmp")
        try:
            with open(temp, "x") as f:
                json.dump({**record, "time": time.time()}, f)
            faults.point("claim_temp")
            os.link(temp, path)
        except FileExistsError:  # taken; or a retried NFS link that had succeeded
            return token if _links(temp) > 1 else None
        except FileNotFoundError:  # the temp file was swept as old (clock skew): not this time
            return None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp)
        return token

    def _verify(self, spec: RunSpec, key: str, gen: int, token: str) -> list[str] | None:
        """After creating generation `gen`: the stale files it supersedes, or None to give up."""
        claims = self._claims(key)
        mine = _read(claims[gen]) if max(claims, default=-1) == gen else None
        if mine is None or mine.token != token:
            return None
        others = [c for c in (_read(p) for g, p in claims.items() if g != gen) if c is not None]
        if not all(self._stale(c) for c in others):
            return None  # a live claim: its holder owns the run, or gives up too
        return None if self.done(spec) else [c.path for c in others]

    def _stale(self, claim: _Claim) -> bool:
        return self._age(claim)[1] <= 0

    def _age(self, claim: _Claim) -> tuple[float, float]:
        """(Seconds since the claim's last refresh, as judged here; seconds until it is stale)."""
        record = claim.record or {}
        if record.get("host") == self.host:
            age = time.time() - claim.stat.st_mtime
            if not _pid_alive(record.get("pid")):
                return age, 0.0
        else:  # another host's clock, or an unknown one: time what this worker observed
            now = self.clock()
            signature, since = self._seen.get(claim.path, (None, now))
            if signature != claim.signature:
                since = now
            self._seen[claim.path] = (claim.signature, since)
            age = now - since
        return age, self.claim_timeout_s - age

    def claim_info(self, spec: RunSpec) -> dict[str, Any] | None:
        """Who holds a run's current claim and how fresh it is; None if the run is unclaimed.

        Returns:
          worker, host and pid (None for an unreadable claim), generation, refreshed_s (seconds
          since its last refresh: by its mtime for a claim from this host, else for how long this
          worker has seen it unchanged), stale_in_s (seconds until this worker would take it
          over; 0: now) and mine (whether this worker holds it).
        """
        claims = self._claims(self.run_key(spec).replace("/", "__"))
        claim = _read(claims[max(claims)]) if claims else None
        if claim is None:
            return None
        refreshed_s, stale_in_s = self._age(claim)
        record = claim.record or {}
        return {
            **{field: record.get(field) for field in ("worker", "host", "pid")},
            "generation": max(claims),
            "refreshed_s": refreshed_s,
            "stale_in_s": max(0.0, stale_in_s),
            "mine": self._held.get(self.run_key(spec)) == (claim.path, claim.token),
        }

    def release(self, spec: RunSpec) -> None:
        """Gives up this worker's claim on a run (one taken over is left to its new holder)."""
        held = self._held.pop(self.run_key(spec), None)
        if held is not None:
            _remove(*held)

    def lost(self, spec: RunSpec) -> bool:
        """Whether the heartbeat found this worker's claim on `spec` taken over."""
        return self.run_key(spec) in self._lost

    def heartbeat(
        self, spec: RunSpec, interval_s: float, on_lost: Callable[[], Any] | None = None
    ) -> threading.Event:
        """Refreshes this worker's claim every `interval_s` until the returned event is set.

        If the claim has been taken over (its file is gone or another's), the heartbeat logs a
        warning, calls `on_lost` (from its thread) and stops, and `lost(spec)` turns True: the
        caller should stop working on the run.
        """
        stop = threading.Event()

        def beat():
            while not stop.wait(interval_s) and self._refresh(spec, stop):
                pass
            if self.lost(spec) and on_lost is not None:
                on_lost()

        threading.Thread(target=beat, daemon=True, name=f"heartbeat {self.run_key(spec)}").start()
        return stop

    def _refresh(self, spec: RunSpec, stop: threading.Event) -> bool:
        """Touches this worker's claim on `spec`; False once it is released or lost."""
        held = self._held.get(self.run_key(spec))
        if held is None:
            return False
        claim = _read(held[0])
        if claim is not None and claim.token == held[1]:
            with contextlib.suppress(FileNotFoundError):
                os.utime(held[0])
            return True
        if (
            self._held.get(self.run_key(spec)) == held and not stop.is_set()
        ):  # not released meanwhile
            self._lost.add(self.run_key(spec))
            log.warning("lost the claim on %s: another worker took it over", self.run_key(spec))
        return False

    def records(self) -> Iterator[tuple[RunSpec, dict[str, Any] | None, str]]:
        """Every run directory's spec, result (None while unfinished) and path."""
        for root, _, files in os.walk(self.runs_dir):
            if SPEC_FILE in files:
                spec = RunSpec(**records.read_json(os.path.join(root, SPEC_FILE)))
                result_path = os.path.join(root, records.RESULT)
                result = records.read_json(result_path) if os.path.exists(result_path) else None
                yield spec, result, root


def _read(path: str) -> _Claim | None:
    """A claim file as it is now; None if it does not exist."""
    try:
        with open(path, "rb") as f:
            stat, data = os.fstat(f.fileno()), f.read()
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
    except ValueError:  # empty or torn
        record = None
    valid = isinstance(record, dict) and isinstance(record.get("token"), str)
    return _Claim(path, record if valid else None, stat)


def _remove(path: str, token: str) -> None:
    """Deletes a claim file if it is still the one with `token`."""
    claim = _read(path)
    if claim is not None and claim.token == token:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def _links(path: str) -> int:
    try:
        return os.stat(path).st_nlink
    except FileNotFoundError:
        return 0


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True

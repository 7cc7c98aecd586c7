"""StudyStore claims: one owner per run, even when several workers take over a stale claim at once.

The race tests run real processes that persist across hundreds of rounds; a barrier right before
each call makes every round truly concurrent. Clocks of other hosts are faked, never slept on.
"""

from __future__ import annotations

import collections
import json
import logging
import multiprocessing
import os
import socket
import subprocess
import sys
import threading

import pytest

from vpt_jax.study.protocol import RunSpec
from vpt_jax.study.store import StudyStore
from vpt_jax.train import records

TIMEOUT = 600.0  # long: a live claim of this host never goes stale during a test
SPEC = RunSpec("search", "procedural:count", "vpt_deep", 0, 0, 0.1, 0.0, 0)
TAKERS, ROUNDS = 7, 320
FOREIGN, CHURN = 1, 2  # round kinds (bits): the stale claim is another host's; the winner churns


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


def _claim_files(workdir) -> list[str]:
    return sorted(os.listdir(os.path.join(workdir, "claims")))


def _plant(workdir, *, host: str, pid: int, generation: int = 0) -> None:
    """A claim by a fake worker (`host`, `pid`) at `generation`, written through the store."""
    for gen in range(generation + 1):
        clock = FakeClock()
        store = StudyStore(str(workdir), TIMEOUT, clock=clock)
        store.host, store.pid = (host, pid) if gen == generation else ("ghost", 1)
        store.claim_info(SPEC)  # watch the previous generation, then let it age
        clock.now += 2 * TIMEOUT
        assert store.try_claim(SPEC)


def _until(condition, timeout_s: float = 30.0) -> bool:
    """Waits for a background thread's effect (a poll, not a timing assumption)."""
    wait = threading.Event()
    for _ in range(int(timeout_s / 0.005)):
        if condition():
            return True
        wait.wait(0.005)
    return condition()


def _finish(store: StudyStore, spec: RunSpec) -> None:
    records.write_json(os.path.join(store.run_dir(spec), records.RESULT), {"final": {}})


# ---------------------------------------------------------------- the takeover race, many processes


class _Shared:
    """What the parent and the taker processes share."""

    def __init__(self, ctx, takers: int):
        self.barrier = ctx.Barrier(takers + 1, timeout=60)
        self.kind = ctx.Value("i", 0, lock=False)
        self.lock = ctx.Lock()
        self.holders = ctx.Value("i", 0, lock=False)  # workers holding the claim now
        self.most = ctx.Value("i", 0, lock=False)  # most holders at one time this round
        self.wins = ctx.Value("i", 0, lock=False)  # successful claims this round
        self.in_flight = ctx.Barrier(takers, timeout=60)  # churn rounds: all about to link
        self.first = ctx.Value("i", 0, lock=False)  # churn rounds: the pid that linked first
        self.churned = ctx.Event()  # churn rounds: the first has released (and claimed again)
        self.late = ctx.Value("i", 0, lock=False)  # claim files created by held-back takers

    def hold(self, delta: int) -> None:
        with self.lock:
            self.holders.value += delta
            self.most.value = max(self.most.value, self.holders.value)
            self.wins.value += delta > 0


def _claim(store: StudyStore, shared: _Shared) -> bool:
    won = store.try_claim(SPEC)
    if won:
        shared.hold(+1)
    return won


def _held_back(shared: _Shared, link):
    """`os.link` for churn rounds: once every taker has judged the claim stale and is about to take
    it over, the first links at once and the others only after it has churned."""
    arrived = []

    def held_back_link(src, dst):
        if not arrived:
            arrived.append(shared.in_flight.wait())
        with shared.lock:
            shared.first.value = shared.first.value or os.getpid()
            first = shared.first.value == os.getpid()
        if not first:
            shared.churned.wait(60)
        link(src, dst)
        if not first:
            with shared.lock:
                shared.late.value += 1

    return held_back_link


def _churn(store: StudyStore, shared: _Shared, kind: int) -> bool:
    """Releases the claim just won and claims afresh while the held-back takers go on."""
    shared.hold(-1)
    store.release(SPEC)
    if kind & FOREIGN:  # let them race the fresh claim
        shared.churned.set()
        return _claim(store, shared)
    holding = _claim(store, shared)  # a fresh generation 0 while their takeovers are in flight
    shared.churned.set()
    return holding


def _taker(workdir: str, shared: _Shared) -> None:
    """One worker: in every round, races the others to take over the stale claim."""
    try:
        clock = FakeClock()
        store = StudyStore(workdir, TIMEOUT, clock=clock)
        link = os.link
        while True:
            shared.barrier.wait()  # a new round, or the end
            kind = shared.kind.value
            if kind < 0:
                return
            if kind & FOREIGN:  # watch the other host's claim, then let it age
                store.claim_info(SPEC)
                clock.now += 2 * TIMEOUT
            os.link = _held_back(shared, link) if kind & CHURN else link
            shared.barrier.wait()  # go: everyone calls try_claim at once
            holding = _claim(store, shared)
            if holding and kind & CHURN:
                holding = _churn(store, shared, kind)
            shared.barrier.wait()  # the round is over: the parent looks
            shared.barrier.wait()  # it has looked
            if holding:
                shared.hold(-1)
                store.release(SPEC)
            shared.barrier.wait()  # released
    except BaseException:
        shared.barrier.abort()
        raise


def _round(workdir, shared: _Shared, kind: int, dead_pid: int, generation: int) -> tuple:
    """Plants a stale claim, lets the takers race; (wins, most holders, holders, files left)."""
    if kind & FOREIGN:
        _plant(workdir, host="elsewhere", pid=1, generation=generation)
    else:
        _plant(workdir, host=socket.gethostname(), pid=dead_pid, generation=generation)
    shared.kind.value = kind
    shared.wins.value = shared.most.value = shared.first.value = 0
    shared.churned.clear()
    for _ in range(3):  # observe; race; look
        shared.barrier.wait()
    outcome = (shared.wins.value, shared.most.value, shared.holders.value, _claim_files(workdir))
    shared.barrier.wait()  # looked
    shared.barrier.wait()  # released
    assert _claim_files(workdir) == [], "release leaves no claim file"
    return outcome


def test_concurrent_takeovers_leave_exactly_one_owner(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])  # the takers fork from a server that imported this
    shared = _Shared(ctx, TAKERS)
    procs = [ctx.Process(target=_taker, args=(str(tmp_path), shared)) for _ in range(TAKERS)]
    for proc in procs:
        proc.start()
    dead_pid = _dead_pid()
    outcomes = collections.defaultdict(list)
    try:
        for r in range(ROUNDS):
            kind = r % 4
            outcomes[kind].append(_round(tmp_path, shared, kind, dead_pid, generation=r // 4 % 2))
    finally:
        shared.kind.value = -1
        if not shared.barrier.broken:
            shared.barrier.wait()
        for proc in procs:
            proc.join(30)
            if proc.exitcode is None:
                proc.kill()
    names = {0: "dead pid", FOREIGN: "other host", CHURN: "dead pid, churn"}
    names[FOREIGN | CHURN] = "other host, churn"
    for kind, rounds in sorted(outcomes.items()):
        wins = dict(sorted(collections.Counter(w for w, *_ in rounds).items()))
        most = dict(sorted(collections.Counter(m for _, m, *_ in rounds).items()))
        print(
            f"{names[kind]}: {len(rounds)} rounds of {TAKERS} takers; rounds by claims won {wins}"
        )
        print(f"  rounds by most owners at one time {most}")
    print(
        f"claims created by takeovers still in flight after the winner churned: {shared.late.value}"
    )
    assert all(proc.exitcode == 0 for proc in procs)
    for kind, rounds in outcomes.items():
        for wins, most, holders, files in rounds:
            assert most <= 1, f"{names[kind]}: {most} owners at once"
            assert len(files) == holders, f"{names[kind]}: {files} left for {holders} owners"
            if not kind & CHURN:
                assert (wins, holders) == (1, 1), f"{names[kind]}: {wins} takers won"


# ---------------------------------------------------------------- one process


def test_a_non_positive_timeout_is_refused(tmp_path):
    for timeout in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="claim_timeout_s must be > 0"):
            StudyStore(str(tmp_path), timeout)


def test_claim_release_and_done(tmp_path):
    a, b = StudyStore(str(tmp_path), TIMEOUT), StudyStore(str(tmp_path), TIMEOUT)
    assert b.claim_info(SPEC) is None
    assert a.try_claim(SPEC)
    assert not b.try_claim(SPEC), "a live worker of this host keeps its claim"
    info = b.claim_info(SPEC)
    assert (info["worker"], info["host"], info["pid"], info["mine"]) == (
        a.worker, a.host, os.getpid(), False,
    )  # fmt: skip
    assert 0 <= info["refreshed_s"] < 60 and info["stale_in_s"] > TIMEOUT - 60
    assert a.claim_info(SPEC)["mine"]
    a.release(SPEC)
    assert _claim_files(tmp_path) == []
    assert b.try_claim(SPEC)
    _finish(b, SPEC)
    b.release(SPEC)
    assert not a.try_claim(SPEC), "a done run is never claimed again"
    assert _claim_files(tmp_path) == []
    assert records.read_json(os.path.join(a.run_dir(SPEC), "study_run.json"))["seed"] == 0


def test_a_dead_workers_claim_is_taken_over_at_once_and_cleaned_up(tmp_path):
    store = StudyStore(str(tmp_path), TIMEOUT)
    _plant(tmp_path, host=store.host, pid=_dead_pid())
    assert store.claim_info(SPEC)["stale_in_s"] == 0
    assert store.try_claim(SPEC)
    assert len(_claim_files(tmp_path)) == 1  # the new claim only: no stale copies, no temp files
    assert store.claim_info(SPEC)["mine"]


def test_a_claim_of_this_host_goes_stale_by_its_mtime(tmp_path):
    a, b = StudyStore(str(tmp_path), TIMEOUT), StudyStore(str(tmp_path), TIMEOUT)
    assert a.try_claim(SPEC)
    (name,) = _claim_files(tmp_path)
    path = os.path.join(tmp_path, "claims", name)
    old = os.stat(path).st_mtime - TIMEOUT / 2
    os.utime(path, (old, old))
    assert not b.try_claim(SPEC)
    assert b.claim_info(SPEC)["stale_in_s"] == pytest.approx(TIMEOUT / 2, abs=60)
    os.utime(path, (old - TIMEOUT, old - TIMEOUT))
    assert b.try_claim(SPEC)


def test_another_hosts_claim_goes_stale_once_seen_unchanged_for_the_timeout(tmp_path):
    clock = FakeClock()
    owner = StudyStore(str(tmp_path), TIMEOUT)
    taker = StudyStore(str(tmp_path), TIMEOUT, clock=clock)
    owner.host = "elsewhere"
    assert owner.try_claim(SPEC)
    (name,) = _claim_files(tmp_path)
    os.utime(os.path.join(tmp_path, "claims", name), (0, 0))  # its clock says 1970: not trusted
    assert not taker.try_claim(SPEC), "first seen now"
    clock.now += TIMEOUT / 2
    info = taker.claim_info(SPEC)
    assert (info["host"], info["refreshed_s"], info["stale_in_s"]) == (
        "elsewhere", TIMEOUT / 2, TIMEOUT / 2,
    )  # fmt: skip
    assert owner._refresh(SPEC, threading.Event())  # its heartbeat: seen afresh
    clock.now += TIMEOUT / 2
    assert taker.claim_info(SPEC)["stale_in_s"] == TIMEOUT
    assert not taker.try_claim(SPEC)
    clock.now += TIMEOUT
    assert taker.try_claim(SPEC)
    assert len(_claim_files(tmp_path)) == 1


@pytest.mark.parametrize("content", ["", '{"token": "ab', "[1, 2]"])
def test_a_torn_claim_is_taken_over_once_it_has_aged(tmp_path, content):
    clock = FakeClock()
    writer = StudyStore(str(tmp_path), TIMEOUT)
    taker = StudyStore(str(tmp_path), TIMEOUT, clock=clock)
    assert writer.try_claim(SPEC)
    (name,) = _claim_files(tmp_path)
    with open(os.path.join(tmp_path, "claims", name), "w") as f:
        f.write(content)  # as a kill or a full disk mid-write by an older writer leaves it
    assert not taker.try_claim(SPEC), "a fresh torn claim waits"
    assert taker.claim_info(SPEC)["pid"] is None
    clock.now += TIMEOUT / 2
    assert not taker.try_claim(SPEC)
    clock.now += TIMEOUT / 2
    assert taker.try_claim(SPEC)
    assert len(_claim_files(tmp_path)) == 1


def test_a_claim_appears_only_complete(tmp_path, monkeypatch):
    store = StudyStore(str(tmp_path), TIMEOUT)
    linked, real_link = [], os.link

    def link(src, dst):  # the only way a claim gets its name
        with open(src) as f:
            linked.append((json.load(f)["worker"], os.path.basename(dst)))
        real_link(src, dst)

    monkeypatch.setattr(os, "link", link)
    assert store.try_claim(SPEC)
    assert [w for w, _ in linked] == [store.worker] and _claim_files(tmp_path) == [linked[0][1]]
    store.release(SPEC)

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(json, "dump", full_disk)
    with pytest.raises(OSError, match="No space"):
        store.try_claim(SPEC)
    assert _claim_files(tmp_path) == [], "no claim, no temp file"


def _die_while_claiming(workdir: str) -> None:
    os.link = lambda src, dst: os._exit(3)  # killed between writing the temp file and linking it
    StudyStore(workdir, TIMEOUT).try_claim(SPEC)


def test_a_dead_writers_temp_file_is_removed_and_another_hosts_when_old(tmp_path):
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload([__name__])
    proc = ctx.Process(target=_die_while_claiming, args=(str(tmp_path),))
    proc.start()
    proc.join(60)
    assert proc.exitcode == 3
    (temp,) = _claim_files(tmp_path)
    store = StudyStore(str(tmp_path), TIMEOUT)
    assert store.try_claim(SPEC)  # its writer (this host) is dead: its temp file goes at once
    assert temp not in _claim_files(tmp_path) and len(_claim_files(tmp_path)) == 1
    store.release(SPEC)
    # Another host's young temp file may be a live writer's: it stays until it is old.
    key = SPEC.run_id.replace("/", "__")
    foreign = os.path.join(tmp_path, "claims", f".{key}.feed.tmp")
    with open(foreign, "w") as f:
        json.dump({"token": "feed", "worker": "ghost:1:x", "host": "ghost", "pid": 1}, f)
    assert store.try_claim(SPEC)
    assert os.path.basename(foreign) in _claim_files(tmp_path)
    store.release(SPEC)
    os.utime(foreign, (0, 0))
    assert store.try_claim(SPEC)
    assert os.path.basename(foreign) not in _claim_files(tmp_path)
    store.release(SPEC)


def test_a_finished_study_sweeps_what_dead_workers_left(tmp_path):
    _plant(tmp_path, host=socket.gethostname(), pid=_dead_pid())
    claims = os.path.join(tmp_path, "claims")
    open(os.path.join(claims, "x.json.stale-0badf00d"), "w").close()  # the old protocol's
    store = StudyStore(str(tmp_path), TIMEOUT)
    store.sweep()
    assert _claim_files(tmp_path) == []


def test_the_heartbeat_refreshes_the_claim(tmp_path):
    store = StudyStore(str(tmp_path), TIMEOUT)
    assert store.try_claim(SPEC)
    (name,) = _claim_files(tmp_path)
    path = os.path.join(tmp_path, "claims", name)
    os.utime(path, (0, 0))
    stop = store.heartbeat(SPEC, 0.01)
    assert _until(lambda: os.stat(path).st_mtime > 0)
    stop.set()
    assert not store.lost(SPEC)


def test_the_heartbeat_notices_a_takeover(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(logging.getLogger("vpt_jax"), "propagate", True)  # main() may turn it off
    clock = FakeClock()
    owner = StudyStore(str(tmp_path), TIMEOUT)
    taker = StudyStore(str(tmp_path), TIMEOUT, clock=clock)
    owner.host = "elsewhere"  # so the taker times it by its own (fake) clock
    assert owner.try_claim(SPEC)
    taker.claim_info(SPEC)
    clock.now += 2 * TIMEOUT
    assert taker.try_claim(SPEC)
    lost = threading.Event()
    with caplog.at_level(logging.WARNING, logger="vpt_jax"):
        stop = owner.heartbeat(SPEC, 0.01, on_lost=lost.set)
        assert lost.wait(30)
    stop.set()
    assert owner.lost(SPEC)
    assert "lost the claim on search/" in caplog.text
    owner.release(SPEC)  # must not remove the new holder's claim
    assert taker.claim_info(SPEC)["mine"] and len(_claim_files(tmp_path)) == 1
    assert not taker.lost(SPEC)

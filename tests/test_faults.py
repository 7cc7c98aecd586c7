"""Real kills (SIGKILL) at every window between two writes: the restarted run or study ends with
the records of an uninterrupted one, and a study always completes.

`VPT_JAX_KILL_AT=<point>:<n>` (vpt_jax/faults.py) makes the process kill itself the n-th time it
reaches a named point, so each window is hit exactly, not by timing luck.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys

import numpy as np
import pytest

from tests.test_train import ROOT, tiny_config
from vpt_jax.study.runner import run_study
from vpt_jax.train import records, run

sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
import tiny_study

EPOCHS = 3
RUN_ARGS = (f"--config.train.epochs={EPOCHS}",)
METRIC_KEYS = ("train_loss", "train_accuracy", "val24_loss", "val24_top1", "test40_top1")


def _env(**extra):
    return dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)


def _run_cmd(workdir, checkpoint):
    return [
        sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/tiny.py",
        f"--config.model.checkpoint={checkpoint}", f"--workdir={workdir}", *RUN_ARGS,
    ]  # fmt: skip


def _killed_at(point, cmd):
    proc = subprocess.run(
        cmd, cwd=ROOT, env=_env(VPT_JAX_KILL_AT=point), capture_output=True, text=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def base_checkpoint(tiny_checkpoint):
    return tiny_checkpoint


@pytest.fixture(scope="module")
def reference(tmp_path_factory, base_checkpoint):
    workdir = tmp_path_factory.mktemp("reference") / "run"
    result = run.train_and_evaluate(_config(base_checkpoint), str(workdir))
    return workdir, result


def _config(checkpoint):
    return tiny_config(checkpoint, **{"train.epochs": EPOCHS})


def _assert_same_records(workdir, reference):
    ref_dir, ref_result = reference
    rows = records.read_metrics(str(workdir / records.METRICS))
    ref_rows = records.read_metrics(str(ref_dir / records.METRICS))
    assert [(r["stage"], r["epoch"]) for r in rows] == [(0, e) for e in range(1, EPOCHS + 1)]
    for got, ref in zip(rows, ref_rows, strict=True):
        for key in METRIC_KEYS:
            assert got[key] == pytest.approx(ref[key], rel=1e-6), (key, got["epoch"])
    result = json.loads((workdir / records.RESULT).read_text())
    assert result["final"] and result["final"] == pytest.approx(ref_result["final"], rel=1e-6)
    with np.load(workdir / records.ARTIFACT) as got, np.load(ref_dir / records.ARTIFACT) as ref:
        for key in ref.files:
            if ref[key].dtype.kind == "f":
                np.testing.assert_allclose(got[key], ref[key], rtol=1e-5, atol=1e-7)
    assert _tensorboard_steps(workdir) == _tensorboard_steps(ref_dir)  # no duplicated points


def _tensorboard_steps(workdir):
    import tensorflow as tf

    steps = {}
    for name in sorted(os.listdir(workdir / "tensorboard")):
        for raw in tf.data.TFRecordDataset(str(workdir / "tensorboard" / name)):
            event = tf.compat.v1.Event.FromString(raw.numpy())
            for value in event.summary.value:
                steps.setdefault(value.tag, []).append(event.step)
    return {tag: sorted(s) for tag, s in steps.items()}


@pytest.mark.parametrize(
    "point, recorded",
    [
        ("metrics_row:2", 2),  # epoch 2 recorded, its checkpoint not written
        (f"metrics_row:{EPOCHS}", EPOCHS),  # the last epoch recorded, not checkpointed
        (f"checkpoint:{EPOCHS}", EPOCHS),  # the last checkpoint written, no result yet
        ("artifact:1", EPOCHS),  # the artifact written, result.json not yet
    ],
)
def test_a_kill_in_any_window_of_a_run_resumes_to_the_uninterrupted_records(
    tmp_path,
    base_checkpoint,
    reference,
    point,
    recorded,
):
    workdir = tmp_path / "run"
    _killed_at(point, _run_cmd(workdir, base_checkpoint))
    assert not (workdir / records.RESULT).exists()
    assert len(records.read_metrics(str(workdir / records.METRICS))) == recorded
    run.train_and_evaluate(_config(base_checkpoint), str(workdir))
    _assert_same_records(workdir, reference)


def test_a_checkpoint_without_its_record_is_recomputed(tmp_path, base_checkpoint, reference):
    # What the order before this fix left behind: the last checkpoint written, its row not.
    workdir = tmp_path / "run"
    _killed_at(f"checkpoint:{EPOCHS}", _run_cmd(workdir, base_checkpoint))
    rows = records.read_metrics(str(workdir / records.METRICS))
    records.write_jsonl(str(workdir / records.METRICS), rows[:-1])
    run.train_and_evaluate(_config(base_checkpoint), str(workdir))
    _assert_same_records(workdir, reference)


# Studies: one dataset, VPT-deep, a 1x2 grid and one seed (2 search runs, 1 final run).


@pytest.fixture(scope="module")
def study_base(tiny_checkpoint):
    return tiny_checkpoint


def _study_config(base):
    c = tiny_study.get_config()
    c.run.model.checkpoint = base
    c.study.datasets = ("procedural:location",)
    c.study.strategies = ("vpt_deep",)
    c.study.grids.prompt.lrs = (0.5,)
    c.study.final.seeds = (1,)
    c.study.claim_timeout_s = 10.0
    return c


def _study_cmd(workdir, base):
    return [
        sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/tiny_study.py",
        f"--config.run.model.checkpoint={base}", f"--workdir={workdir}",
        "--config.study.datasets=('procedural:location',)", "--config.study.strategies=('vpt_deep',)",
        "--config.study.grids.prompt.lrs=(0.5,)", "--config.study.final.seeds=(1,)",
        "--config.study.claim_timeout_s=10",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def study_reference(tmp_path_factory, study_base):
    workdir = tmp_path_factory.mktemp("study_reference")
    run_study(_study_config(study_base), str(workdir))
    return _report(workdir)


def _report(workdir):
    """report/results.json flattened to {path: value}, numbers rounded to 6 significant digits."""
    flat = {}

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}/{key}")
        elif isinstance(value, list):
            for i, item in enumerate(value):
                walk(item, f"{path}[{i}]")
        else:
            flat[path] = float(f"{value:.6g}") if isinstance(value, float) else value

    walk(json.loads((workdir / "report" / "results.json").read_text()), "")
    return flat


def _finish_study(workdir, base):
    proc = subprocess.run(
        _study_cmd(workdir, base), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


@pytest.mark.parametrize(
    "point",
    [
        "metrics_row:4",  # the second search run's last epoch recorded, not checkpointed
        "checkpoint:1",  # the first search run's last checkpoint, before its result
        "claim_temp:2",  # the second claim's content written, the claim not yet created
    ],
)
def test_a_study_killed_in_any_window_completes_with_the_uninterrupted_report(
    tmp_path, study_base, study_reference, point
):
    _killed_at(point, _study_cmd(tmp_path, study_base))
    finished = sum("result.json" in files for _, _, files in os.walk(tmp_path / "runs"))
    proc = _finish_study(tmp_path, study_base)
    assert _report(tmp_path) == study_reference
    # The restart does only what was not finished (2 grid runs and 1 final run in all).
    assert proc.stdout.count("known runs done]") == 3 - finished
    assert not [n for n in os.listdir(tmp_path / "claims")]  # no claim, temp or stale file left


def test_a_torn_claim_is_taken_over_by_its_age(tmp_path, study_base, study_reference):
    # An empty claim (a kill or a full disk between creating a claim and writing it, in an older
    # version) of the first run the study would take: it is stale once older than the timeout.
    config = _study_config(study_base)
    claims = tmp_path / "claims"
    claims.mkdir(parents=True)
    from vpt_jax.study.planning import plan
    from vpt_jax.study.store import StudyStore

    store = StudyStore(str(tmp_path), config.study.claim_timeout_s)
    spec = sorted(plan(config, store)[0], key=lambda s: s.run_id)[0]
    torn = claims / (spec.run_id.replace("/", "__") + ".0.json")
    torn.write_text('{"tok')
    proc = _finish_study(tmp_path, study_base)
    assert _report(tmp_path) == study_reference
    assert "known runs done]" in proc.stdout


def test_a_study_killed_at_random_moments_reports_like_an_uninterrupted_one(
    tmp_path, study_base, study_reference
):
    rng = random.Random(16)  # the kill times; the outcome must not depend on them
    kills = 0
    for _ in range(3):
        proc = subprocess.Popen(
            _study_cmd(tmp_path, study_base), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL
        )
        try:
            proc.wait(timeout=rng.uniform(3.0, 11.0))
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills += 1
        if proc.returncode == 0:
            break
    _finish_study(tmp_path, study_base)
    identical = _report(tmp_path) == study_reference
    print(f"killed at random {kills} times; report identical to the uninterrupted one: {identical}")
    assert kills >= 1 and identical

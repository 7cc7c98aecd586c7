"""The trainer and CLI: end-to-end runs, files, resume after a real kill, multi-device, errors."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest

from vpt_jax import config as config_lib
from vpt_jax import runtime
from vpt_jax.errors import UserError
from vpt_jax.models import precision
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params
from vpt_jax.train import records, run, stage, step
from vpt_jax.train.setup import build_run
from vpt_jax.tuning.artifact import load_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
import tiny as tiny_cli_config  # noqa: E402

TINY = ViTConfig(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16)


@pytest.fixture(scope="module")
def base_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.npz"
    save_npz(path, init_params(VisionTransformer(TINY, 7, head_init=_normal), 3))
    return str(path)


def _normal(key, shape, dtype=jnp.float32):
    import jax

    return jax.random.normal(key, shape, dtype) * 0.02


def tiny_config(checkpoint: str, **overrides):
    """tests/configs/tiny.py (what the CLI tests run) with a checkpoint and `section.field` overrides."""
    c = tiny_cli_config.get_config()
    c.model.checkpoint = checkpoint
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    return c


def cli(workdir, checkpoint, *args, env=None, **kwargs):
    """Runs `python -m vpt_jax.main` on the tiny setting; returns the CompletedProcess/Popen."""
    cmd = [
        sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/tiny.py",
        f"--config.model.checkpoint={checkpoint}", f"--workdir={workdir}", *args,
    ]  # fmt: skip
    full_env = dict(os.environ, JAX_PLATFORMS="cpu", **(env or {}))
    return subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True, **kwargs)


def test_one_epoch_end_to_end_through_the_cli(tmp_path, base_checkpoint):
    proc = cli(tmp_path / "run", base_checkpoint, "--config.train.epochs=1")
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    for name in ("config.json", "metrics.jsonl", "result.json", "artifact.npz"):
        assert (run / name).stat().st_size > 0, name
    assert (run / "checkpoints" / "stage0" / "1").is_dir()
    assert list((run / "tensorboard").iterdir())
    config = json.loads((run / "config.json").read_text())
    assert config["strategy"]["name"] == "vpt_deep" and config["train"]["epochs"] == 1
    rows = records.read_metrics(str(run / "metrics.jsonl"))
    assert [r["epoch"] for r in rows] == [1]
    assert {"train_loss", "train_accuracy", "val24_loss", "val24_top1", "test40_top1"} <= set(
        rows[0]
    )
    result = json.loads((run / "result.json").read_text())
    assert result["final"]["test40_top1"] == rows[0]["test40_top1"]
    assert result["tuned_parameters"] == 2 * 2 * 32 + 32 * 8 + 8  # deep prompts + 8-way head
    assert "trainable of" in proc.stdout and "img/s" in proc.stdout
    # The CLI re-executes under its allocator settings where they apply, else keeps this one.
    reexec = runtime.allocator_environment() is not None
    expected = "glibc, vpt_jax tunables" if reexec else runtime.allocator_description()
    assert f"allocator: {expected}" in proc.stdout
    # The artifact loads on the base checkpoint and holds only prompts and head.
    model, params, meta = load_artifact(run / "artifact.npz", base_checkpoint)
    assert meta["tuned_parameters"] == result["tuned_parameters"]
    # A finished run is not redone.
    again = cli(tmp_path / "run", base_checkpoint, "--config.train.epochs=1")
    assert again.returncode == 0 and "already finished" in again.stdout


def test_resume_after_a_real_kill_matches_an_uninterrupted_run(tmp_path, base_checkpoint):
    args = ("--config.train.epochs=4", "--config.data.train_split=train128")
    reference = cli(tmp_path / "ref", base_checkpoint, *args)
    assert reference.returncode == 0, reference.stderr[-2000:]
    cmd = [
        sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/tiny.py",
        f"--config.model.checkpoint={base_checkpoint}", f"--workdir={tmp_path / 'killed'}", *args,
    ]  # fmt: skip
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if "epoch 2/4" in line:  # epoch 2 is checkpointed; epoch 3 is under way
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (tmp_path / "killed" / "result.json").exists()
    resumed = cli(tmp_path / "killed", base_checkpoint, *args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed stage 1 from its epoch-" in resumed.stdout
    ref_rows = records.read_metrics(str(tmp_path / "ref" / "metrics.jsonl"))
    got_rows = records.read_metrics(str(tmp_path / "killed" / "metrics.jsonl"))
    assert [r["epoch"] for r in got_rows] == [1, 2, 3, 4]
    for ref, got in zip(ref_rows, got_rows, strict=True):
        for key in ("train_loss", "val24_loss", "test40_top1", "test40_loss"):
            assert got[key] == pytest.approx(ref[key], rel=1e-6), (key, ref["epoch"])
    ref_result = json.loads((tmp_path / "ref" / "result.json").read_text())
    got_result = json.loads((tmp_path / "killed" / "result.json").read_text())
    assert got_result["final"] == pytest.approx(ref_result["final"], rel=1e-6)


def test_four_devices_match_one_device(tmp_path, base_checkpoint):
    args = ("--config.train.epochs=3", "--config.strategy.name=full", "--config.optimizer.lr=0.01")
    one = cli(tmp_path / "one", base_checkpoint, *args)
    four = cli(
        tmp_path / "four",
        base_checkpoint,
        *args,
        env={"XLA_FLAGS": "--xla_force_host_platform_device_count=4"},
    )
    assert one.returncode == 0 and four.returncode == 0, four.stderr[-2000:]
    assert "on 4 device(s)" in four.stdout and "on 1 device(s)" in one.stdout
    a = records.read_metrics(str(tmp_path / "one" / "metrics.jsonl"))
    b = records.read_metrics(str(tmp_path / "four" / "metrics.jsonl"))
    np.testing.assert_allclose(
        [r["train_loss"] for r in b], [r["train_loss"] for r in a], rtol=1e-4
    )
    np.testing.assert_allclose(
        [r["test40_loss"] for r in b], [r["test40_loss"] for r in a], rtol=1e-4
    )


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"strategy.name": "prompting"}, "unknown strategy 'prompting'; use one of: full"),
        ({"data.dataset": "vtab/cifar1000"}, "unknown VTAB-1k task 'cifar1000'; valid tasks: "),
        ({"optimizer.lr": -0.1}, "optimizer.lr must be a positive number, got -0.1"),
        ({"strategy.num_prompts": 0}, "needs a prompt length >= 1 (got 0)"),
        ({"train.batch_size": 0}, "train.batch_size must be >= 1"),
        ({"model.precision": "fp16"}, "model.precision: unknown precision 'fp16'; use one of: "),
    ],
)
def test_config_errors_fail_before_any_work(tmp_path, base_checkpoint, overrides, message):
    c = tiny_config(base_checkpoint, **overrides)
    step.train_on_indices.clear_cache()
    with pytest.raises(UserError) as e:
        run.train_and_evaluate(c, str(tmp_path / "run"))
    assert message in str(e.value) and "\n" not in str(e.value)
    assert step.train_on_indices._cache_size() == 0  # nothing was traced
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_bf16_precision_switch_reaches_the_model_and_trains_like_float32(
    tmp_path, base_checkpoint, monkeypatch
):
    calls = []
    real = precision.bf16_matmul
    monkeypatch.setattr(precision, "bf16_matmul", lambda x, w: calls.append(1) or real(x, w))
    results = {}
    for mode in ("float32", "bf16"):
        c = tiny_config(base_checkpoint, **{"train.epochs": 2, "model.precision": mode})
        results[mode] = run.train_and_evaluate(c, str(tmp_path / mode))["final"]
        assert bool(calls) == (mode == "bf16")  # bf16 on CPU: the bf16-matmul custom VJP
    assert results["bf16"]["test40_loss"] == pytest.approx(
        results["float32"]["test40_loss"], rel=0.02
    )


GRID_SCRIPT = """
import sys
import jax
from vpt_jax.main import _enable_compilation_cache
from vpt_jax.train import run
sys.path.insert(0, "tests")
from test_train import tiny_config

hits = []
jax.monitoring.register_event_listener(lambda name, **_: hits.append(name))
_enable_compilation_cache()  # as the command line does (VPT_JAX_COMPILATION_CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
grid = [(float(lr), float(wd)) for lr, wd in (p.split(",") for p in sys.argv[3:])]
for i, (lr, wd) in enumerate(grid):  # runs of a grid search, in this process
    hits.clear()
    overrides = {"optimizer.lr": lr, "optimizer.weight_decay": wd, "train.epochs": 1}
    run.train_and_evaluate(tiny_config(sys.argv[1], **overrides), sys.argv[2] + str(i))
    print(*(hits.count(f"/jax/compilation_cache/cache_{k}") for k in ("misses", "hits")))
"""


def test_the_runs_of_a_grid_search_share_compiled_programs(tmp_path, base_checkpoint):
    env = dict(os.environ, JAX_PLATFORMS="cpu", VPT_JAX_COMPILATION_CACHE=str(tmp_path / "xla"))

    def grid(workdir, *points):
        proc = subprocess.run(
            [sys.executable, "-c", GRID_SCRIPT, base_checkpoint, str(tmp_path / workdir), *points],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-2000:]
        return [[int(n) for n in line.split()] for line in proc.stdout.splitlines()[-len(points) :]]

    first, second = grid("run", "0.5,0.0", "0.05,0.001")
    assert first[0] > 0  # (misses, hits): the first run compiles
    # lr and weight decay are optimizer state, so the second run's train and eval steps are the
    # same programs: reused in-process, nothing compiled again (nor even looked up on disk).
    assert second == [0, 0], second
    # In a new process (another worker of the study), the persistent cache serves them.
    (third,) = grid("other", "0.1,0.0001")
    assert third[0] == 0 and third[1] >= 2, third


def test_batch_not_divisible_by_devices():
    c = config_lib.base_config()
    c.train.batch_size = 30
    with pytest.raises(UserError, match="train.batch_size=30 is not divisible by the 4 devices"):
        build_run(c, num_devices=4)


def test_cli_reports_user_errors_in_one_line(tmp_path, base_checkpoint):
    proc = cli(tmp_path / "run", base_checkpoint, "--config.optimizer.lr=-1")
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1]
        == "error: optimizer.lr must be a positive number, got -1.0"
    )
    misspelled = cli(tmp_path / "run2", base_checkpoint, "--config.optimizer.lrr=1")
    assert misspelled.returncode == 2 and "lrr" in misspelled.stderr
    assert misspelled.stderr.strip().splitlines()[-1].startswith("error: bad flag: 'lrr' Did you")
    missing = subprocess.run(
        [sys.executable, "-m", "vpt_jax.main", "--config", "tests/configs/nope.py", "--workdir=w"],
        cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"), capture_output=True, text=True,
    )  # fmt: skip
    last = missing.stderr.strip().splitlines()[-1]
    assert missing.returncode == 2 and last.startswith("error: --config: ") and "nope.py" in last


def test_train_step_compiles_once_and_workdir_config_is_guarded(tmp_path, base_checkpoint):
    step.train_on_indices.clear_cache()
    step.accumulate_eval.clear_cache()
    c = tiny_config(base_checkpoint, **{"train.epochs": 3})
    result = run.train_and_evaluate(c, str(tmp_path / "run"))
    assert step.train_on_indices._cache_size() == 1  # 3 epochs x 4 steps, one trace
    assert step.accumulate_eval._cache_size() == 1  # two eval splits of one batch shape
    assert 0 <= result["final"]["test40_top1"] <= 1
    # Another point of the grid (lr, weight decay are optimizer state) reuses the same programs.
    grid_point = tiny_config(base_checkpoint, **{"train.epochs": 3, "optimizer.lr": 0.05})
    run.train_and_evaluate(grid_point, str(tmp_path / "run2"))
    assert step.train_on_indices._cache_size() == 1
    assert step.accumulate_eval._cache_size() == 1
    other = tiny_config(base_checkpoint, **{"train.epochs": 4})
    with pytest.raises(UserError, match="holds a run with another config"):
        run.train_and_evaluate(other, str(tmp_path / "run"))


def test_nan_loss_stops_with_a_clear_message_and_keeps_the_last_checkpoint(
    tmp_path, base_checkpoint, monkeypatch, request
):
    real_step = step.train_step

    def diverging_step(state, batch, **kwargs):
        new_state, metrics = real_step(state, batch, **kwargs)
        loss = jnp.where(state.step >= 8, jnp.nan, metrics["loss"])  # epoch 3 (4 steps/epoch)
        return new_state, dict(metrics, loss=loss)

    monkeypatch.setattr(step, "train_step", diverging_step)
    step.train_on_indices.clear_cache()  # the patched step must be traced, not a cached one
    request.addfinalizer(step.train_on_indices.clear_cache)  # and never reused by later tests
    c = tiny_config(base_checkpoint, **{"train.epochs": 4})
    with pytest.raises(stage.TrainingDiverged) as e:
        run.train_and_evaluate(c, str(tmp_path / "run"))
    msg = str(e.value)
    assert "the loss is nan in epoch 3" in msg and "last good checkpoint (epoch 2)" in msg
    steps = sorted(os.listdir(tmp_path / "run" / "checkpoints" / "stage0"))
    assert steps[-1] == "2"
    assert not (tmp_path / "run" / "result.json").exists()


def test_no_checkpoints_but_the_one_a_next_stage_resumes_from(tmp_path, base_checkpoint, caplog):
    overrides = {"train.checkpoint_every_epochs": 0, "train.epochs": 2}
    c = tiny_config(base_checkpoint, **overrides)
    reference = run.train_and_evaluate(
        tiny_config(base_checkpoint, **{"train.epochs": 2}), str(tmp_path / "a")
    )
    result = run.train_and_evaluate(c, str(tmp_path / "b"))
    assert result["final"] == reference["final"]  # checkpoints change no number
    assert os.listdir(tmp_path / "b" / "checkpoints" / "stage0") == []
    assert sorted(os.listdir(tmp_path / "a" / "checkpoints" / "stage0")) == ["1", "2"]
    # Two stages: the first stage's last epoch is kept (a resumed second stage restores it).
    two = tiny_config(
        base_checkpoint, **overrides, **{"strategy.name": "ft_then_pt", "ft_stage.epochs": 1}
    )
    first = run.train_and_evaluate(two, str(tmp_path / "c"))
    assert os.listdir(tmp_path / "c" / "checkpoints" / "stage0") == ["1"]
    assert os.listdir(tmp_path / "c" / "checkpoints" / "stage1") == []
    # Killed in stage 2 (its records dropped, no result): stage 1 is restored, not retrained.
    os.remove(tmp_path / "c" / records.RESULT)
    caplog.set_level(logging.INFO, logger="vpt_jax")
    again = run.train_and_evaluate(two, str(tmp_path / "c"))
    assert "resumed stage 1 from its epoch-1 checkpoint" in caplog.text
    rows = records.read_metrics(str(tmp_path / "c" / "metrics.jsonl"))
    assert [(r["stage"], r["epoch"]) for r in rows] == [(0, 1), (1, 1), (1, 2)]
    assert again["final"] == first["final"]


def test_ft_then_pt_runs_both_stages(tmp_path, base_checkpoint):
    c = tiny_config(base_checkpoint, **{"strategy.name": "ft_then_pt", "ft_stage.epochs": 1})
    result = run.train_and_evaluate(c, str(tmp_path / "run"))
    rows = records.read_metrics(str(tmp_path / "run" / "metrics.jsonl"))
    assert [(r["stage"], r["epoch"]) for r in rows] == [(0, 1), (1, 1), (1, 2)]
    # Stage 2 keeps stage 1's finetuned backbone frozen; the artifact carries it with the prompts.
    model, params, meta = load_artifact(tmp_path / "run" / "artifact.npz", base_checkpoint)
    assert meta["strategy"]["name"] == "ft_then_pt"
    assert result["tuned_parameters"] == result["total_parameters"]

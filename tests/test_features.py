"""Probes on cached features (issue 20): the frozen backbone runs once per split, not every step.

A linear or MLP probe on a frozen, deterministic backbone with no augmentation sees the same
backbone output for an example at every step, so training its head on features computed once must
give the numbers of the end-to-end path: every epoch's metrics, the curve subsets, the final
parameters, a streamed evaluation split, a resumed run and two devices.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params
from vpt_jax.train import features, feed, records, run, setup, stage
from vpt_jax.tuning.artifact import load_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
import tiny as tiny_cli_config  # noqa: E402

TINY = ViTConfig(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16)
METRICS = ("_loss", "_top1", "_accuracy")
CACHED = "; the head trains on them"
COMPUTED, REUSED = "examples computed once;", "examples reused from an earlier run of this process;"


@pytest.fixture(autouse=True)
def _fresh_features():
    features.clear()  # each test starts with no features kept from another test's runs
    yield
    features.clear()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.npz"
    save_npz(path, init_params(VisionTransformer(TINY, 7), 3))
    return str(path)


def _config(checkpoint: str, strategy: str, cache: bool, **train):
    c = tiny_cli_config.get_config()
    c.model.checkpoint = checkpoint
    c.strategy.name = strategy
    c.strategy.mlp_hidden = (24,)
    c.optimizer.lr = 2.0  # a probe's rate: the head moves far, so a difference would show
    c.train.epochs = 3
    c.train.cache_features = cache
    c.train.curve_every_epochs = 1
    c.train.curve_examples = 10
    for key, value in train.items():
        c.train[key] = value
    return c


def _metrics(workdir: str) -> list[dict[str, float]]:
    rows = records.read_metrics(os.path.join(workdir, records.METRICS))
    return [{k: v for k, v in r.items() if k.endswith(METRICS)} for r in rows]


def _assert_same_run(cached: str, direct: str, checkpoint: str) -> None:
    a, b = _metrics(cached), _metrics(direct)
    assert len(a) == len(b) == 3 and a[0].keys() == b[0].keys()
    assert any("_curve_" in k for k in a[0])
    for got, want in zip(a, b, strict=True):
        for key in want:
            assert got[key] == pytest.approx(want[key], rel=1e-5, abs=1e-6), key
    _, got_params, _ = load_artifact(os.path.join(cached, records.ARTIFACT), checkpoint)
    _, want_params, _ = load_artifact(os.path.join(direct, records.ARTIFACT), checkpoint)
    got_flat, want_flat = paths.flatten(got_params), paths.flatten(want_params)
    assert got_flat.keys() == want_flat.keys()
    for key, want in want_flat.items():
        np.testing.assert_allclose(got_flat[key], want, rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.mark.parametrize("strategy", ["linear", "mlp"])
def test_probes_on_cached_features_match_the_end_to_end_path(
    tmp_path, checkpoint, strategy, caplog
):
    caplog.set_level(logging.INFO, logger="vpt_jax")
    cached, direct = str(tmp_path / "cached"), str(tmp_path / "direct")
    run.train_and_evaluate(_config(checkpoint, strategy, True), cached)
    assert CACHED in caplog.text
    caplog.clear()
    run.train_and_evaluate(_config(checkpoint, strategy, False), direct)
    assert CACHED not in caplog.text
    _assert_same_run(cached, direct, checkpoint)
    # The head did move: the comparison is not between two untrained heads.
    rows = _metrics(direct)
    assert rows[0]["train_loss"] != pytest.approx(rows[-1]["train_loss"], rel=1e-3)


def test_streamed_evaluation_splits_are_featurised_as_they_stream(
    tmp_path, checkpoint, monkeypatch
):
    monkeypatch.setattr(setup, "EVAL_CACHE_BYTES", 0)  # no split is held: each one streams
    streamed = []
    real = feed.EvalData.batches

    def spy(self, batch_size, mesh, *, keep=True):
        streamed.append((self.name, self.resident, keep))
        yield from real(self, batch_size, mesh, keep=keep)

    monkeypatch.setattr(feed.EvalData, "batches", spy)
    cached, direct = str(tmp_path / "cached"), str(tmp_path / "direct")
    run.train_and_evaluate(_config(checkpoint, "linear", True), cached)
    # Each split (and its curve subset, which is kept) is read once, for its features.
    assert len(streamed) == 4 and all(not keep for _, _, keep in streamed)
    assert sorted(name for name, resident, _ in streamed if not resident) == ["test40", "val24"]
    monkeypatch.setattr(feed.EvalData, "batches", real)
    run.train_and_evaluate(_config(checkpoint, "linear", False), direct)
    _assert_same_run(cached, direct, checkpoint)


def test_runs_of_one_process_share_features_only_where_they_are_the_same(
    tmp_path, checkpoint, caplog
):
    caplog.set_level(logging.INFO, logger="vpt_jax")

    def cached_run(name, strategy="linear", base=checkpoint, lr=2.0, **data):
        c = _config(base, strategy, True)
        c.optimizer.lr = lr
        for field, value in data.items():
            c.data[field] = value
        caplog.clear()
        run.train_and_evaluate(c, str(tmp_path / name))
        return REUSED in caplog.text, COMPUTED in caplog.text

    assert cached_run("first") == (False, True)
    assert cached_run("other_lr", lr=0.5) == (True, False)  # a grid's next point
    assert cached_run("mlp", strategy="mlp") == (True, False)  # another head on one backbone
    assert cached_run("other_split", train_split="train48") == (False, True)
    other = str(tmp_path / "other.npz")  # same shapes, other weights
    save_npz(other, init_params(VisionTransformer(TINY, 7), 4))
    assert cached_run("other_weights", base=other) == (False, True)
    # A run on reused features ends as its end-to-end twin.
    direct = _config(checkpoint, "mlp", False)
    run.train_and_evaluate(direct, str(tmp_path / "mlp_direct"))
    _assert_same_run(str(tmp_path / "mlp"), str(tmp_path / "mlp_direct"), checkpoint)


def test_a_resumed_cached_run_ends_as_an_uninterrupted_one(tmp_path, checkpoint):
    reference, resumed = str(tmp_path / "reference"), str(tmp_path / "resumed")
    run.train_and_evaluate(_config(checkpoint, "mlp", True), reference)
    run.train_and_evaluate(_config(checkpoint, "mlp", True), resumed)
    # Undo the last epoch as a kill after epoch 2 leaves it: no result, no epoch-3 record or state.
    os.remove(os.path.join(resumed, records.RESULT))
    shutil.rmtree(os.path.join(resumed, "checkpoints", "stage0", "3"))
    metrics = os.path.join(resumed, records.METRICS)
    with open(metrics) as f:
        lines = f.readlines()
    with open(metrics, "w") as f:
        f.writelines(lines[:2])
    result = run.train_and_evaluate(_config(checkpoint, "mlp", True), resumed)
    assert [r["epoch"] for r in records.read_metrics(metrics)] == [1, 2, 3]
    want = records.read_json(os.path.join(reference, records.RESULT))["final"]
    assert result["final"] == pytest.approx(want, rel=1e-6)
    _assert_same_run(resumed, reference, checkpoint)


@pytest.mark.parametrize(
    "strategy, overrides, reason",
    [
        ("linear", {}, None),
        ("mlp", {}, None),
        ("vpt_deep", {}, "it adds Prompts inside the backbone"),
        ("lora", {}, "it adds LoRA inside the backbone"),
        ("full", {}, "its backbone's dropout runs while training"),
        ("bias", {}, "it trains backbone parameters (Transformer/"),
        ("partial", {}, "it trains backbone parameters (Transformer/"),
        ("linear", {"data.flip": True}, "its training images are augmented"),
        ("linear", {"data.crop_padding": 2}, "its training images are augmented"),
    ],
)
def test_which_stages_train_on_cached_features(checkpoint, strategy, overrides, reason):
    c = _config(checkpoint, strategy, True)
    for key, value in overrides.items():
        section, field = key.split(".")
        c[section][field] = value
    built = setup.build_run(c, 1)
    plan = built.stages[-1]
    model = plan.strategy.build_model(built.backbone, 8)
    params = init_params(model, 0)
    rates = stage.Schedule.create(plan, 64, c.train.batch_size)
    augmentation = stage.step.Augmentation(c.data.normalization, c.data.flip, c.data.crop_padding)
    program = stage.train_program(plan, model, params, rates, augmentation, feed.make_mesh())
    found = features.blocker(plan, program)
    assert found == reason if reason is None else found.startswith(reason), found


def test_two_devices_train_a_cached_probe_like_one_device(tmp_path, checkpoint):
    """The features are computed batch-sharded and gathered replicated, as the images are."""
    script = f"""
import json, logging, sys
logging.basicConfig(level=logging.INFO)
sys.path.insert(0, {os.path.join(ROOT, "tests")!r})
import jax
from test_features import _config
from vpt_jax.train import run
assert jax.device_count() == 2
config = _config({checkpoint!r}, "linear", True, epochs=2)
print(json.dumps(run.train_and_evaluate(config, {str(tmp_path / "two")!r})["final"]))
"""
    env = dict(
        os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert CACHED in proc.stderr + proc.stdout
    two = json.loads(proc.stdout.strip().splitlines()[-1])
    config = _config(checkpoint, "linear", True, epochs=2)
    one = run.train_and_evaluate(config, str(tmp_path / "one"))
    assert two == pytest.approx(one["final"], rel=1e-4)

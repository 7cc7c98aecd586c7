"""Grids as one program (issue 20): runs differing only in lr, weight decay and seed train together.

Each member of a batched grid must end as its single run does: the same records per epoch (every
metric, the curve subsets included), the same artifact, checkpoints the single-run path resumes
from. Tolerance: relative 1e-5 (absolute 1e-6) on every metric (measured here: <= 2e-7), and on
every parameter with absolute 5e-5: the vmapped matmuls may sum in another order, and AdamW's
normalised step turns a rounding-level gradient difference on a near-zero gradient into a
larger one (seen: 8e-6 on one FT weight of 2,048 at lr 0.03).
"""

from __future__ import annotations

import logging
import os
import sys

import numpy as np
import pytest

from vpt_jax import paths
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params
from vpt_jax.train import features, grid, records, run
from vpt_jax.train.run import RunStopped, TrainingDiverged
from vpt_jax.tuning.artifact import load_artifact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
import tiny as tiny_cli_config  # noqa: E402

TINY = ViTConfig(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16)
METRICS = ("_loss", "_top1", "_accuracy")
TOGETHER = "runs of"  # "3 runs of vpt_deep on ... train together"
# (lr, weight decay, seed): two learning rates, two decays, two seeds
MEMBERS = ((0.5, 0.0, 1), (0.1, 0.01, 1), (0.5, 0.001, 2))


@pytest.fixture(autouse=True)
def _fresh_features():
    features.clear()
    yield
    features.clear()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("base") / "tiny.npz"
    save_npz(path, init_params(VisionTransformer(TINY, 7), 3))
    return str(path)


def _config(checkpoint, strategy, lr, wd, seed, epochs=2):
    c = tiny_cli_config.get_config()
    c.model.checkpoint = checkpoint
    c.strategy.name = strategy
    c.optimizer.lr, c.optimizer.weight_decay, c.train.seed = lr, wd, seed
    c.train.epochs = epochs
    c.train.curve_every_epochs = 1
    c.train.curve_examples = 10
    return c


def _metrics(workdir):
    rows = records.read_metrics(os.path.join(workdir, records.METRICS))
    return [
        {k: v for k, v in r.items() if k.endswith(METRICS) or k in ("epoch", "step")} for r in rows
    ]


def _assert_same_run(got_dir, want_dir, checkpoint, epochs=2, curves=True):
    got, want = _metrics(got_dir), _metrics(want_dir)
    assert len(got) == len(want) == epochs and got[-1].keys() == want[-1].keys()
    assert any("_curve_" in k for k in got[0]) == curves
    assert [r.keys() for r in got] == [r.keys() for r in want]
    for a, b in zip(got, want, strict=True):
        for key in b:
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key
    _, a_params, a_meta = load_artifact(os.path.join(got_dir, records.ARTIFACT), checkpoint)
    _, b_params, b_meta = load_artifact(os.path.join(want_dir, records.ARTIFACT), checkpoint)
    a_flat, b_flat = paths.flatten(a_params), paths.flatten(b_params)
    assert a_flat.keys() == b_flat.keys()
    for key, value in b_flat.items():
        if key.endswith("/key/bias"):
            # Its gradient is zero in exact arithmetic (a softmax ignores a shift shared by every
            # key), so under FT's AdamW it moves by normalised rounding noise in either path.
            continue
        np.testing.assert_allclose(a_flat[key], value, rtol=1e-5, atol=5e-5, err_msg=key)
    a_result = records.read_json(os.path.join(got_dir, records.RESULT))
    b_result = records.read_json(os.path.join(want_dir, records.RESULT))
    assert a_result["final"] == pytest.approx(b_result["final"], rel=1e-5, abs=1e-6)
    assert a_result["config"] == b_result["config"]
    assert {k: v for k, v in a_result.items() if k not in ("final", "wall_time_s")} == {
        k: v for k, v in b_result.items() if k not in ("final", "wall_time_s")
    }


@pytest.mark.parametrize("strategy", ["vpt_deep", "linear", "full"])
def test_a_batched_grid_ends_as_its_single_runs(tmp_path, checkpoint, strategy, caplog):
    caplog.set_level(logging.INFO, logger="vpt_jax")
    configs = [_config(checkpoint, strategy, *m) for m in MEMBERS]
    dirs = [str(tmp_path / f"grid{i}") for i in range(len(MEMBERS))]
    outcomes = grid.train_grid(configs, dirs)
    assert f"3 {TOGETHER} {strategy}" in caplog.text
    for i, member in enumerate(MEMBERS):
        single = str(tmp_path / f"single{i}")
        run.train_and_evaluate(_config(checkpoint, strategy, *member), single)
        _assert_same_run(dirs[i], single, checkpoint)
        assert (
            outcomes[i]["final"]
            == records.read_json(os.path.join(dirs[i], records.RESULT))["final"]
        )
        # The members differ: the comparison is not between copies of one run.
        assert _metrics(dirs[i])[-1]["train_loss"] != _metrics(dirs[(i + 1) % 3])[-1]["train_loss"]
    # A finished member is not redone: the grid returns its record.
    caplog.clear()
    again = grid.train_grid(configs, dirs)
    assert TOGETHER not in caplog.text and [o["final"] for o in again] == [
        o["final"] for o in outcomes
    ]


def test_a_diverging_member_leaves_the_grid_and_the_others_finish(tmp_path, checkpoint):
    members = [(0.5, 0.0, 1), (1e38, 0.0, 1)]
    configs = [_config(checkpoint, "vpt_deep", *m) for m in members]
    dirs = [str(tmp_path / "good"), str(tmp_path / "bad")]
    outcomes = grid.train_grid(configs, dirs)
    assert isinstance(outcomes[1], TrainingDiverged) and "training diverged" in str(outcomes[1])
    with pytest.raises(TrainingDiverged) as single:  # alone it diverges in the same epoch
        run.train_and_evaluate(configs[1], str(tmp_path / "bad_single"))
    assert str(outcomes[1]).split(";")[0] == str(single.value).split(";")[0]
    assert not os.path.exists(os.path.join(dirs[1], records.RESULT))
    run.train_and_evaluate(configs[0], str(tmp_path / "good_single"))
    _assert_same_run(dirs[0], str(tmp_path / "good_single"), checkpoint)


def test_a_stopped_grid_resumes_member_by_member(tmp_path, checkpoint):
    configs = [_config(checkpoint, "vpt_deep", *m, epochs=3) for m in MEMBERS]
    dirs = [str(tmp_path / f"grid{i}") for i in range(len(MEMBERS))]
    asked = {i: 0 for i in range(len(MEMBERS))}

    def stop_after_two_epochs(i):
        def should_stop():
            asked[i] += 1
            return asked[i] > 2 or (i == 1 and asked[i] > 1)  # member 1 stops one epoch earlier

        return should_stop

    outcomes = grid.train_grid(configs, dirs, should_stop=[stop_after_two_epochs(i) for i in asked])
    assert all(isinstance(o, RunStopped) for o in outcomes)
    assert [len(_metrics(d)) for d in dirs] == [2, 1, 2]
    # Each member resumes from its own checkpoint on the single-run path, and ends as if
    # uninterrupted.
    for i, member in enumerate(MEMBERS):
        resumed = grid.train_grid([configs[i]], [dirs[i]])[0]
        assert resumed["final"]
        whole = str(tmp_path / f"whole{i}")
        run.train_and_evaluate(_config(checkpoint, "vpt_deep", *member, epochs=3), whole)
        _assert_same_run(dirs[i], whole, checkpoint, epochs=3)


def test_a_grid_larger_than_memory_trains_in_chunks(tmp_path, checkpoint, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="vpt_jax")
    monkeypatch.setattr(grid, "members_that_fit", lambda *args: 2)

    def config(member):  # evaluated after the last epoch only, as a study's search runs
        c = _config(checkpoint, "vpt_deep", *member, epochs=2)
        c.train.eval_every_epochs = c.train.curve_every_epochs = c.train.curve_examples = 0
        return c

    dirs = [str(tmp_path / f"grid{i}") for i in range(len(MEMBERS))]
    grid.train_grid([config(m) for m in MEMBERS], dirs)
    assert "training 2 runs together (1-2 of 3; up to 2 fit in memory)" in caplog.text
    assert "training run 3 of 3 on its own" in caplog.text
    for i in (0, 2):
        single = str(tmp_path / f"single{i}")
        run.train_and_evaluate(config(MEMBERS[i]), single)
        _assert_same_run(dirs[i], single, checkpoint, epochs=2, curves=False)
    assert "val24_top1" not in _metrics(dirs[0])[0] and "val24_top1" in _metrics(dirs[0])[1]


def test_the_memory_estimate_scales_with_the_batch(checkpoint):
    from vpt_jax.train import feed, stage
    from vpt_jax.train.setup import build_run

    c = _config(checkpoint, "vpt_deep", 0.5, 0.0, 1)
    built = build_run(c, 1)
    model = built.stages[0].strategy.build_model(built.backbone, 4)
    params = init_params(model, 0)
    rates = stage.Schedule.create(built.stages[0], 64, 16)
    mesh = feed.make_mesh()
    labels = stage.train_program(
        built.stages[0], model, params, rates, stage.step.Augmentation(), mesh
    ).label_tree()
    small = grid.members_that_fit(built, params, labels, 16, mesh)
    large = grid.members_that_fit(built, params, labels, 1024, mesh)
    assert small > large >= 1


def test_runs_that_cannot_train_together(tmp_path, checkpoint, caplog):
    caplog.set_level(logging.INFO, logger="vpt_jax")
    # Another strategy, batch or dataset is another program: refused as a programming error.
    other = _config(checkpoint, "vpt_deep", 0.5, 0.0, 1)
    other.train.batch_size = 8
    with pytest.raises(ValueError, match="differ only in lr, weight decay and seed"):
        grid.train_grid([_config(checkpoint, "vpt_deep", 0.5, 0.0, 1), other], ["a", "b"])
    # Without a pretrained checkpoint each seed's backbone is its own: one at a time.
    configs = [_config("", "vpt_deep", 0.5, 0.0, seed, epochs=1) for seed in (1, 2)]
    for c in configs:
        c.model.variant = "custom"
        c.model.patch_size, c.model.hidden_size, c.model.num_layers = 4, 32, 2
        c.model.num_heads, c.model.mlp_dim = 4, 64
    outcomes = grid.train_grid(configs, [str(tmp_path / "r1"), str(tmp_path / "r2")])
    assert "frozen weights differ" in caplog.text and TOGETHER not in caplog.text
    assert all(o["final"] for o in outcomes)
    # A two-stage strategy trains on its own.
    caplog.clear()
    two = [_config(checkpoint, "ft_then_pt", 0.5, 0.0, seed, epochs=1) for seed in (1, 2)]
    for c in two:
        c.ft_stage.epochs = 1
    grid.train_grid(two, [str(tmp_path / "t1"), str(tmp_path / "t2")])
    assert caplog.text.count("trains on its own: strategy ft_then_pt has 2 stages") == 2


def test_batch_keys_group_what_one_program_trains():
    def key(**fields):
        c = tiny_cli_config.get_config()
        for name, value in fields.items():
            section, field = name.split(".")
            c[section][field] = value
        return grid.batch_key(c)

    base = key()
    assert key(**{"optimizer.lr": 0.1}) == base
    assert key(**{"optimizer.weight_decay": 0.01}) == base
    assert key(**{"train.seed": 3}) == base
    assert key(**{"train.batch_size": 8}) != base
    assert key(**{"strategy.name": "linear"}) != base
    assert key(**{"data.train_split": "train32"}) != base

    # Under the reference recipe AdamW without weight decay trains as SGD: another program.
    def reference(weight_decay):
        c = tiny_cli_config.get_config()
        c.recipe, c.strategy.name, c.optimizer.weight_decay = "reference", "full", weight_decay
        return grid.batch_key(c)

    assert reference(0.01) == reference(0.001) != reference(0.0)

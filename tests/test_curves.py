"""Loss curves on a fixed subset of the eval split, full evaluations only when due (issue 20).

Evaluations never change training (they draw no randomness), so a run whose full test split is
evaluated only after its last epoch must end with exactly the metrics of one evaluated every epoch,
and its curve numbers must be those of the drawn subset evaluated alone.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

from vpt_jax.data import ArraySplit, DataSource
from vpt_jax.study import protocol
from vpt_jax.study.config import study_config
from vpt_jax.study.figures import _test_loss
from vpt_jax.train import feed, records, run

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs"))
import tiny as tiny_cli_config


def _split(n: int) -> ArraySplit:
    images = np.zeros((n, 4, 4, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 251  # an id per example
    images[:, 0, 0, 1] = np.arange(n) // 251
    labels = (np.arange(n) % 3).astype(np.int32)
    return ArraySplit(images, labels, 3, ("a", "b", "c"), "ids")


def _ids(split: ArraySplit) -> list[int]:
    low, high = (split.images[:, 0, 0, c].astype(int) for c in (0, 1))
    return (low + 251 * high).tolist()


def test_curve_subset_is_the_same_from_arrays_streams_and_unknown_length_streams():
    split = _split(1000)
    from_arrays = feed.curve_subset(split, 37, seed=3)
    stream = DataSource.from_arrays(split)
    from_stream = feed.curve_subset(stream, 37, seed=3)
    unknown = DataSource(stream.name, 3, split.class_names, 4, None, stream.read)
    from_unknown = feed.curve_subset(unknown, 37, seed=3)
    ids = _ids(from_arrays)
    assert len(ids) == 37 == len(set(ids)) and ids == sorted(ids)
    assert _ids(from_stream) == ids == _ids(from_unknown)
    assert from_stream.labels.tolist() == [i % 3 for i in ids]
    assert _ids(feed.curve_subset(split, 37, seed=4)) != ids  # the seed draws
    assert feed.curve_subset(split, 1000, seed=3) is None  # the whole split
    assert feed.curve_subset(stream, 5000, seed=3) is None


def test_eval_data_curve_is_the_subset_or_the_split_itself():
    source = DataSource.from_arrays(_split(50))
    assert feed.EvalData("test", source, 10**9).curve is None  # curves off
    whole = feed.EvalData("test", source, 10**9, curve_examples=0)
    assert whole.curve is whole
    drawn = feed.EvalData("test", source, 10**9, curve_examples=20)
    assert len(drawn.curve.cached) == 20
    assert _ids(drawn.curve.cached) == _ids(feed.curve_subset(_split(50), 20, feed.CURVE_SEED))
    streamed = feed.EvalData("test", source, cache_bytes=0, curve_examples=20)
    assert streamed.cached is None and len(streamed.curve.cached) == 20


def _tiny(checkpoint: str, **train):
    c = tiny_cli_config.get_config()
    c.model.checkpoint = checkpoint
    c.train.epochs = 3
    c.data.eval_splits = ("test40",)
    for key, value in train.items():
        c.train[key] = value
    return c


@pytest.fixture(scope="module")
def every_epoch(tmp_path_factory, tiny_checkpoint):
    workdir = str(tmp_path_factory.mktemp("every"))
    result = run.train_and_evaluate(_tiny(tiny_checkpoint), workdir)
    return result, records.read_metrics(os.path.join(workdir, records.METRICS))


def test_full_evaluation_only_at_the_end_ends_with_the_same_metrics(
    tmp_path, tiny_checkpoint, every_epoch
):
    reference, reference_rows = every_epoch
    config = _tiny(tiny_checkpoint, eval_every_epochs=0, curve_every_epochs=1, curve_examples=0)
    result = run.train_and_evaluate(config, str(tmp_path))
    rows = records.read_metrics(os.path.join(tmp_path, records.METRICS))
    assert result["final"] == reference["final"]  # exactly: evaluation does not touch training
    assert set(result["final"]) == {"train_loss", "train_accuracy", "test40_loss", "test40_top1"}
    assert ["test40_top1" in r for r in rows] == [False, False, True]
    for row, ref in zip(rows, reference_rows, strict=True):
        assert row["train_loss"] == ref["train_loss"]
        # The curve on the whole split is the full evaluation of every epoch.
        assert row["test40_curve_loss"] == pytest.approx(ref["test40_loss"], rel=1e-6)
        assert row["test40_curve_top1"] == pytest.approx(ref["test40_top1"], abs=1e-9)
        assert _test_loss(row, "test40") == row["test40_curve_loss"]


def test_curves_on_a_subset_are_that_subset_evaluated(tmp_path, tiny_checkpoint, every_epoch):
    reference, _ = every_epoch
    config = _tiny(tiny_checkpoint, eval_every_epochs=2, curve_every_epochs=2, curve_examples=16)
    result = run.train_and_evaluate(config, str(tmp_path / "curves"))
    rows = records.read_metrics(os.path.join(tmp_path / "curves", records.METRICS))
    assert result["final"] == reference["final"]
    assert ["test40_curve_loss" in r for r in rows] == [False, True, True]  # epochs 2 and 3 (last)
    assert ["test40_loss" in r for r in rows] == [False, True, True]
    # The same 16 examples, evaluated alone with the run's trained parameters.
    from ml_collections import ConfigDict

    from vpt_jax.data import get_dataset
    from vpt_jax.train import stage, step
    from vpt_jax.tuning.artifact import load_artifact

    model, params, _ = load_artifact(tmp_path / "curves" / records.ARTIFACT, tiny_checkpoint)
    test = get_dataset("procedural:location", "test40", image_size=16, seed=0).materialize()
    subset = feed.EvalData("test40", DataSource.from_arrays(test), 10**9, curve_examples=16).curve
    program = step.EvalProgram(model, result["config"]["data"]["normalization"])
    alone = stage.evaluate(program, params, subset, ConfigDict({"eval_batch_size": 16}),
                           feed.make_mesh())  # fmt: skip
    assert rows[-1]["test40_curve_loss"] == pytest.approx(alone["test40_loss"], rel=1e-5)
    assert rows[-1]["test40_curve_top1"] == pytest.approx(alone["test40_top1"], abs=1e-9)
    assert rows[-1]["test40_curve_loss"] != pytest.approx(rows[-1]["test40_loss"], rel=1e-6)


def test_the_study_evaluates_search_runs_once_and_draws_curves_for_final_runs():
    c = study_config()
    c.study.datasets = ("procedural:count",)
    search = protocol.RunSpec(protocol.SEARCH, "procedural:count", "vpt_deep", 0, 0, 1.0, 0.0, 42)
    final = protocol.RunSpec(protocol.FINAL, "procedural:count", "vpt_deep", 0, 0, 1.0, 0.0, 44)
    s, f = protocol.run_config(c, search).train, protocol.run_config(c, final).train
    assert (s.eval_every_epochs, s.curve_every_epochs, s.curve_examples) == (0, 0, 0)
    assert (f.eval_every_epochs, f.curve_every_epochs, f.curve_examples) == (0, 1, 2000)
    c.study.final.curve_every_epochs = 0  # no curves: no subset either
    assert protocol.run_config(c, final).train.curve_examples == 0
    c.study.final.curve_examples = -1
    with pytest.raises(Exception, match=r"study.final.curve_examples must be >= 0 \(0: the whole"):
        protocol.check_study(c.study)
    c.study.final.curve_examples = 2000
    c.run.train.eval_every_epochs = 5
    with pytest.raises(Exception, match=r"run.train.eval_every_epochs=5 is replaced"):
        protocol.check_template(c.run, study_config().run)


def test_loss_curve_figure_reads_curve_then_full_then_nothing():
    assert _test_loss({"test_curve_loss": 1.5, "test_loss": 2.0}, "test") == 1.5
    assert _test_loss({"test_loss": 2.0}, "test") == 2.0
    assert np.isnan(_test_loss({"train_loss": 2.0}, "test"))

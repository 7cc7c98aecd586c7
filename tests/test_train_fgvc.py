"""Training on FGVC: the official crops on the device, streamed vs resident splits, the study."""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import pytest

from tests.fgvc_fixtures import write_fgvc
from tests.test_train import ROOT, tiny_config
from vpt_jax.data import FGVC_TASKS
from vpt_jax.errors import UserError
from vpt_jax.study import protocol
from vpt_jax.study.config import FINETUNE_LRS, PAPER_SEEDS, PROMPT_LRS, PROMPT_WDS
from vpt_jax.train import records, run, train_data

CLASSES = 4  # the tests shrink Stanford Cars to 4 classes; its layout stays the official one


@pytest.fixture
def cars(tmp_path, monkeypatch):
    monkeypatch.setitem(
        FGVC_TASKS, "cars", dataclasses.replace(FGVC_TASKS["cars"], num_classes=CLASSES)
    )
    write_fgvc(str(tmp_path / "data"), "cars", per_class=(12, 3, 4))
    return str(tmp_path / "data")


def _fgvc_run(checkpoint, data_dir, **overrides):
    return tiny_config(
        checkpoint,
        **{
            "data.dataset": "fgvc/cars",
            "data.data_dir": data_dir,
            "data.train_split": "train",
            "data.eval_splits": ("val", "test"),
            "data.resize_crop": True,
            "data.flip": True,
            "data.normalization": "imagenet",
            **overrides,
        },
    )


def test_streamed_training_matches_the_resident_split(tmp_path, cars, tiny_checkpoint,
                                                      monkeypatch):  # fmt: skip
    streamed_steps = []
    epoch = train_data.TrainStream.epoch
    monkeypatch.setattr(
        train_data.TrainStream,
        "epoch",
        lambda self, indices: streamed_steps.append(len(indices)) or epoch(self, indices),
    )
    results = {}
    for stream in (False, True):
        workdir = str(tmp_path / f"stream{stream}")
        c = _fgvc_run(tiny_checkpoint, cars, **{"data.stream_train": stream})
        results[stream] = (run.train_and_evaluate(c, workdir), records.read_metrics(
            os.path.join(workdir, "metrics.jsonl")))  # fmt: skip
    assert streamed_steps == [3, 3]  # 48 images at batch 16, 2 epochs, streamed run only
    (ref, ref_rows), (got, got_rows) = results[False], results[True]
    assert got["train_examples"] == ref["train_examples"] == 12 * CLASSES
    assert got["num_classes"] == CLASSES
    for a, b in zip(ref_rows, got_rows, strict=True):
        for key in ("train_loss", "train_accuracy", "val_loss", "test_loss", "test_top1"):
            assert b[key] == pytest.approx(a[key], rel=1e-6, abs=1e-7), key
    assert got["final"] == pytest.approx(ref["final"], rel=1e-6)
    # The random crops and flips changed the training loss: the augmentation ran.
    run.train_and_evaluate(
        _fgvc_run(tiny_checkpoint, cars, **{"data.resize_crop": False, "data.flip": False}),
        str(tmp_path / "plain"),
    )
    plain_rows = records.read_metrics(str(tmp_path / "plain" / "metrics.jsonl"))
    assert plain_rows[0]["train_loss"] != pytest.approx(ref_rows[0]["train_loss"], rel=1e-4)


def test_resize_crop_needs_an_fgvc_dataset(tmp_path, tiny_checkpoint):
    c = tiny_config(tiny_checkpoint, **{"data.resize_crop": True})
    with pytest.raises(
        UserError,
        match=r"data.resize_crop=True crops images kept at their own "
        r"size, which only fgvc/<name> datasets keep; procedural:location",
    ):
        run.train_and_evaluate(c, str(tmp_path / "run"))  # before any work
    assert not os.path.exists(tmp_path / "run" / "metrics.jsonl")


def _study_module():
    path = os.path.join(ROOT, "configs", "study", "fgvc.py")
    spec = importlib.util.spec_from_file_location("study_fgvc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fgvc_study_config_plans_the_papers_runs():
    c = _study_module().get_config()
    specs = protocol.search_specs(c.study, {}, c.run)
    # Independently: 5 datasets x (VPT-deep: 10 lr x 4 wd with SGD; FT under the reference
    # recipe: 4 lr x (the official 0.01, and 0 = SGD)).
    per_dataset = len(PROMPT_LRS) * len(PROMPT_WDS) + len(FINETUNE_LRS) * 2
    assert len(specs) == 5 * per_dataset == 240
    assert {s.dataset for s in specs} == {f"fgvc/{t}" for t in FGVC_TASKS}
    vpt = next(s for s in specs if s.strategy == "vpt_deep")
    search = protocol.run_config(c, vpt)
    assert (search.data.train_split, search.data.eval_splits) == ("train", ("val",))
    assert search.data.resize_crop and search.data.flip and search.model.image_size == 224
    assert search.strategy.num_prompts == 10
    finals = protocol.final_specs(c.study, vpt)
    assert sorted(s.seed for s in finals) == sorted(PAPER_SEEDS)
    final = protocol.run_config(c, finals[0])
    assert (final.data.train_split, final.data.eval_splits) == ("train", ("test",))
    subset = _study_module().get_config("tasks=cub+stanford_dogs,strategies=full")
    assert subset.study.datasets == ("fgvc/cub", "fgvc/dogs")


def test_tiny_fgvc_study_end_to_end(tmp_path, cars, tiny_checkpoint):
    import sys

    sys.path.insert(0, os.path.join(ROOT, "tests", "configs"))
    import tiny_study

    from vpt_jax.study.runner import run_study

    c = tiny_study.get_config()
    c.run.model.checkpoint = tiny_checkpoint
    c.run.data.data_dir = cars
    c.run.data.resize_crop = c.run.data.flip = True
    c.run.data.stream_train = True  # the grid path streams too
    s = c.study
    s.datasets = ("fgvc/cars",)
    s.search.train_split, s.search.eval_split = "train", "val"
    s.final.train_split, s.final.eval_split = "train", "test"
    c.run.train.epochs = c.run.train.checkpoint_every_epochs = 1
    s.grids.prompt.lrs, s.grids.prompt.weight_decays = (0.5, 0.1), (0.0,)
    s.grids.finetune.lrs, s.grids.finetune.weight_decays = (0.01,), (0.001,)
    s.batch_runs = 2
    summary = run_study(c, str(tmp_path / "study"))
    rows = {(r["dataset"], r["strategy"]): r for r in summary["rows"]}
    assert set(rows) == {("fgvc/cars", "full"), ("fgvc/cars", "vpt_deep")}
    markdown = (tmp_path / "study" / "report" / "results.md").read_text()
    assert "fgvc" in markdown and "All runs finished." in markdown

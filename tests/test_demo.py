"""The embedded demo: the shipped backbone is a google-layout checkpoint, and the demo study runs."""

from __future__ import annotations

import importlib.util
import os

import pytest

from vpt_jax.models.checkpoint import read_npz, to_canonical

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def demo_module():
    path = os.path.join(ROOT, "configs", "demo.py")
    spec = importlib.util.spec_from_file_location("demo_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_shipped_backbone_is_a_small_google_checkpoint():
    path = demo_module().DEMO_CHECKPOINT
    assert os.path.getsize(path) < 5e6
    flat = read_npz(path)
    assert "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel" in flat
    canonical, layout = to_canonical(flat)
    assert layout == "original" and canonical["embedding/kernel"].shape == (8, 8, 3, 128)


def test_demo_study_runs_in_tiny_mode(tmp_path):
    from vpt_jax.study.runner import run_study

    config = demo_module().get_config("tiny")
    summary = run_study(config, str(tmp_path))
    assert not summary["missing"]
    assert {(r["task"], r["strategy"]) for r in summary["rows"]} == {
        ("count", "full"),
        ("count", "vpt_deep"),
    }
    for name in ("results.md", "results.csv", "loss_curves.png", "wins.png"):
        assert (tmp_path / "report" / name).stat().st_size > 0


def test_demo_takes_a_recipe():
    module = demo_module()
    assert module.get_config().run.recipe == "clean"
    c = module.get_config("tiny,recipe=reference")
    assert c.run.recipe == "reference" and c.run.train.epochs == 2
    # The demo's grids keep its batch and warmup under either recipe.
    assert c.study.grids.finetune.batch_size == c.run.train.batch_size == 32
    assert c.study.grids.prompt.warmup_epochs == c.run.optimizer.warmup_epochs == 2
    for bad in ("recipe=paper", "small", "tiny,seed=1"):
        with pytest.raises(ValueError, match="configs/demo.py|recipe="):
            module.get_config(bad)

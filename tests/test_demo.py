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
    # The main study (2 tasks x FT, VPT-deep) and the scaling sweep's larger size on digits; its
    # size 32 is the main study's own runs (the same splits), not trained twice.
    points = {(r["task"], r["strategy"], r["size"]) for r in summary["rows"]}
    assert points == {
        (t, s, n)
        for t, s, n in [
            *((t, s, 0) for t in ("scene_count", "digits") for s in ("full", "vpt_deep")),
            ("digits", "full", 64),
            ("digits", "vpt_deep", 64),
        ]
    }
    assert not os.path.exists(tmp_path / "runs" / "final" / "procedural-digits" / "full" / "n32")
    assert all(r["seeds"] == 2 for r in summary["rows"])
    report = tmp_path / "report"
    for name in ("loss_curves.png", "scaling.png", "wins.png", "quadrants.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    for name in ("results.md", "results.csv", "fid.csv", "quadrants.md", "quadrants.csv"):
        assert (report / name).stat().st_size > 0, name
    text = (report / "results.md").read_text()
    assert "mean ± std over seeds" in text and "pooled std" in text
    assert "### training size 64" in text
    # The quadrant section: each task's FID, quadrant, the paper's and the advisor's choice, and
    # the measured margin, ordered by FID.
    section = text[text.index("## Quadrants") :]
    assert "| task | FID | disparity | distributions | paper prefers | advisor |" in section
    lines = [line for line in section.splitlines() if line.startswith("| procedural:")]
    assert {line.split(" | ")[0][2:] for line in lines} == {
        "procedural:digits",
        "procedural:scene_count",
    }
    fids = [float(line.split(" | ")[1]) for line in lines]
    assert fids == sorted(fids) and all(f > 0 for f in fids)
    assert "The measured winner matches the advisor in" in section
    # A second report reads the cached statistics: nothing is embedded again.
    from vpt_jax.study.report import write_report

    stats = sorted(os.listdir(tmp_path / "statistics"))
    assert len(stats) == 3  # the reference and the two tasks
    mtimes = [os.path.getmtime(tmp_path / "statistics" / f) for f in stats]
    write_report(config, str(tmp_path))
    assert [os.path.getmtime(tmp_path / "statistics" / f) for f in stats] == mtimes


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

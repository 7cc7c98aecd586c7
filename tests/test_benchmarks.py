"""The benchmark scripts run end to end in their tiny `--smoke` mode (no timing is asserted)."""

from __future__ import annotations

import importlib
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
train_step = importlib.import_module("train_step")
protocol_cost = importlib.import_module("protocol_cost")
frechet_bench = importlib.import_module("frechet")


def test_train_step_smoke_vpt_jax_only(capsys):
    rows = train_step.main(["--smoke", "--no-torch"])
    assert [r["variant"] for r in rows] == [
        "full",
        "linear",
        "vpt_shallow p=2",
        "vpt_deep p=2",
        "mixed p=2",
    ]
    assert all(r["train_img_s"]["jax"] > 0 and r["eval_img_s"]["jax"] > 0 for r in rows)
    printed = capsys.readouterr().out
    assert "VPT/FT step time at 19 tokens" in printed and "allocator: " in printed


def test_train_step_smoke_with_the_torch_reference(capsys):
    if train_step.import_torch()[0] is None:  # registers torchvision's ops before timm imports
        pytest.skip("torch/timm not installed")
    rows = train_step.main(["--smoke", "--variants", "full,vpt_deep:2,mixed:2"])
    assert all(r["train_img_s"].keys() == {"jax", "torch"} for r in rows)
    assert "/torch" in capsys.readouterr().out


def test_torch_reference_inserts_prompts_like_the_official_code():
    torch, timm_vit = train_step.import_torch()
    if torch is None:
        pytest.skip("torch/timm not installed")
    from vpt_jax.models.vit import ViTConfig

    cfg = ViTConfig(**train_step.SMOKE_CONFIG)
    seen = []
    for deep, expected in ((True, 2), (False, 1)):
        vit = timm_vit.VisionTransformer(
            img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, num_classes=3
        )
        variant = train_step.Variant("vpt_deep" if deep else "vpt_shallow", 2)
        model = train_step._PromptedViT(torch, vit, cfg, variant)
        assert model.prompts.shape == (expected, 2, 32)
        hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0])) for b in vit.blocks]
        model(torch.zeros(1, 3, 16, 16))
        for hook in hooks:
            hook.remove()
        # [cls, prompts, patches] at every block; deep: block 1 sees its own prompt set.
        assert all(x.shape == (1, 1 + 2 + 16, 32) for x in seen[-2:])
        own_set = model.prompts[1 if deep else 0]
        assert torch.equal(seen[-1][0, 1:3], own_set) == deep


def test_protocol_cost_smoke(capsys, tmp_path):
    from vpt_jax.study.cost import StepTimes

    saved = str(tmp_path / "step_times.json")
    protocol_cost.main(["--smoke", "--strategies", "full,vpt_deep,linear", "--save", saved])
    printed = capsys.readouterr().out
    times = StepTimes.load(saved)  # what a paper plan's device-hours read
    assert set(times.train) == {"weights", "prompts", "probe"} and len(times.train["prompts"]) == 2
    low, high = sorted(times.train["prompts"])  # the two measured token counts
    assert times.train_s("prompts", (low + high) // 2) > 0 and times.decode_s > 0
    assert times.eval_s(min(times.eval)) > 0
    assert f"--config.paper.step_times={saved}" in printed
    assert "Assumptions:" in printed and "TOTAL curves (search: val200" in printed
    assert "TOTAL every (" in printed and "TOTAL last (" in printed
    # Probes are projected on cached features, and end to end beside them.
    assert "TOTAL curves, probes end to end (train.cache_features=False" in printed
    assert "compile per run: weights" in printed and "prompts" in printed and "probe" in printed
    # Grids and seeds trained together (vpt_jax.train.grid): measured, then projected.
    assert "2 runs together:" in printed and "runs trained together (vpt_jax.train.grid)" in printed
    assert "TOTAL curves, grids and seeds trained 2 runs at a time (study.batch_runs)" in printed


def test_grid_smoke(capsys):
    grid_bench = importlib.import_module("grid")
    single, together, worst = grid_bench.main(["--smoke"])
    assert single > 0 and together > 0 and worst < 1e-5
    assert "ratio one-at-a-time / together" in capsys.readouterr().out


def test_test_sizes_come_from_the_vtab_table():
    from vpt_jax.data import VTAB_TASKS

    sizes = {name: protocol_cost.test_size(task) for name, task in VTAB_TASKS.items()}
    assert sizes["cifar100"] == 10000
    assert sizes["eurosat"] == 27000 - 21600  # train[21600:]
    assert sizes["smallnorb_azimuth"] == 12150  # test[50%:]
    assert sizes["clevr_count"] == 15000  # the validation split
    assert sizes.keys() == set(protocol_cost.SOURCE_KIND)


def test_frechet_smoke(capsys):
    rows = frechet_bench.main(["--smoke"])
    pairs = [r["pair"] for r in rows]
    assert pairs == ["full rank", "8 vs 128", "8 vs 8", "full rank", "16 vs 256", "16 vs 16"]
    # Both methods agree, and the symmetric one matches the value computed from the features.
    assert all(r["rel_diff"] < 1e-6 and abs(r["symmetric_err"]) < 1e-10 for r in rows)
    assert "ratio" in capsys.readouterr().out


def test_gpu_trainer_smoke(capsys):
    gpu_trainer = importlib.import_module("gpu_trainer")
    rows = gpu_trainer.main(["--smoke"])
    assert [r["strategy"] for r in rows] == ["full", "vpt_deep p=2"]
    assert all(r["images_per_s"] > 0 and r["steps"] >= 4 for r in rows)
    printed = capsys.readouterr().out
    assert "trainer end to end, tiny, batch 8:" in printed and "VPT/FT step time" in printed
    assert "batched grid: 2 runs trained together vs one run" in printed


def test_probes_smoke(capsys):
    probes = importlib.import_module("probes")
    cached, direct = probes.main(["--smoke"])
    assert cached["cache_features"] and not direct["cache_features"]
    assert cached["final"] == pytest.approx(direct["final"], rel=1e-5)
    assert "ratio (end to end / cached)" in capsys.readouterr().out

"""Per-task artifacts (export / load on the base), LoRA merging, and tuned/total budgets."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from tests.test_tuning import KW, batch, setup
from vpt_jax import paths
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import load_pretrained, save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params
from vpt_jax.train.step import TrainState
from vpt_jax.tuning.artifact import (
    export_artifact,
    export_merged_checkpoint,
    load_artifact,
    read_artifact,
)
from vpt_jax.tuning.budget import budget, vtab_table
from vpt_jax.tuning.strategies import get_strategy


def trained(name, config, base_path, steps=3):
    """A model of `name` started from the base checkpoint and trained a few steps."""
    strategy = get_strategy(name, **KW)
    model, _, labels, tx, step = setup(strategy, config)
    params = load_pretrained(base_path, model)
    state = TrainState.create(params, tx, jax.random.key(0))
    for i in range(steps):
        state, _ = step(state, batch(i))
    return strategy, model, state.params


@pytest.fixture
def base(tmp_path, tiny_config):
    path = tmp_path / "base.npz"
    params = init_params(VisionTransformer(tiny_config, None), 11)
    save_npz(path, params)
    return path


@pytest.mark.parametrize(
    "name", ["vpt_deep", "vpt_shallow", "lora", "linear", "mlp", "full", "ft_then_pt"]
)
def test_round_trip_reproduces_logits_exactly(name, tiny_config, base, tmp_path):
    strategy, model, params = trained(name, tiny_config, base)
    meta = export_artifact(
        tmp_path / "task.npz", params, strategy=strategy, config=tiny_config, num_classes=4
    )
    images = batch(5)["image"]
    expected = model.apply({"params": params}, images)[0]
    model2, params2, meta2 = load_artifact(tmp_path / "task.npz", base)
    np.testing.assert_array_equal(model2.apply({"params": params2}, images)[0], expected)
    assert meta2["tuned_parameters"] == meta["tuned_parameters"]
    flat, _ = read_artifact(tmp_path / "task.npz")
    total = sum(v.size for v in paths.flatten(params).values())
    if name in ("full", "ft_then_pt"):
        assert sum(v.size for v in flat.values()) == total
    else:
        # Only the tuned leaves travel: prompts / LoRA factors / MLP head, and the head.
        assert all(k.startswith(("head", "Transformer/prompt/")) or "_lora/" in k for k in flat)
        assert sum(v.size for v in flat.values()) < 0.2 * total


def test_artifact_refuses_another_base(tiny_config, base, tmp_path):
    strategy, _, params = trained("vpt_deep", tiny_config, base, steps=1)
    export_artifact(
        tmp_path / "task.npz", params, strategy=strategy, config=tiny_config, num_classes=4
    )
    other = tmp_path / "other.npz"
    save_npz(other, init_params(VisionTransformer(tiny_config, None), 12))
    with pytest.raises(UserError, match="was trained on another base checkpoint"):
        load_artifact(tmp_path / "task.npz", other)
    with pytest.raises(UserError, match="not a vpt_jax task artifact"):
        load_artifact(base, base)


def test_lora_merges_into_a_plain_vit(tiny_config, base, tmp_path):
    strategy, model, params = trained("lora", tiny_config, base)
    export_merged_checkpoint(tmp_path / "merged.npz", params, strategy)
    plain = VisionTransformer(tiny_config, 4)
    merged = load_pretrained(tmp_path / "merged.npz", plain, keep_head=True)
    assert not any("_lora" in k for k in paths.flatten(merged))
    images = batch(6)["image"]
    np.testing.assert_allclose(
        plain.apply({"params": merged}, images)[0],
        model.apply({"params": params}, images)[0],
        rtol=1e-5,
        atol=1e-5,
    )
    vpt = get_strategy("vpt_deep", num_prompts=2)
    with pytest.raises(UserError, match="prompted model cannot be merged"):
        export_merged_checkpoint(tmp_path / "x.npz", params, vpt)


def test_budget_vit_b16():
    b16 = ViTConfig.from_variant("B/16")
    vpt = budget(get_strategy("vpt_deep", num_prompts=10), b16, 100)
    assert vpt.tuned == 12 * 10 * 768 + 768 * 100 + 100
    assert vpt.total == 85_798_656 + vpt.tuned
    assert budget(get_strategy("full"), b16, 100).percent == 100.0
    lin = budget(get_strategy("linear"), b16, 1000)
    assert lin.total == 86_567_656 and lin.tuned == 768_000 + 1000
    shallow = budget(get_strategy("vpt_shallow", num_prompts=10), b16, 100)
    assert shallow.tuned == 10 * 768 + 76_900


def test_vtab_budget_table_uses_the_paper_prompt_lengths():
    rows = {r["task"]: r for r in vtab_table("vpt_deep", "B/16")}
    assert len(rows) == 19
    assert rows["cifar100"]["tuned"] == 169_060
    assert rows["smallnorb_azimuth"]["prompts"] == 200
    assert rows["oxford_iiit_pet"]["percent"] == pytest.approx(100 * 37_669 / 85_836_325)


def test_budget_command_prints_the_table(capsys):
    from vpt_jax.tuning.budget import main

    main(["--strategy", "vpt_deep"])
    out = capsys.readouterr().out
    assert "| cifar100" in out and "0.197" in out and "mean over 19 tasks" in out


def _as_format_1(strategy_dict):
    """A strategy as format 1 stored it: additions as fields of the strategy."""
    fields = {"num_prompts": 0, "deep_prompts": False, "prompt_dropout": 0.0, "prompt_dim": None}
    fields.update(lora_rank=0, lora_alpha=1.0, head_mlp_dims=[])
    for addition in strategy_dict["additions"]:
        if addition["kind"] == "prompts":
            fields.update(num_prompts=addition["count"], deep_prompts=addition["deep"])
            fields.update(prompt_dropout=addition["dropout"], prompt_dim=addition["dim"])
        elif addition["kind"] == "lora":
            fields.update(lora_rank=addition["rank"], lora_alpha=addition["alpha"])
        else:
            fields.update(head_mlp_dims=addition["hidden"])
    return {
        "name": strategy_dict["name"],
        "rules": strategy_dict["rules"],
        **fields,
        "backbone_dropout": strategy_dict["backbone_dropout"],
        "optimizer": strategy_dict["optimizer"],
        "stages": [_as_format_1(s) for s in strategy_dict["stages"]],
    }


@pytest.mark.parametrize("name", ["vpt_deep", "lora", "mlp", "ft_then_pt"])
def test_format_1_artifacts_still_load(name, tiny_config, base, tmp_path):
    import json

    from vpt_jax.models.checkpoint import atomic_write_npz
    from vpt_jax.tuning.artifact import META_KEY

    strategy, model, params = trained(name, tiny_config, base, steps=1)
    export_artifact(
        tmp_path / "new.npz", params, strategy=strategy, config=tiny_config, num_classes=4
    )
    flat, meta = read_artifact(tmp_path / "new.npz")
    old = dict(meta, format_version=1, strategy=_as_format_1(meta["strategy"]))
    flat[META_KEY] = np.frombuffer(json.dumps(old).encode(), dtype=np.uint8)
    atomic_write_npz(tmp_path / "old.npz", flat)
    model2, params2, meta2 = load_artifact(tmp_path / "old.npz", base)
    assert model2 == model.__class__(tiny_config, 4, strategy.final.additions)
    images = batch(5)["image"]
    np.testing.assert_array_equal(
        model2.apply({"params": params2}, images)[0], model.apply({"params": params}, images)[0]
    )
    assert meta2["strategy"] == meta["strategy"]

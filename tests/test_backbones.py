"""Choosing a backbone in a run: model.family, its files, its defaults, strategies and the study.

Every family trains FT and VPT-deep end to end here, from a checkpoint written in its exact file
format (tiny shapes, procedural data).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os

import numpy as np
import pytest

from vpt_jax import paths, recipe
from vpt_jax.config import base_config
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import read_checkpoint
from vpt_jax.models.family import config_from_dict, config_to_dict, layout_of
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params, param_shapes
from vpt_jax.study import protocol
from vpt_jax.study.config import FINETUNE_LRS, PAPER_SEEDS, PROMPT_LRS, PROMPT_WDS
from vpt_jax.study.report import group_tables
from vpt_jax.train.backbone import BACKBONES
from vpt_jax.train.run import train_and_evaluate
from vpt_jax.train.setup import build_run
from vpt_jax.tuning.artifact import load_artifact
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import get_strategy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_VIT = ViTConfig(
    patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16
)
TINY_SWIN = dict(embed_dim=16, depths=(2, 2), stage_heads=(2, 4), window_size=2, patch_size=2)
POSEMB = "Transformer/posembed_input/pos_embedding"


def run_config(family: str, checkpoint: str, strategy: str = "vpt_deep", **model):
    c = base_config()
    c.model.family = family
    c.model.checkpoint = checkpoint
    c.model.image_size = 16
    if family == "swin":
        c.model.variant = "custom"
        for key, value in TINY_SWIN.items():
            c.model[key] = value
    else:
        c.model.variant = "custom"
        c.model.patch_size, c.model.hidden_size, c.model.num_layers = 4, 32, 2
        c.model.num_heads, c.model.mlp_dim = 4, 64
    for key, value in model.items():
        c.model[key] = value
    c.data.dataset = "procedural:location"
    c.data.train_split = "train32"
    c.data.eval_splits = ("test16",)
    c.strategy.name = strategy
    c.strategy.num_prompts = 2
    c.optimizer.lr = 0.1 if strategy == "vpt_deep" else 0.001
    c.optimizer.warmup_epochs = 0
    c.train.epochs = 1
    c.train.batch_size = 16
    c.train.eval_batch_size = 16
    return c


def _torch():
    from tests.torch_reference import torch

    return torch


def _save_torch(path, state_dict, wrapper: str | None):
    torch = _torch()
    tensors = {k: torch.from_numpy(np.array(v)) for k, v in state_dict.items()}
    torch.save({wrapper: tensors} if wrapper else tensors, path)


def write_family_checkpoint(family: str, directory) -> str:
    """A tiny pretrained backbone of `family` in its official file format."""
    from vpt_jax.models import timm_vit

    if family == "swin":
        from vpt_jax.models import swin_checkpoint
        from vpt_jax.models.swin import SwinConfig, SwinTransformer

        config = SwinConfig(
            embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2, patch_size=2,
            image_size=16,
        )  # fmt: skip
        flat = paths.flatten(init_params(SwinTransformer(config, None), 3))
        flat = {k: np.asarray(v) for k, v in flat.items()}
        path = os.path.join(directory, "swin_tiny_22k.pth")
        _save_torch(path, swin_checkpoint.from_canonical(flat, "swin_official"), "model")
        return path
    config = dataclasses.replace(TINY_VIT, pool="gap") if family == "mae" else TINY_VIT
    flat = {
        k: np.asarray(v)
        for k, v in paths.flatten(init_params(VisionTransformer(config, None), 3)).items()
    }
    if family == "mae":
        flat = {k: v for k, v in flat.items() if not k.startswith("fc_norm/")}
        flat["Transformer/encoder_norm/scale"] = np.ones(32, np.float32)
        flat["Transformer/encoder_norm/bias"] = np.zeros(32, np.float32)
        flat[POSEMB] = flat[POSEMB].copy()
        flat[POSEMB][:, 0] = 0.0  # MAE's stored sin-cos embedding has a zero class-token row
        path = os.path.join(directory, "mae_pretrain_vit_tiny.pth")
        _save_torch(path, timm_vit.from_canonical(flat, "mae"), "model")
    elif family == "moco_v3":
        path = os.path.join(directory, "linear-vit-tiny-300ep.pth.tar")
        state = timm_vit.from_canonical(flat, "moco_v3")
        _save_torch(path, state, "state_dict")
    else:
        from vpt_jax.models.torch_files import write_safetensors

        path = os.path.join(directory, "model.safetensors")
        write_safetensors(path, timm_vit.from_canonical(flat, "timm"))
    return path


FAMILIES = ("vit", "mae", "moco_v3", "swin")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    pytest.importorskip("torch")
    directory = tmp_path_factory.mktemp("backbones")
    return {family: write_family_checkpoint(family, str(directory)) for family in FAMILIES}


def test_each_family_reads_its_files_and_refuses_the_others(checkpoints):
    for family in FAMILIES:
        build_run(run_config(family, checkpoints[family]), 1)
    layouts = {f: read_checkpoint(checkpoints[f]).layout for f in FAMILIES}
    assert layouts == {"vit": "timm", "mae": "mae", "moco_v3": "moco_v3", "swin": "swin_official"}
    with pytest.raises(
        UserError, match=r"model.family=vit expects .* swin_official layout; set model.family=swin"
    ):
        build_run(run_config("vit", checkpoints["swin"]), 1)
    with pytest.raises(
        UserError, match=r"model.family=swin expects .* mae layout; set model.family=mae"
    ):
        build_run(run_config("swin", checkpoints["mae"]), 1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(family="resnet"), "unknown model.family 'resnet'"),
        (dict(family="swin", variant="B/16"), "not a Swin variant"),
        (dict(family="swin", gelu_approximate=True), "pretrained with exact GELU"),
        (dict(drop_path_rate=1.5), "drop_path_rate is a probability"),
    ],
)
def test_backbone_mistakes_are_one_line_errors(overrides, message):
    c = run_config("vit", "")
    for key, value in overrides.items():
        c.model[key] = value
    with pytest.raises(UserError, match=message):
        build_run(c, 1)


def test_backbones_bring_their_pretraining_settings_under_either_recipe():
    for name in ("clean", "reference"):
        c = run_config("mae", "")
        c.recipe = name
        r = recipe.resolve(c)
        assert (r.model.gelu_approximate, r.model.dropout_rate) == (False, 0.0)
        assert r.data.normalization == "imagenet"
    clean = recipe.resolve(run_config("vit", ""))
    assert clean.model.gelu_approximate and clean.data.normalization == "inception"
    mine = run_config("moco_v3", "")
    mine.data.normalization = "inception"  # what the user sets stays
    assert recipe.resolve(mine).data.normalization == "inception"
    # The family's official stochastic depth, unless set; it runs only where the backbone trains.
    assert build_run(run_config("mae", ""), 1).backbone.drop_path_rate == 0.1
    assert build_run(run_config("swin", ""), 1).backbone.drop_path_rate == 0.5
    assert build_run(run_config("swin", "", drop_path_rate=0.2), 1).backbone.drop_path_rate == 0.2
    assert build_run(run_config("moco_v3", ""), 1).backbone.drop_path_rate == 0.0


def test_moco_keeps_its_position_embedding_frozen_under_every_strategy():
    config = build_run(run_config("moco_v3", "", "full"), 1).backbone
    keys = list(paths.flatten(param_shapes(VisionTransformer(config, 5))))
    for name in ("full", "mixed", "bias"):
        strategy = get_strategy(name, layout=layout_of(config), num_layers=2)
        labels = label_paths(keys, strategy.rules)
        assert labels[POSEMB] == FROZEN, name
        assert labels["embedding/kernel"] != FROZEN or name == "bias"
    assert layout_of(TINY_VIT).frozen == ()


def test_backbone_configs_round_trip_through_their_records():
    for family in FAMILIES:
        config = build_run(run_config(family, ""), 1).backbone
        data = json.loads(json.dumps(config_to_dict(config)))
        assert data["family"] == ("swin" if family == "swin" else "vit")
        assert config_from_dict(data) == config
    assert config_from_dict(dataclasses.asdict(TINY_VIT)) == TINY_VIT  # records before families


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_trains_ft_and_vpt_deep_end_to_end(tmp_path, checkpoints, family):
    base = read_checkpoint(checkpoints[family])
    results = {}
    for strategy in ("full", "vpt_deep"):
        workdir = str(tmp_path / strategy)
        results[strategy] = train_and_evaluate(
            run_config(family, checkpoints[family], strategy), workdir
        )
        model, params, meta = load_artifact(os.path.join(workdir, "artifact.npz"), base.path)
        flat = paths.flatten(params)
        if family == "moco_v3" and strategy == "full":  # frozen even when finetuning
            np.testing.assert_array_equal(flat[POSEMB], base.flat[POSEMB])
        if family == "mae" and strategy == "full":  # the fresh fc_norm trains under FT
            assert not np.allclose(flat["fc_norm/scale"], 1.0)
    for strategy, result in results.items():
        assert np.isfinite(result["final"]["test16_top1"]), (family, strategy)
    tuned = results["vpt_deep"]["tuned_parameters"]
    width_sum = (16 + 16 + 2 * 32) if family == "swin" else 2 * 32  # one set per block
    head_in = 32
    classes = results["vpt_deep"]["num_classes"]
    assert tuned == 2 * width_sum + head_in * classes + classes  # prompts (p=2) + the head
    full = results["full"]
    frozen = base.flat[POSEMB].size if family == "moco_v3" else 0  # MoCo's stays frozen
    assert full["tuned_parameters"] == full["total_parameters"] - frozen


def _backbones_study(arg: str | None = None):
    spec = importlib.util.spec_from_file_location(
        "backbones_study", os.path.join(ROOT, "configs", "study", "backbones.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


@pytest.mark.parametrize("backbone", ("swin", "mae", "moco_v3"))
def test_backbones_study_plans_the_appendix_runs(backbone):
    c = _backbones_study(f"backbone={backbone}")
    specs = protocol.search_specs(c.study, {}, c.run)
    # Independently: 19 tasks x (VPT-deep: 10 lr x 4 wd with SGD; FT under the reference recipe:
    # 4 lr x (the official AdamW 0.01, and 0 = SGD)).
    per_task = len(PROMPT_LRS) * len(PROMPT_WDS) + len(FINETUNE_LRS) * 2
    assert len(specs) == 19 * per_task == 912
    vpt = next(s for s in specs if s.strategy == "vpt_deep")
    run = protocol.run_config(c, vpt)
    assert run.model.family == backbone and run.model.checkpoint
    assert len(protocol.final_specs(c.study, vpt)) == len(PAPER_SEEDS)
    if backbone == "swin":
        assert (run.train.batch_size, run.model.variant) == (80, "B")
        ft = next(s for s in specs if s.strategy == "full")
        assert protocol.run_config(c, ft).train.batch_size == 224
    else:
        assert run.train.batch_size == 64 and run.model.variant == "B/16"
    with pytest.raises(UserError, match="unknown backbone 'resnet'"):
        _backbones_study("backbone=resnet")


def test_group_tables_print_each_group_like_the_appendix():
    rows = [
        dict(task=t, group=g, strategy=s, mean=m, std=0.5, tuned_percent=p, size=0, shots=0)
        for t, g in (("cifar100", "natural"), ("dtd", "natural"), ("clevr_count", "structured"))
        for s, m, p in (("full", 50.0, 100.0), ("vpt_deep", 60.0 if t != "dtd" else 40.0, 0.1))
    ]
    text = group_tables(rows, "full", "swin B")
    assert "### swin B: natural" in text and "### swin B: structured" in text
    natural = text.split("### swin B: natural")[1].split("###")[0]
    assert "| vpt_deep | 60.0 ± 0.5 | 40.0 ± 0.5 | 50.0 | 1/2 | 0.100 |" in natural
    assert "clevr_count" not in natural


def test_every_backbone_is_documented_in_the_readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## Backbones")[1].split("\n## ")[0]
    for name in BACKBONES:
        assert f"`{name}`" in section

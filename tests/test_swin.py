"""The Swin Transformer: parity with timm on the official and timm files, prompts, counts, rules."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.torch_reference import torch
from vpt_jax import paths
from vpt_jax.models import swin_checkpoint
from vpt_jax.models.additions import Prompts
from vpt_jax.models.checkpoint import load_pretrained, read_checkpoint
from vpt_jax.models.family import SWIN_LAYOUT
from vpt_jax.models.swin import SwinConfig, SwinTransformer
from vpt_jax.models.swin_blocks import MASKED, relative_position_index, shift_mask
from vpt_jax.models.torch_files import write_safetensors
from vpt_jax.models.vit import init_params, param_shapes
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import STRATEGIES, get_strategy

timm_swin = pytest.importorskip("timm.models.swin_transformer")

# Three stages, the last one clipped to its resolution (window 4 at 4x4: no shift).
TINY = dict(
    img_size=32, patch_size=2, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4
)
CONFIG = SwinConfig(
    embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4, patch_size=2, image_size=32
)


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def random_timm(seed: int = 0, **kwargs):
    """timm's Swin with every parameter randomised (norms and bias tables included)."""
    torch.manual_seed(seed)
    model = timm_swin.SwinTransformer(**{**TINY, "num_classes": 5, **kwargs}).eval()
    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.from_numpy(rng.normal(0, 0.05, tuple(p.shape)).astype(np.float32)))
    return model


def timm_outputs(model, images):
    with torch.no_grad():
        x = torch.from_numpy(images).permute(0, 3, 1, 2)
        return model.forward_head(model.forward_features(x), pre_logits=True).numpy(), model(
            x
        ).numpy()


def ours(path, images, config=CONFIG):
    model = SwinTransformer(config, 5)
    params = load_pretrained(path, model, keep_head=True)
    logits, out = model.apply({"params": params}, jnp.asarray(images))
    return out["pre_logits"], logits


def test_swin_matches_timm_from_the_official_and_the_timm_files(tmp_path):
    model = random_timm()
    timm_sd = {k: v.numpy() for k, v in model.state_dict().items()}
    flat, layout = swin_checkpoint.to_canonical(timm_sd)
    assert layout == "swin_timm"
    official = swin_checkpoint.from_canonical(flat, "swin_official")
    assert "layers.0.downsample.reduction.weight" in official and "head.weight" in official
    torch.save({"model": {k: torch.from_numpy(v) for k, v in official.items()}}, tmp_path / "o.pth")
    write_safetensors(tmp_path / "t.safetensors", timm_sd)
    # timm reads the official file through its own filter: both files hold the same network.
    reloaded = random_timm(seed=1)
    reloaded.load_state_dict(
        timm_swin.checkpoint_filter_fn(
            {k: torch.from_numpy(v) for k, v in official.items()}, reloaded
        )
    )
    images = np.random.default_rng(2).normal(size=(3, 32, 32, 3)).astype(np.float32)
    features, logits = timm_outputs(model, images)
    np.testing.assert_allclose(timm_outputs(reloaded, images)[1], logits, rtol=1e-5, atol=1e-6)
    for name, expected_layout in (("o.pth", "swin_official"), ("t.safetensors", "swin_timm")):
        checkpoint = read_checkpoint(tmp_path / name)
        assert (checkpoint.family, checkpoint.layout) == ("swin", expected_layout)
        assert (
            dataclasses.replace(
                swin_checkpoint.config_from_checkpoint(checkpoint.flat), image_size=32
            )
            == CONFIG
        )
        got_features, got_logits = ours(checkpoint, images)
        assert rel_l2(got_features, features) <= 1e-5, name
        assert rel_l2(got_logits, logits) <= 1e-5, name
    back, _ = swin_checkpoint.to_canonical(official)
    assert set(back) == set(flat) and all(np.array_equal(back[k], flat[k]) for k in flat)


def test_full_size_swin_b_matches_timm(tmp_path):
    torch.manual_seed(0)
    model = timm_swin.swin_base_patch4_window7_224(num_classes=7).eval()
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    flat, _ = swin_checkpoint.to_canonical(sd)
    config = SwinConfig.from_variant("B")
    assert swin_checkpoint.config_from_checkpoint(flat) == config
    images = np.random.default_rng(0).normal(size=(1, 224, 224, 3)).astype(np.float32)
    write_safetensors(tmp_path / "b.safetensors", sd)
    model_ours = SwinTransformer(config, 7)
    params = load_pretrained(tmp_path / "b.safetensors", model_ours, keep_head=True)
    logits, out = jax.jit(lambda p, x: model_ours.apply({"params": p}, x))(params, images)
    features, expected = timm_outputs(model, images)
    assert rel_l2(out["pre_logits"], features) <= 1e-5
    assert rel_l2(logits, expected) <= 1e-5


def test_swin_b_parameter_counts():
    count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
    timm_b = timm_swin.swin_base_patch4_window7_224(num_classes=0)
    timm_count = sum(p.numel() for p in timm_b.parameters())
    shapes = paths.flatten(param_shapes(SwinTransformer(SwinConfig.from_variant("B"), None)))
    assert count(shapes) == timm_count == 86_743_224
    for p in (1, 5):
        deep = SwinTransformer(SwinConfig.from_variant("B"), None, (Prompts(p, deep=True),))
        prompts = {k: v for k, v in paths.flatten(param_shapes(deep)).items() if "prompt" in k}
        assert count(prompts) == 12_032 * p
        assert len(prompts) == 4  # one tensor per stage: 2 + 2 + 18 + 2 sets


def test_relative_position_index_and_shift_mask_follow_the_official_formulas():
    index = relative_position_index(7)
    h, w = np.divmod(np.arange(49), 7)
    expected = (h[:, None] - h[None] + 6) * 13 + (w[:, None] - w[None] + 6)
    np.testing.assert_array_equal(index, expected)
    mask = shift_mask(14, 7, 3)
    assert mask.shape == (4, 49, 49) and set(np.unique(mask)) == {0.0, MASKED}
    assert not mask[0].any()  # the top-left window lies in one region
    assert mask[3].any() and (np.diagonal(mask, axis1=1, axis2=2) == 0).all()


@pytest.mark.parametrize("deep", [False, True])
def test_per_image_prompts_ignore_the_batch_and_the_official_order_does_not(deep):
    images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
    outputs = {}
    for mixing in (False, True):
        config = dataclasses.replace(CONFIG, prompt_batch_mixing=mixing)
        model = SwinTransformer(config, 5, (Prompts(3, deep=deep),))
        params = init_params(model, 0)
        apply = jax.jit(lambda p, x, m=model: m.apply({"params": p}, x)[1]["pre_logits"])
        batch = np.asarray(apply(params, images))
        alone = np.concatenate([np.asarray(apply(params, images[i : i + 1])) for i in range(3)])
        outputs[mixing] = (batch, alone)
    batch, alone = outputs[False]
    np.testing.assert_allclose(batch, alone, rtol=1e-5, atol=1e-6)
    mixed_batch, mixed_alone = outputs[True]
    if deep:
        # Deep prompts are replaced before every block by the same set for every image, so the
        # official ordering changes nothing at evaluation (prompt dropout differs per image).
        np.testing.assert_allclose(mixed_batch, batch, rtol=1e-5, atol=1e-6)
    else:  # shallow prompts evolve per image: in the official order images see each other's
        assert rel_l2(mixed_batch, mixed_alone) > 1e-3
    np.testing.assert_allclose(mixed_alone, alone, rtol=1e-5, atol=1e-6)  # alike at batch 1


@pytest.mark.parametrize("name", [s for s in STRATEGIES if s not in ("partial",)] + ["partial"])
def test_every_strategy_trains_on_swin(name):
    config = dataclasses.replace(CONFIG, drop_path_rate=0.2)
    strategy = get_strategy(
        name, num_prompts=2, num_layers=config.num_layers, layout=SWIN_LAYOUT, mlp_hidden=(8,),
        lora_rank=2, partial_k=2,
    )  # fmt: skip
    model = strategy.final.build_model(config, 5)
    params = init_params(model, 0)
    labels = label_paths(list(paths.flatten(params)), strategy.final.rules)
    trained = {k for k, label in labels.items() if label != FROZEN}
    if name == "vpt_deep":
        assert trained == {"prompt/embeddings_0", "prompt/embeddings_1", "prompt/embeddings_2",
                           "head/kernel", "head/bias"}  # fmt: skip
    if name == "lora":
        assert trained and all("_lora/" in k or k.startswith("head/") for k in trained)
    images = jnp.ones((2, 32, 32, 3))
    rngs = {"dropout": jax.random.key(1)}
    loss = lambda p: model.apply({"params": p}, images, train=True, rngs=rngs)[0].sum()
    grads = paths.flatten(jax.grad(loss)(params))
    assert all(np.isfinite(np.asarray(g)).all() for g in grads.values())
    assert any(np.abs(np.asarray(grads[k])).sum() > 0 for k in trained)


def test_drop_path_runs_only_when_the_backbone_trains():
    config = dataclasses.replace(CONFIG, drop_path_rate=0.5)
    model = SwinTransformer(config, 5)
    params = init_params(model, 0)
    images = jnp.asarray(np.random.default_rng(0).normal(size=(4, 32, 32, 3)), jnp.float32)
    run = lambda **kw: np.asarray(
        model.apply({"params": params}, images, rngs={"dropout": jax.random.key(3)}, **kw)[1][
            "pre_logits"
        ]
    )
    np.testing.assert_array_equal(run(train=True, backbone_train=False), run(train=False))
    assert not np.allclose(run(train=True), run(train=False))

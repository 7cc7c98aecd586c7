"""MAE and MoCo v3 ViTs (and timm's augreg files) against timm, from files in their exact formats.

Random weights are written as the downloads hold them: timm's `model.safetensors`, MAE's
`mae_pretrain_vit_base.pth` (`{'model': encoder}`), its finetuned `{'model': ...}` files (fc_norm and
a head), MoCo v3's `linear-vit-b-300ep.pth.tar` (`{'state_dict': {'module.' + name: ...}}`) and its
pretraining `vit-b-300ep.pth.tar` (`module.base_encoder.`, a momentum encoder and a predictor).
Each is read by vpt_jax and by timm's `VisionTransformer` with the family's pooling: MAE is
`global_pool="avg", fc_norm=True` (no final norm; a fresh ones/zeros fc_norm), MoCo and augreg
`global_pool="token"`. VPT-deep on MAE is checked against a PyTorch re-expression of the official
prompted forward (KMnP `vit_prompt/vit_mae.py`).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.torch_reference import torch
from vpt_jax import paths
from vpt_jax.models import torch_files
from vpt_jax.models.additions import Prompts
from vpt_jax.models.checkpoint import load_pretrained, read_checkpoint
from vpt_jax.models.drop_path import drop_path_rates
from vpt_jax.models.family import layout_of
from vpt_jax.models.vit import VisionTransformer, ViTConfig, param_shapes
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import get_strategy

timm_vision = pytest.importorskip("timm.models.vision_transformer")

POSEMB = "Transformer/posembed_input/pos_embedding"
TINY = ViTConfig(
    patch_size=4,
    hidden_size=48,
    num_layers=3,
    num_heads=4,
    mlp_dim=96,
    image_size=16,
    gelu_approximate=False,
)
CLASSES = 10
IMAGES = np.random.default_rng(0).uniform(-2, 2, (3, 16, 16, 3)).astype(np.float32)


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - b) / np.linalg.norm(b))


def timm_model(config: ViTConfig, pool: str, num_classes: int = 0, seed: int = 0, **kwargs):
    """timm's ViT of `config`, every parameter random (biases and norms too).

    Built on the meta device and filled once: timm's own initialisation of a ViT-B costs seconds.
    """
    with torch.device("meta"):
        model = timm_vision.VisionTransformer(
            img_size=config.image_size,
            patch_size=config.patch_size,
            embed_dim=config.hidden_size,
            depth=config.num_layers,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_dim / config.hidden_size,
            qkv_bias=True,
            num_classes=num_classes,
            global_pool="avg" if pool == "gap" else "token",
            fc_norm=pool == "gap",
            weight_init="skip",
            **kwargs,
        )
    model = model.to_empty(device="cpu")
    generator = torch.Generator().manual_seed(seed)
    scale = 0.3 if config.hidden_size < 256 else 0.02
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.normal_(0.0, scale, generator=generator)
            if "norm" in name and name.endswith("weight"):
                p.add_(1.0)  # LayerNorm scales around one, as trained ones are
    return model.eval()


def state_of(model) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy().copy() for k, v in model.state_dict().items()}


def save_torch(path, tensors: dict[str, np.ndarray], wrap) -> str:
    torch.save(wrap({k: torch.from_numpy(v) for k, v in tensors.items()}), str(path))
    return str(path)


def timm_outputs(model, images: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(pooled features, logits or None) of a timm model."""
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2))
        pooled = model.forward_head(tokens, pre_logits=True)
        logits = model.head(pooled) if model.num_classes else None
    return pooled.numpy(), None if logits is None else logits.numpy()


@functools.cache
def _forward(model: VisionTransformer):
    return jax.jit(lambda params, images: model.apply({"params": params}, images))


def ours(config: ViTConfig, path, images: np.ndarray, num_classes: int | None = None):
    """(pooled features, logits or None) of vpt_jax's model loaded from `path` (or a Checkpoint)."""
    model = VisionTransformer(config, num_classes)
    params = load_pretrained(path, model, keep_head=num_classes is not None)
    logits, out = _forward(model)(params, jnp.asarray(images))
    return np.asarray(out["pre_logits"]), (np.asarray(logits) if num_classes else None)


def mae_pretrain_file(directory, config: ViTConfig, seed: int = 0) -> tuple[str, dict]:
    """`mae_pretrain_vit_base.pth`: the encoder with its final norm, no head, no fc_norm."""
    encoder = state_of(timm_model(config, "token", seed=seed))
    encoder["pos_embed"][:, 0] = 0.0  # the stored sin-cos table's class row is zero
    path = save_torch(directory / "mae_pretrain_vit.pth", encoder, lambda t: {"model": t})
    return path, encoder


def test_augreg_safetensors_matches_timm_token_pooling(tmp_path):
    reference = timm_model(TINY, "token", CLASSES, seed=1)
    path = tmp_path / "model.safetensors"
    torch_files.write_safetensors(path, state_of(reference))
    assert read_checkpoint(path).layout == "timm"
    pooled, logits = ours(TINY, str(path), IMAGES, CLASSES)
    want_pooled, want_logits = timm_outputs(reference, IMAGES)
    assert rel_l2(pooled, want_pooled) <= 1e-5
    assert rel_l2(logits, want_logits) <= 1e-5


def test_mae_pretraining_file_matches_timm_average_pooling(tmp_path):
    path, encoder = mae_pretrain_file(tmp_path, TINY, seed=2)
    read = read_checkpoint(path)
    assert (read.layout, read.format) == ("mae", "torch")
    reference = timm_model(TINY, "gap", seed=5)
    missing, unexpected = reference.load_state_dict(
        {k: torch.from_numpy(v) for k, v in encoder.items()}, strict=False
    )
    assert set(missing) == {"fc_norm.weight", "fc_norm.bias"}  # as MAE's main_finetune asserts
    assert set(unexpected) == {"norm.weight", "norm.bias"}  # MAE deletes the final norm
    torch.nn.init.ones_(reference.fc_norm.weight)  # fresh, as timm's init leaves it
    torch.nn.init.zeros_(reference.fc_norm.bias)
    config = dataclasses.replace(TINY, pool="gap")
    pooled, _ = ours(config, path, IMAGES)
    assert rel_l2(pooled, timm_outputs(reference, IMAGES)[0]) <= 1e-5
    params = paths.flatten(load_pretrained(path, VisionTransformer(config, CLASSES)))
    assert "Transformer/encoder_norm/scale" not in params  # dropped, as MAE deletes its norm
    np.testing.assert_array_equal(params["fc_norm/scale"], 1.0)
    np.testing.assert_array_equal(params["fc_norm/bias"], 0.0)


def test_mae_finetuned_file_with_fc_norm_and_head_matches_timm_logits(tmp_path):
    reference = timm_model(TINY, "gap", CLASSES, seed=3)  # fc_norm random too
    state = state_of(reference)
    assert "norm.weight" not in state and "fc_norm.weight" in state
    path = save_torch(tmp_path / "mae_finetuned_vit.pth", state, lambda t: {"model": t})
    pooled, logits = ours(dataclasses.replace(TINY, pool="gap"), path, IMAGES, CLASSES)
    want_pooled, want_logits = timm_outputs(reference, IMAGES)
    assert rel_l2(pooled, want_pooled) <= 1e-5
    assert rel_l2(logits, want_logits) <= 1e-5


def test_moco_linear_probe_file_matches_timm_logits(tmp_path):
    reference = timm_model(TINY, "token", CLASSES, seed=4)
    state = {f"module.{k}": v for k, v in state_of(reference).items()}
    path = save_torch(tmp_path / "linear-vit-b-300ep.pth.tar", state, lambda t: {"state_dict": t})
    assert read_checkpoint(path).layout == "moco_v3"
    config = dataclasses.replace(TINY, frozen_posemb=True)
    pooled, logits = ours(config, path, IMAGES, CLASSES)
    want_pooled, want_logits = timm_outputs(reference, IMAGES)
    assert rel_l2(pooled, want_pooled) <= 1e-5
    assert rel_l2(logits, want_logits) <= 1e-5


def test_moco_pretraining_file_matches_timm_features(tmp_path):
    reference = timm_model(TINY, "token", seed=6)
    encoder = state_of(reference)
    rng = np.random.default_rng(0)
    state = {f"module.base_encoder.{k}": v for k, v in encoder.items()}
    state |= {f"module.momentum_encoder.{k}": v * 2 for k, v in encoder.items()}
    for prefix in ("module.base_encoder.head", "module.momentum_encoder.head", "module.predictor"):
        state[f"{prefix}.0.weight"] = rng.normal(size=(64, 48)).astype(np.float32)
        state[f"{prefix}.1.weight"] = np.ones(64, np.float32)
    path = save_torch(tmp_path / "vit-b-300ep.pth.tar", state, lambda t: {"state_dict": t})
    assert read_checkpoint(path).layout == "moco_v3"
    pooled, _ = ours(TINY, path, IMAGES)
    assert rel_l2(pooled, timm_outputs(reference, IMAGES)[0]) <= 1e-5


def official_prompted_mae(reference, images: np.ndarray, prompts: np.ndarray) -> np.ndarray:
    """KMnP `vit_prompt/vit_mae.py` (VPT-deep, `VIT_POOL_TYPE original`), in eval mode.

    CLS + patches + pos_embed; P prompts right after the CLS; before block i >= 1 the tokens
    [1:1+P] are replaced by deep set i-1 (here `prompts[i]`); mean over tokens[1:] (prompts
    included), then fc_norm.
    """
    p = prompts.shape[1]
    deep = torch.from_numpy(np.array(prompts))  # a writable copy
    with torch.no_grad():
        x = reference.patch_embed(torch.from_numpy(images).permute(0, 3, 1, 2))
        x = torch.cat([reference.cls_token.expand(x.shape[0], -1, -1), x], dim=1)
        x = reference.pos_drop(x + reference.pos_embed)
        b = x.shape[0]
        x = torch.cat([x[:, :1], deep[0].expand(b, -1, -1), x[:, 1:]], dim=1)
        for i, block in enumerate(reference.blocks):
            if i >= 1:
                x = torch.cat([x[:, :1], deep[i].expand(b, -1, -1), x[:, 1 + p :]], dim=1)
            x = block(x)
        return reference.fc_norm(x[:, 1:].mean(dim=1)).numpy()


def test_vpt_deep_on_mae_matches_the_official_prompted_forward(tmp_path):
    path, encoder = mae_pretrain_file(tmp_path, TINY, seed=7)
    config = dataclasses.replace(TINY, pool="gap")
    model = VisionTransformer(config, None, additions=(Prompts(count=3, deep=True),))
    params = load_pretrained(path, model, rng=1)
    prompts = np.asarray(params["Transformer"]["prompt"]["embeddings"])
    assert prompts.shape == (3, 3, 48)  # one set per block
    _, out = _forward(model)(params, jnp.asarray(IMAGES))
    reference = timm_model(TINY, "gap")
    reference.load_state_dict({k: torch.from_numpy(v) for k, v in encoder.items()}, strict=False)
    torch.nn.init.ones_(reference.fc_norm.weight)
    torch.nn.init.zeros_(reference.fc_norm.bias)
    want = official_prompted_mae(reference, IMAGES, prompts)
    assert rel_l2(out["pre_logits"], want) <= 1e-5
    # Averaging the patches alone (without the prompts) is measurably something else.
    patches = np.asarray(out["encoded"])[:, 1 + 3 :].mean(axis=1)
    patches = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(patches.var(-1)[:, None] + 1e-6)
    assert rel_l2(patches, want) > 1e-3


@pytest.mark.parametrize("family", ["timm", "mae", "moco_v3"])
def test_full_size_vit_b16_matches_timm(tmp_path, family):
    config = ViTConfig.from_backbone("mae" if family == "mae" else "moco_v3")
    assert (config.hidden_size, config.num_layers, config.patch_size) == (768, 12, 16)
    images = np.random.default_rng(1).uniform(-2, 2, (1, 224, 224, 3)).astype(np.float32)
    if family == "mae":
        path, encoder = mae_pretrain_file(tmp_path, config, seed=8)
        reference = timm_model(config, "gap")
        reference.load_state_dict(
            {k: torch.from_numpy(v) for k, v in encoder.items()}, strict=False
        )
        torch.nn.init.ones_(reference.fc_norm.weight)
        torch.nn.init.zeros_(reference.fc_norm.bias)
    else:
        reference = timm_model(config, "token", seed=9)
        state = state_of(reference)
        if family == "timm":
            path = str(tmp_path / "model.safetensors")
            torch_files.write_safetensors(path, state)
        else:
            state = {f"module.{k}": v for k, v in state.items()}
            path = save_torch(tmp_path / "linear.pth.tar", state, lambda t: {"state_dict": t})
    read = read_checkpoint(path)
    assert read.layout == family
    pooled, _ = ours(config, read, images)
    assert rel_l2(pooled, timm_outputs(reference, images)[0]) <= 1e-5


def test_backbone_configs_are_the_official_ones():
    mae, moco = ViTConfig.from_backbone("mae"), ViTConfig.from_backbone("moco_v3")
    for config in (mae, moco):
        assert not config.gelu_approximate and config.head_init == "vpt"
        assert config.dropout_rate == config.attention_dropout_rate == 0.0
        assert config == dataclasses.replace(ViTConfig.from_variant("B/16"), **_diff(config))
    assert (mae.pool, mae.drop_path_rate, mae.frozen_posemb) == ("gap", 0.1, False)
    assert (moco.pool, moco.drop_path_rate, moco.frozen_posemb) == ("token", 0.0, True)
    assert ViTConfig.from_backbone("mae", image_size=384).grid_size == 24
    with pytest.raises(ValueError, match="unknown ViT backbone 'dino'; use one of: mae, moco_v3"):
        ViTConfig.from_backbone("dino")
    with pytest.raises(ValueError, match="unknown pool 'cls'; use one of: token, gap"):
        ViTConfig(pool="cls")


def _diff(config: ViTConfig) -> dict:
    base = ViTConfig.from_variant("B/16")
    return {
        f.name: getattr(config, f.name)
        for f in dataclasses.fields(config)
        if getattr(config, f.name) != getattr(base, f.name)
    }


def test_drop_path_rates_rise_as_timms_and_run_only_with_backbone_train():
    with torch.device("meta"):  # the rates only
        reference = timm_vision.VisionTransformer(
            img_size=16, patch_size=4, embed_dim=48, depth=12, num_heads=4, drop_path_rate=0.1
        )
    timm_rates = [getattr(b.drop_path1, "drop_prob", 0.0) for b in reference.blocks]
    assert [getattr(b.drop_path2, "drop_prob", 0.0) for b in reference.blocks] == timm_rates
    np.testing.assert_allclose(drop_path_rates(0.1, 12), timm_rates, rtol=1e-6)
    config = dataclasses.replace(TINY, pool="gap", drop_path_rate=0.5)
    model = VisionTransformer(config, None, additions=(Prompts(count=2, deep=True),))
    params = jax.tree.map(
        lambda s: np.random.default_rng(0).normal(0, 0.3, s.shape).astype(np.float32),
        param_shapes(model),
    )
    x = jnp.asarray(IMAGES)
    run = lambda seed, **kw: np.asarray(
        model.apply({"params": params}, x, rngs={"dropout": jax.random.key(seed)}, **kw)[0]
    )
    evaluated = run(0, train=False)
    # VPT: prompts train, the frozen backbone runs deterministic (official train() override).
    np.testing.assert_array_equal(run(0, train=True, backbone_train=False), evaluated)
    finetuned = run(0, train=True)  # FT: backbone_train follows train
    assert not np.allclose(finetuned, evaluated)
    np.testing.assert_array_equal(run(0, train=True), finetuned)  # the rng decides
    assert not np.allclose(run(1, train=True), finetuned)
    # The schedule starts at 0: a one-block model never drops, whatever the rate.
    one = VisionTransformer(dataclasses.replace(config, num_layers=1), None)
    one_params = jax.tree.map(
        lambda s: np.random.default_rng(1).normal(0, 0.3, s.shape).astype(np.float32),
        param_shapes(one),
    )
    np.testing.assert_array_equal(
        one.apply({"params": one_params}, x, train=True, rngs={"dropout": jax.random.key(0)})[0],
        one.apply({"params": one_params}, x)[0],
    )


def test_moco_position_embedding_stays_frozen_under_full_finetuning():
    config = ViTConfig.from_backbone("moco_v3", num_layers=2, image_size=32)
    keys = list(paths.flatten(param_shapes(VisionTransformer(config, 5))))
    labels = label_paths(keys, get_strategy("full", layout=layout_of(config)).rules)
    assert labels[POSEMB] == FROZEN
    assert all(labels[k] != FROZEN for k in keys if k != POSEMB)
    mae = ViTConfig.from_backbone("mae", num_layers=2, image_size=32)
    mae_keys = list(paths.flatten(param_shapes(VisionTransformer(mae, 5))))
    mae_labels = label_paths(mae_keys, get_strategy("full", layout=layout_of(mae)).rules)
    assert "fc_norm/scale" in mae_labels and FROZEN not in mae_labels.values()
    assert not any(k.startswith("Transformer/encoder_norm") for k in mae_keys)

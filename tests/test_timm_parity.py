"""Forward parity with timm's VisionTransformer loaded from the same .npz file by timm's own loader."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest

from tests.test_checkpoint import random_params, write_in21k
from tests.torch_reference import torch
from vpt_jax import paths
from vpt_jax.models.checkpoint import load_pretrained, save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig

timm_vit = pytest.importorskip("timm.models.vision_transformer")


def timm_model(config: ViTConfig, path, **kwargs) -> torch.nn.Module:
    model = timm_vit.VisionTransformer(
        img_size=config.image_size,
        patch_size=config.patch_size,
        embed_dim=config.hidden_size,
        depth=config.num_layers,
        num_heads=config.num_heads,
        mlp_ratio=config.mlp_dim / config.hidden_size,
        num_classes=0,
        global_pool="token",
        **kwargs,
    )
    model.load_pretrained(str(path))
    return model.eval()


def timm_features(model, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        tokens = model.forward_features(torch.from_numpy(images).permute(0, 3, 1, 2))
    return tokens[:, 0].numpy()


def ours(config: ViTConfig, path, images: np.ndarray, **load_kwargs) -> np.ndarray:
    model = VisionTransformer(config, None)
    params = load_pretrained(path, model, **load_kwargs)
    return np.asarray(model.apply({"params": params}, jnp.asarray(images))[1]["pre_logits"])


def rel_l2(a, b) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


CONFIG = ViTConfig(
    patch_size=4,
    hidden_size=48,
    num_layers=3,
    num_heads=4,
    mlp_dim=96,
    image_size=16,
    gelu_approximate=False,  # timm and the PyTorch VPT code use exact GELU
)
IMAGES = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype(np.float32)


def test_in21k_layout_matches_timm(tmp_path):
    write_in21k(tmp_path / "in21k.npz", CONFIG)
    ref = timm_features(timm_model(CONFIG, tmp_path / "in21k.npz"), IMAGES)
    got = ours(CONFIG, tmp_path / "in21k.npz", IMAGES)
    assert rel_l2(got, ref) <= 1e-5


def test_augreg_layout_matches_timm(tmp_path):
    # augreg files: original names, no pre_logits, a valid head.
    save_npz(tmp_path / "augreg.npz", random_params(CONFIG, 21843, seed=3))
    ref = timm_features(timm_model(CONFIG, tmp_path / "augreg.npz"), IMAGES)
    assert rel_l2(ours(CONFIG, tmp_path / "augreg.npz", IMAGES), ref) <= 1e-5


def test_big_vision_layout_matches_timm(tmp_path):
    save_npz(tmp_path / "bv.npz", random_params(CONFIG, None, seed=4), layout="big_vision")
    # big_vision models add no position embedding to the class token.
    ref_model = timm_model(CONFIG, tmp_path / "bv.npz", no_embed_class=True)
    assert (
        rel_l2(ours(CONFIG, tmp_path / "bv.npz", IMAGES), timm_features(ref_model, IMAGES)) <= 1e-5
    )


def test_resized_position_embedding_matches_timm_given_the_same_table(tmp_path):
    # timm interpolates position embeddings differently (half-pixel bilinear), so parity at another
    # size holds for the forward pass given the same (scipy-zoomed) table; the resize itself is
    # tested against scipy in test_checkpoint.
    write_in21k(tmp_path / "in21k.npz", CONFIG, seed=5)
    big = dataclasses.replace(CONFIG, image_size=24)
    images = np.random.default_rng(1).uniform(-1, 1, (2, 24, 24, 3)).astype(np.float32)
    params = paths.flatten(load_pretrained(tmp_path / "in21k.npz", VisionTransformer(big, None)))
    ref_model = timm_model(big, tmp_path / "in21k.npz")
    with torch.no_grad():
        table = params["Transformer/posembed_input/pos_embedding"]
        ref_model.pos_embed.copy_(torch.from_numpy(np.asarray(table)))
    got = ours(big, tmp_path / "in21k.npz", images)
    assert rel_l2(got, timm_features(ref_model, images)) <= 1e-5


def test_tanh_gelu_differs_from_timm_only_by_the_approximation(tmp_path):
    write_in21k(tmp_path / "in21k.npz", CONFIG)
    ref = timm_features(timm_model(CONFIG, tmp_path / "in21k.npz"), IMAGES)
    approx = ours(
        dataclasses.replace(CONFIG, gelu_approximate=True), tmp_path / "in21k.npz", IMAGES
    )
    assert 1e-5 < rel_l2(approx, ref) < 1e-2

"""Shared test settings: CPU only, quiet TensorFlow, and a tiny ViT configuration."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest

from vpt_jax.models.vit import ViTConfig

# Small enough to run a forward pass in milliseconds, big enough to exercise every code path.
TINY = ViTConfig(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16)


@pytest.fixture
def tiny_config() -> ViTConfig:
    return TINY


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> str:
    """A "pretrained" tiny ViT (`TINY`, no head) in the original .npz layout."""
    from vpt_jax.models.checkpoint import save_npz
    from vpt_jax.models.vit import VisionTransformer, init_params

    path = tmp_path_factory.mktemp("tiny_checkpoint") / "tiny.npz"
    save_npz(path, init_params(VisionTransformer(TINY, None), 3))
    return str(path)

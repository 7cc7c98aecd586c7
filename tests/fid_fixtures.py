"""Shared pieces of the distance, quadrant and advisor tests: a tiny ViT checkpoint and a call counter.

The tiny ViT's own (pre-logits) features give a real feature space at 16x16 pixels, so procedural
datasets are measured end to end in milliseconds, without Inception weights.
"""

from __future__ import annotations

import dataclasses
import os

import jax
import numpy as np

from vpt_jax.analysis.fid.extractors import FeatureExtractor
from vpt_jax.models.checkpoint import save_npz
from vpt_jax.models.vit import ViTConfig, create_model, param_shapes

# 16x16 images, 4x4 patches, 32-d features: a real ViT feature space at almost no cost.
TINY = ViTConfig(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64, image_size=16)


def random_params(config: ViTConfig, seed: int = 0) -> dict:
    """Random ViT parameters drawn with NumPy from the model's shapes (no initialiser to compile)."""
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        if "scale" in name:  # LayerNorm
            return np.ones(leaf.shape, np.float32)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return rng.normal(0.0, fan_in**-0.5, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(draw, param_shapes(create_model(config, None)))


def write_tiny_vit(path: str | os.PathLike, config: ViTConfig = TINY, seed: int = 0) -> str:
    """Writes a random ViT as an `.npz` in the original ImageNet-21k layout."""
    save_npz(path, random_params(config, seed))
    return os.fspath(path)


@dataclasses.dataclass
class CallCounter:
    """Counts the images an extractor embeds (to prove cache hits and checks-before-work)."""

    images: int = 0
    calls: int = 0


def counted(extractor: FeatureExtractor) -> tuple[FeatureExtractor, CallCounter]:
    """The same extractor, counting its calls."""
    counter = CallCounter()

    def fn(images):
        counter.calls += 1
        counter.images += len(images)
        return extractor.fn(images)

    return dataclasses.replace(extractor, fn=fn), counter

"""The inputs of the paper's tiny mode, written offline: a tiny backbone of every family in its
official key layout (as `.safetensors`, which needs no torch) and a small FGVC folder.

The weights are random (seeded): tiny mode is a smoke test of every part's plan, runs, report and
figures, not a result. Files are written once per workdir, atomically, and reused.
"""

from __future__ import annotations

import dataclasses
import json
import os

import ml_collections
import numpy as np
from PIL import Image

from vpt_jax import atomic, paths
from vpt_jax.data.fgvc import FGVC_TASKS

TINY_VIT = dict(patch_size=4, hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
TINY_SWIN = dict(embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=2, patch_size=2)
IMAGE_SIZE = 16
POSEMB = "Transformer/posembed_input/pos_embedding"
FGVC_TASK = "flowers"  # the smallest FGVC dataset with a short class list
FGVC_PER_CLASS = (2, 1, 1)  # train / val / test images per class


def write_backbone(family: str, directory: str, seed: int = 3) -> str:
    """A tiny randomly initialised backbone of `family` in its official key layout; its path."""
    from vpt_jax.models.torch_files import write_safetensors
    from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params

    if family == "swin":
        from vpt_jax.models import swin_checkpoint
        from vpt_jax.models.swin import SwinConfig, SwinTransformer

        config = SwinConfig(**TINY_SWIN, image_size=IMAGE_SIZE)
        flat = _numpy(init_params(SwinTransformer(config, None), seed))
        arrays = swin_checkpoint.from_canonical(flat, "swin_official")
    else:
        from vpt_jax.models import timm_vit

        config = ViTConfig(**TINY_VIT, image_size=IMAGE_SIZE)
        if family == "mae":
            config = dataclasses.replace(config, pool="gap")
        flat = _numpy(init_params(VisionTransformer(config, None), seed))
        if family == "mae":  # MAE's pretraining file: an encoder norm, no fc_norm, no head
            flat = {k: v for k, v in flat.items() if not k.startswith("fc_norm/")}
            flat["Transformer/encoder_norm/scale"] = np.ones(config.hidden_size, np.float32)
            flat["Transformer/encoder_norm/bias"] = np.zeros(config.hidden_size, np.float32)
            flat[POSEMB] = flat[POSEMB].copy()
            flat[POSEMB][:, 0] = 0.0  # its stored sin-cos embedding has a zero class-token row
        layout = {"vit": "timm", "mae": "mae", "moco_v3": "moco_v3"}[family]
        arrays = timm_vit.from_canonical(flat, layout)
    path = os.path.join(directory, f"tiny_{family}.safetensors")
    if not os.path.exists(path):
        os.makedirs(directory, exist_ok=True)
        write_safetensors(path, arrays)
    return path


def _numpy(params) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in paths.flatten(params).items()}


def write_fgvc(directory: str, seed: int = 0) -> str:
    """A small FGVC folder in the official layout (every class, `FGVC_PER_CLASS` images each);
    returns the directory to pass as the FGVC data directory."""
    task = FGVC_TASKS[FGVC_TASK]
    root = os.path.join(directory, task.folder)
    if os.path.exists(os.path.join(root, "test.json")):  # written last
        return directory
    rng = np.random.default_rng(seed)
    splits: dict[str, dict[str, int]] = {"train": {}, "val": {}, "test": {}}
    number = 0
    for label in range(task.num_classes):
        for split, count in zip(splits, FGVC_PER_CLASS, strict=True):
            for _ in range(count):
                number += 1
                key = f"jpg/image_{number:05d}.jpg"
                path = os.path.join(root, task.image_dir, key)
                os.makedirs(os.path.dirname(path), exist_ok=True)
                pixels = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(path, format="JPEG", quality=90)
                splits[split][key] = label
    for split, entries in splits.items():
        atomic.write_text(os.path.join(root, f"{split}.json"), json.dumps(entries))
    return directory


def with_tiny_inputs(c: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
    """The paper config with tiny inputs written under `workdir/tiny_inputs` wherever the config
    still names the real files (a path given on the command line is kept)."""
    from vpt_jax.paper.parts import FAMILIES, paper_config

    out = ml_collections.ConfigDict(c.to_dict())
    directory = os.path.join(workdir, "tiny_inputs")
    defaults = paper_config(()).paper.checkpoints
    for family in FAMILIES:
        if out.paper.checkpoints[family] == defaults[family]:
            out.paper.checkpoints[family] = write_backbone(family, directory)
    if not out.paper.fgvc_dir and "fgvc" in out.paper.parts:
        out.paper.fgvc_dir = write_fgvc(os.path.join(directory, "fgvc"))
    return out


__all__ = ["with_tiny_inputs", "write_backbone", "write_fgvc"]

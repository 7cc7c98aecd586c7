"""Interim offline demo: write a small checkpoint in the ImageNet-21k file layout, load it, classify.

Exercises the loading path the study rests on (pre-linen names, pre_logits dropped, a fresh head,
position embeddings resized to another image size) without any download.
"""

from __future__ import annotations

import os
import tempfile

import jax
import numpy as np

import vpt_jax
from vpt_jax import paths


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="vpt_jax_demo_") as workdir:
        run(os.path.join(workdir, "ViT-Ti16-random-in21k.npz"))


def run(path: str) -> None:
    # A "pretrained" ViT-Ti/16 at 64x64 with a pre_logits layer and a 21843-way head, like ViT-B_16.npz.
    source = vpt_jax.create_model("Ti/16", 21843, image_size=64, representation_size=192)
    vpt_jax.save_npz(path, vpt_jax.init_params(source, rng=0))
    print(f"wrote {path} ({os.path.getsize(path) / 1e6:.1f} MB, original in21k layout)")

    # Load it for a 10-class task at 96x96: pre_logits dropped, head replaced, posemb resized 4x4 -> 6x6.
    model = vpt_jax.create_model("Ti/16", 10, image_size=96)
    params = vpt_jax.load_pretrained(path, model)
    flat = paths.flatten(params)
    print(
        f"loaded {len(flat)} arrays; head {flat['head/kernel'].shape}, "
        f"position embedding {flat['Transformer/posembed_input/pos_embedding'].shape}"
    )

    # A generated image: a bright disc on a gradient, scaled to [-1, 1] as the checkpoints expect.
    yy, xx = np.mgrid[:96, :96] / 95.0
    disc = ((yy - 0.4) ** 2 + (xx - 0.6) ** 2 < 0.05).astype(np.float32)
    image = np.stack([xx, yy, disc], axis=-1)[None] * 2 - 1
    logits, out = jax.jit(model.apply)({"params": params}, image)
    print(
        f"features {out['pre_logits'].shape}, logits {logits.shape}, "
        f"predicted class {int(logits.argmax())} (a fresh zero head: all logits {float(logits.max()):.1f})"
    )


if __name__ == "__main__":
    main()

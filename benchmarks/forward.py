"""Forward throughput of ViT-S/16 and ViT-B/16: vpt_jax vs timm eager, side by side in one process.

    .venv/bin/python benchmarks/forward.py [--batch 8] [--steps 5] [--models S/16,B/16]

Same weights (one .npz file loaded by both), batch, 224x224 and float32; exact GELU in both. Prints
images/s (median over timed steps after warm-up) and the vpt_jax/timm ratio. Both run under the
allocator settings of vpt_jax's command line (vpt_jax/runtime.py; VPT_JAX_ALLOCATOR=system: glibc's).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from vpt_jax.runtime import allocator_description, use_fast_allocator

if __name__ == "__main__":
    use_fast_allocator()  # re-executes before JAX starts its threads

import jax
import numpy as np

from tests.torch_reference import torch
from vpt_jax.models.checkpoint import load_pretrained, save_npz
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params


def median_seconds(fn, steps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench(variant: str, batch: int, steps: int) -> tuple[float, float]:
    from timm.models.vision_transformer import VisionTransformer as TimmViT  # after torch_reference

    config = ViTConfig.from_variant(variant, gelu_approximate=False)
    model = VisionTransformer(config, None)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.npz")
        save_npz(path, init_params(model, 0))
        params = jax.device_put(load_pretrained(path, model))
        ref = TimmViT(
            patch_size=config.patch_size,
            embed_dim=config.hidden_size,
            depth=config.num_layers,
            num_heads=config.num_heads,
            num_classes=0,
        )
        ref.load_pretrained(path)
    ref.eval()
    images = np.random.default_rng(0).uniform(-1, 1, (batch, 224, 224, 3)).astype(np.float32)
    x_jax = jax.device_put(images)
    x_torch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    forward = jax.jit(lambda p, x: model.apply({"params": p}, x)[0])

    def run_jax():
        forward(params, x_jax).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            ref(x_torch)

    return batch / median_seconds(run_jax, steps), batch / median_seconds(run_torch, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--models", default="S/16,B/16")
    args = parser.parse_args()
    print(
        f"device: {jax.devices()[0].device_kind}, torch threads {torch.get_num_threads()}, "
        f"batch {args.batch}, 224x224, float32, allocator: {allocator_description()}"
    )
    rows = [(v, *bench(v, args.batch, args.steps)) for v in args.models.split(",")]
    print(f"{'model':8} {'vpt_jax img/s':>14} {'timm eager img/s':>17} {'ratio':>6}")
    for variant, ours, ref in rows:
        print(f"{'ViT-' + variant:8} {ours:14.2f} {ref:17.2f} {ours / ref:6.2f}")


if __name__ == "__main__":
    main()

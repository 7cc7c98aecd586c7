"""Probes on cached features against end to end: one linear (or MLP) run each way, side by side.

    .venv/bin/python benchmarks/probes.py                      # the demo backbone, 800 images
    .venv/bin/python benchmarks/probes.py --strategy mlp --epochs 50
    .venv/bin/python benchmarks/probes.py --variant Ti/16 --image-size 112 --epochs 10
    .venv/bin/python benchmarks/probes.py --checkpoint ViT-B_16.npz --image-size 224
    .venv/bin/python benchmarks/probes.py --smoke              # tiny, one epoch (tests)

Both runs are `vpt_jax.train.run.train_and_evaluate` on the same config (procedural data, the
backbone of `--checkpoint`: by default the demo's shipped ViT; `--variant` writes a randomly
initialised one of that size, as the time does not depend on the weights), once with
`train.cache_features=True` (the default: the frozen backbone's features of each split computed
once, the head trained on them) and once with `False` (the backbone at every step and every
evaluation). It prints each run's wall time, the ratio, and the largest difference between the
two runs' recorded metrics over all epochs.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
bench = importlib.import_module("train_step")  # first: it sets the environment JAX starts in

import jax  # noqa: E402

from vpt_jax.config import base_config  # noqa: E402
from vpt_jax.models.checkpoint import save_npz  # noqa: E402
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params  # noqa: E402
from vpt_jax.train import records, run  # noqa: E402

DEMO_CHECKPOINT = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "vpt_jax",
    "assets",
    "vit_tiny_procedural.npz",
)


def config(args, checkpoint: str, cache: bool):
    c = base_config()
    c.model.variant = "auto"
    c.model.checkpoint = checkpoint
    c.model.image_size = args.image_size
    c.data.dataset = f"procedural:{args.task}"
    c.data.train_split = f"train{args.train_images}"
    c.data.eval_splits = (f"val{args.eval_images}", f"test{args.eval_images}")
    c.strategy.name = args.strategy
    c.optimizer.lr = 0.1
    c.train.epochs = args.epochs
    c.train.batch_size = args.batch
    c.train.eval_batch_size = args.eval_batch
    c.train.cache_features = cache
    return c


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoint", default=DEMO_CHECKPOINT)
    parser.add_argument("--variant", default="", help="e.g. Ti/16: a random backbone of this size")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--task", default="objects")
    parser.add_argument("--strategy", default="linear", choices=("linear", "mlp"))
    parser.add_argument("--train-images", type=int, default=800)
    parser.add_argument("--eval-images", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--eval-batch", type=int, default=256)
    parser.add_argument("--smoke", action="store_true", help="tiny model, one epoch (tests)")
    args = parser.parse_args(argv)
    logging.getLogger("vpt_jax").setLevel(logging.WARNING)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = args.checkpoint
        if args.smoke:
            args.image_size, args.train_images, args.eval_images, args.epochs = 16, 16, 8, 2
            args.batch, args.eval_batch = 8, 8
            cfg = ViTConfig(**bench.SMOKE_CONFIG)
            checkpoint = os.path.join(tmp, "tiny.npz")
            save_npz(checkpoint, init_params(VisionTransformer(cfg, 3), 0))
        elif args.variant:
            cfg = ViTConfig.from_variant(args.variant, image_size=args.image_size)
            checkpoint = os.path.join(tmp, f"random_{args.variant.replace('/', '_')}.npz")
            save_npz(checkpoint, init_params(VisionTransformer(cfg, 3), 0))
        print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}); {args.strategy} "
              f"probe on {os.path.basename(checkpoint)} at {args.image_size} px, procedural:"
              f"{args.task} train{args.train_images}, {args.epochs} epochs")  # fmt: skip
        for cache in (True, False):
            workdir = os.path.join(tmp, f"cache{cache}")
            start = time.perf_counter()
            result = run.train_and_evaluate(config(args, checkpoint, cache), workdir)
            wall = time.perf_counter() - start
            metrics = records.read_metrics(os.path.join(workdir, records.METRICS))
            rows.append({"cache_features": cache, "wall_s": wall, "metrics": metrics,
                         "final": result["final"]})  # fmt: skip
    cached, direct = rows
    keys = [k for k in direct["metrics"][0] if k.endswith(("_loss", "_top1", "_accuracy"))]
    diff = max(
        abs(a[k] - b[k])
        for a, b in zip(cached["metrics"], direct["metrics"], strict=True)
        for k in keys
    )
    print(f"{'train.cache_features':22} {'wall':>8}  test top-1")
    for row in rows:
        test = next(v for k, v in row["final"].items() if k.startswith("test") and "top1" in k)
        print(f"{row['cache_features']!s:22} {row['wall_s']:7.1f}s  {test:.4f}")
    print(f"ratio (end to end / cached): {direct['wall_s'] / cached['wall_s']:.1f}x; largest "
          f"difference of any recorded metric in any epoch: {diff:.2e}")  # fmt: skip
    return rows


if __name__ == "__main__":
    main()

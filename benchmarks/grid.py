"""A grid's runs one at a time against the same runs trained together (`vpt_jax.train.grid`).

    .venv/bin/python benchmarks/grid.py                                  # CPU: a small ViT
    .venv/bin/python benchmarks/grid.py --strategy linear --members 8
    .venv/bin/python benchmarks/grid.py --variant B/16 --image 224 --batch 64 --train 256  # GPU

Both sides train the same runs (learning rates x seeds on procedural data, a random pretrained
checkpoint of the given shape) in one process, as a study worker does: one at a time through
`train_and_evaluate` (the jitted step compiles for the first run and is reused by the rest), then
together through `train_grid`. Wall time includes compilation, data reading, training, every
evaluation and the records; it prints both and their ratio, and checks that the two sides agree.
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
bench = importlib.import_module("train_step")  # first: it re-execs under the allocator

import jax  # noqa: E402

from vpt_jax.config import base_config  # noqa: E402
from vpt_jax.models.checkpoint import save_npz  # noqa: E402
from vpt_jax.models.vit import VisionTransformer, ViTConfig, init_params  # noqa: E402
from vpt_jax.train import features, grid, records, run  # noqa: E402


def config(args, checkpoint: str, lr: float, seed: int):
    c = base_config()
    c.model.variant, c.model.checkpoint, c.model.image_size = "auto", checkpoint, args.image
    c.model.precision = args.precision
    c.data.dataset = "procedural:location"
    c.data.train_split, c.data.eval_splits = f"train{args.train}", (f"val{args.eval}",)
    c.strategy.name, c.strategy.num_prompts = args.strategy, args.prompts
    c.optimizer.lr, c.optimizer.warmup_epochs = lr, 1
    c.train.epochs, c.train.seed = args.epochs, seed
    c.train.batch_size, c.train.eval_batch_size = args.batch, args.eval_batch
    c.train.eval_every_epochs = 1
    return c


def main(argv=None) -> tuple[float, float, float]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--strategy", default="vpt_deep")
    p.add_argument("--members", type=int, default=4, help="runs: learning rates x 2 seeds")
    p.add_argument("--variant", default="", help="a ViT variant (B/16); default: a small custom")
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--patch", type=int, default=8)
    p.add_argument("--image", type=int, default=64)
    p.add_argument("--prompts", type=int, default=10)
    p.add_argument("--precision", default="float32")
    p.add_argument("--train", type=int, default=128)
    p.add_argument("--eval", type=int, default=128)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--eval-batch", type=int, default=64)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--smoke", action="store_true", help="tiny model, 2 runs, 1 epoch (tests)")
    args = p.parse_args(argv)
    if args.smoke:
        args.hidden, args.layers, args.patch, args.image, args.prompts = 32, 1, 4, 16, 2
        args.members, args.train, args.eval, args.batch, args.eval_batch = 2, 16, 16, 8, 16
        args.epochs = 1
    logging.getLogger("vpt_jax").setLevel(logging.WARNING)
    if args.variant:
        vit = ViTConfig.from_variant(args.variant, image_size=args.image)
    else:
        heads = max(1, args.hidden // 64)
        vit = ViTConfig(args.patch, args.hidden, args.layers, heads, 4 * args.hidden, args.image)
    print(
        f"device {jax.devices()[0].device_kind}, allocator {bench.allocator_description()}; "
        f"{args.strategy}, {args.members} runs, ViT hidden {vit.hidden_size} x {vit.num_layers} "
        f"layers at {args.image}px (patch {vit.patch_size}), {args.precision}; {args.train} "
        f"train / {args.eval} val images, batch {args.batch}, {args.epochs} epochs"
    )
    lrs = [0.5 / 2**i for i in range(-(-args.members // 2))]
    members = [(lr, seed) for lr in lrs for seed in (1, 2)][: args.members]
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = os.path.join(tmp, "base.npz")
        save_npz(checkpoint, init_params(VisionTransformer(vit, 10), 0))
        configs = [config(args, checkpoint, lr, seed) for lr, seed in members]
        warm = config(args, checkpoint, 0.1, 0)
        warm.train.epochs, warm.data.train_split = 1, f"train{args.batch}"
        run.train_and_evaluate(warm, os.path.join(tmp, "warm"))  # TF, data rendering, imports
        features.clear()
        start = time.perf_counter()
        for i, c in enumerate(configs):
            run.train_and_evaluate(c, os.path.join(tmp, f"single{i}"))
        single = time.perf_counter() - start
        features.clear()
        start = time.perf_counter()
        grid.train_grid(configs, [os.path.join(tmp, f"grid{i}") for i in range(len(configs))])
        together = time.perf_counter() - start
        worst = 0.0
        for i in range(len(configs)):
            a = records.read_json(os.path.join(tmp, f"single{i}", records.RESULT))["final"]
            b = records.read_json(os.path.join(tmp, f"grid{i}", records.RESULT))["final"]
            worst = max([worst] + [abs(a[k] - b[k]) / max(abs(a[k]), 1e-9) for k in a])
    print(f"{'one at a time':>16}: {single:8.1f} s ({single / len(configs):.1f} s per run)")
    print(f"{'together':>16}: {together:8.1f} s ({together / len(configs):.1f} s per run)")
    print(f"ratio one-at-a-time / together: {single / together:.2f}x; final metrics agree to "
          f"{worst:.1e} relative")  # fmt: skip
    return single, together, worst


if __name__ == "__main__":
    main()

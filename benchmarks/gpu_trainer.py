"""The trainer end to end on a GPU: ViT-B/16 at 224 px, FT and VPT-deep, bf16 and float32.

    .venv/bin/python benchmarks/gpu_trainer.py                 # on a GPU: ~10 min with the rows
    .venv/bin/python benchmarks/gpu_trainer.py --no-train-step # the trainer only (~4 min)
    .venv/bin/python benchmarks/gpu_trainer.py --smoke         # tiny model on CPU (tests)

Each case is one real run of `vpt_jax.train.run.train_and_evaluate`, the command line's path (the
training split on the device, the jitted step, per-epoch records, checkpoints), on procedural data
rendered at the model's resolution (`--train-images` images, repeated for enough epochs to take
`--steps` steps), from random initialisation (no checkpoint needed), evaluated once at the end.
It prints, per precision and strategy: the steady-state training throughput (images/s of the
epochs after the first, from the run's own records), the first epoch's seconds (compilation
included), MFU against the device's dense bf16/TF32 peak (`train_step.py`'s analytic FLOPs: 3F per
image when weights train, 2F for VPT), and the VPT-deep/FT step-time ratio. Then, unless
`--no-train-step`, `train_step.py`'s GPU rows (vpt_jax's step against torch eager and
`torch.compile`, batches 64 and 128). Then, unless `--grid-members 0`, the batched grid
(`vpt_jax.train.grid`): VPT-deep and FT steps of `--grid-members` runs trained together (the
single-run step vmapped over stacked trainable state) against one run's step, in member images/s.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import math
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
bench = importlib.import_module("train_step")  # first: it sets the environment JAX starts in

import jax  # noqa: E402

from vpt_jax.config import base_config  # noqa: E402
from vpt_jax.models.vit import ViTConfig  # noqa: E402
from vpt_jax.train import records, run  # noqa: E402

STRATEGIES = ("full", "vpt_deep")


def model_config(args, precision: str) -> ViTConfig:
    """The backbone the cases train (exact GELU, as the paper's runs)."""
    if args.smoke:
        return ViTConfig(**bench.SMOKE_CONFIG, gelu_approximate=False, precision=precision)
    return ViTConfig.from_variant(args.model, gelu_approximate=False, precision=precision)


def run_case(args, precision: str, strategy: str, workdir: str) -> dict:
    """One trainer run; its steady-state throughput from its records."""
    c = base_config()
    smoke = args.smoke
    c.model.variant = "custom" if smoke else args.model
    if smoke:
        for key, value in bench.SMOKE_CONFIG.items():
            c.model[key] = value
    c.model.image_size = 16 if smoke else 224
    c.model.precision = precision
    c.model.checkpoint = ""  # random initialisation: throughput does not depend on the weights
    c.data.dataset = "procedural:objects"
    c.data.train_split = f"train{args.train_images}"
    c.data.eval_splits = (f"val{args.batch}",)
    c.strategy.name = strategy
    c.strategy.num_prompts = args.prompts
    c.optimizer.lr = 1e-4 if strategy == "full" else 0.1
    steps_per_epoch = -(-args.train_images // args.batch)
    c.train.epochs = max(2, -(-args.steps // steps_per_epoch))
    c.train.batch_size = c.train.eval_batch_size = args.batch
    c.train.eval_every_epochs = 0  # once, at the end: this measures training
    c.train.checkpoint_every_epochs = c.train.epochs
    result = run.train_and_evaluate(c, workdir)
    rows = records.read_metrics(os.path.join(workdir, records.METRICS))
    steady = rows[1:]
    images_per_s = sum(r["images_per_sec"] for r in steady) / len(steady)
    cfg = ViTConfig.from_variant(args.model) if not smoke else ViTConfig(**bench.SMOKE_CONFIG)
    variant = bench.Variant(strategy, args.prompts if strategy != "full" else 0)
    peak, source = bench.device_peak(precision) if not smoke else (math.nan, "")
    return {
        "precision": precision,
        "strategy": variant.label,
        "images_per_s": images_per_s,
        "first_epoch_s": rows[0]["epoch_seconds"],
        "steps": rows[-1]["step"],
        "mfu": bench.train_flops(cfg, variant) * images_per_s / peak,
        "peak_source": source,
        "wall_s": result["wall_time_s"],
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="B/16")
    parser.add_argument("--precision", default="bf16,float32", help="comma-separated")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (at least)")
    parser.add_argument("--train-images", type=int, default=640)
    parser.add_argument("--prompts", type=int, default=50, help="VPT-deep prompt length p")
    parser.add_argument("--no-train-step", action="store_true", help="skip train_step.py's rows")
    parser.add_argument("--grid-members", type=int, default=4, help="0: no batched-grid rows")
    parser.add_argument("--smoke", action="store_true", help="tiny model, a few steps (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.steps, args.train_images, args.prompts = 8, 4, 16, 2
        args.precision, args.no_train_step, args.grid_members = "float32", True, 2
    logging.getLogger("vpt_jax").setLevel(logging.WARNING)
    print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()})")
    if jax.default_backend() != "gpu" and not args.smoke:
        print("note: no GPU here; the numbers are this device's")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precision.split(","):
            for strategy in STRATEGIES:
                workdir = os.path.join(tmp, f"{precision}-{strategy}")
                rows.append(run_case(args, precision, strategy, workdir))
    print(f"\ntrainer end to end, {'tiny' if args.smoke else args.model}, batch {args.batch}:")
    print(f"{'precision':9} {'strategy':14} {'img/s':>9} {'first epoch':>12} {'steps':>6} "
          f"{'MFU':>6}  VPT/FT step time")  # fmt: skip
    for row in rows:
        ft = next(r for r in rows if r["precision"] == row["precision"] and r is not row)
        ratio = ft["images_per_s"] / row["images_per_s"] if row["strategy"] != "full" else 1.0
        print(f"{row['precision']:9} {row['strategy']:14} {row['images_per_s']:9.1f} "
              f"{row['first_epoch_s']:11.1f}s {row['steps']:6d} {row['mfu']:6.1%}  "
              f"{ratio:.2f}")  # fmt: skip
    if rows and rows[0]["peak_source"]:
        print(f"MFU against the {rows[0]['peak_source']} dense peak")
    if args.grid_members > 1:
        grid_rows(args)
    if not args.no_train_step:
        print("\ntrain_step.py (the step alone, against torch eager and torch.compile):")
        bench.main(["--variants", f"full,vpt_deep:{args.prompts},mixed:{args.prompts}"])
    return rows


def grid_rows(args) -> None:
    """A grid's runs trained together (vpt_jax.train.grid) against one run, step for step."""
    n = args.grid_members
    print(f"\nbatched grid: {n} runs trained together vs one run, batch {args.batch} each:")
    print(f"{'precision':9} {'strategy':14} {'one run img/s':>14} {'together, per run':>18} "
          f"{'gain':>6}")  # fmt: skip
    for precision in args.precision.split(","):
        cfg = model_config(args, precision)
        for variant in (bench.Variant("vpt_deep", args.prompts), bench.Variant("full")):
            single, _, _, _ = bench.jax_runner(cfg, variant, args.batch, args.batch)
            together, _ = bench.grid_runner(cfg, variant, args.batch, n)
            steps = 2 if args.smoke else 10
            times, _ = bench.alternate({"one": single, "grid": together}, steps, 3, 1)
            one, per_run = args.batch / times["one"], args.batch / times["grid"]
            print(f"{precision:9} {variant.label:14} {one:14.1f} {per_run:18.1f} "
                  f"{per_run * n / one:5.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()

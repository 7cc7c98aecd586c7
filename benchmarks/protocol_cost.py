"""Projected wall time of the paper's Tables 1-2 protocol on this device, from times measured now.

    .venv/bin/python benchmarks/protocol_cost.py                         # CPU: float32 and bf16
    .venv/bin/python benchmarks/protocol_cost.py --precision bf16 --batch 64 --eval-batch 256  # GPU
    .venv/bin/python benchmarks/protocol_cost.py --smoke                 # tiny model (tests)

The protocol (vpt_jax.study): for each of the 19 VTAB-1k tasks and each strategy, a grid search
(lr x wd; prompt/SGD grid 10 x 4 = 40 settings, FT/AdamW grid 4 x 4 = 16) trained on train800 and
scored on val200, then the selected setting retrained with 5 seeds on train800val200 and scored on
test. Every run trains 100 epochs (ft_then_pt: an FT stage of 100 epochs, then 100 of VPT-deep).
Three evaluation policies are projected side by side (`POLICIES`): the study's default (search runs
score val200 once; final runs draw test loss curves on a fixed subset every epoch and evaluate the
full test split once), the full eval split after every epoch (the default before), and once. VPT runs
use the per-task prompt lengths of the VTAB task table (`TaskSpec.prompt_length`).

Measured here, in one process, on ViT-B/16 at 224x224: seconds per training image (weights
training: at 197 and 397 tokens; prompts only: at 198 and 397 tokens; other token counts linear in
between), seconds per evaluated image (197 and 397 tokens), the jit compile time of a run's steps,
the on-device gather + preprocessing of the trainer, and host decoding per image: procedural images
and JPEG/PNG decode + resize through TensorFlow (the TFDS path). Test splits over the trainer's
cache limit are decoded again at every evaluation. The projection prints its assumptions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# First, before JAX starts: importing it re-execs this script under the recommended allocator.
bench = importlib.import_module("train_step")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vpt_jax.data import VTAB_TASKS, get_dataset, preprocess_batch  # noqa: E402
from vpt_jax.models.vit import ViTConfig  # noqa: E402
from vpt_jax.study import protocol  # noqa: E402
from vpt_jax.study.config import (  # noqa: E402
    FINETUNE_LRS,
    FINETUNE_WDS,
    PAPER_SEEDS,
    PROMPT_LRS,
    PROMPT_WDS,
    paper_study_config,
    study_config,
)
from vpt_jax.study.cost import StepTimes, vtab_test_size  # noqa: E402

EVAL_CACHE_BYTES = 2 * 1024**3  # vpt_jax.train.setup: eval splits up to this size stay decoded
CURVE_EXAMPLES = study_config().study.final.curve_examples  # the study's loss-curve test subset
EPOCHS = 100
SEARCH_TRAIN, SEARCH_EVAL, FINAL_TRAIN = 800, 200, 1000
# Approximate stored image size per task (TFDS), for the decode cost: small PNG (<= 96 px),
# medium (~256 px) or large JPEG (~500 px). Stated, not measured per task.
SOURCE_KIND = {
    "caltech101": "large", "cifar100": "small", "dtd": "large", "oxford_flowers102": "large",
    "oxford_iiit_pet": "large", "svhn_cropped": "small", "sun397": "large",
    "patch_camelyon": "small", "eurosat": "small", "resisc45": "medium",
    "diabetic_retinopathy": "medium", "clevr_count": "large", "clevr_distance": "large",
    "dmlab": "medium", "kitti_distance": "large", "dsprites_location": "small",
    "dsprites_orientation": "small", "smallnorb_azimuth": "small", "smallnorb_elevation": "small",
}  # fmt: skip
SOURCE_SHAPES = {"small": (64, 64), "medium": (256, 256), "large": (375, 500)}


def test_size(task) -> int:
    """Examples in a task's test split (`vpt_jax.study.cost.vtab_test_size`)."""
    return vtab_test_size(task)


# ------------------------------------------------------------------------------------------------
# Measurements


@dataclasses.dataclass
class Measured:
    precision: str
    train: dict[tuple[str, int], float]  # (weights|prompts, tokens) -> s per training image
    eval: dict[int, float]  # tokens -> s per evaluated image
    compile_s: dict[str, float]  # weights|prompts -> s per run (train + eval step)
    preprocess_s: float  # on-device gather + normalisation, per training image
    # weights|prompts -> a grid step's time per member image over a single run's per image, with
    # `grid_members` runs trained together (vpt_jax.train.grid), and its compile seconds
    grid_factor: dict[str, float] = dataclasses.field(default_factory=dict)
    grid_compile_s: dict[str, float] = dataclasses.field(default_factory=dict)
    grid_members: int = 0

    def train_s(self, kind: str, tokens: int) -> float:
        return _interpolate({t: v for (k, t), v in self.train.items() if k == kind}, tokens)

    def eval_s(self, tokens: int) -> float:
        return _interpolate(self.eval, tokens)


def _interpolate(points: dict[int, float], x: int) -> float:
    if len(points) == 1:  # measured at one token count only (the probes: 197)
        return next(iter(points.values()))
    (x0, y0), (x1, y1) = sorted(points.items())
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def measure_model(args, cfg: ViTConfig, kinds: set[str]) -> Measured:
    """Step and evaluation times per image, at two token counts per kind (the probe: one).

    `kinds`: the step kinds the projected strategies train (`STAGES`); evaluation is measured
    with the weights kind, which is always measured.
    """
    small, large = (1, 200) if not args.smoke else (1, 4)
    cases = {
        ("weights", 0): bench.Variant("full"),
        ("weights", large): bench.Variant("mixed", large),
        ("prompts", small): bench.Variant("vpt_deep", small),
        ("prompts", large): bench.Variant("vpt_deep", large),
        ("probe", 0): bench.Variant("linear"),  # end to end: the frozen backbone every step
    }
    cases = {key: v for key, v in cases.items() if key[0] in kinds | {"weights"}}
    train, evals, compile_s = {}, {}, {}
    for (kind, prompts), variant in cases.items():
        start = time.perf_counter()
        run_train, run_eval, _, _ = bench.jax_runner(cfg, variant, args.batch, args.eval_batch)
        if prompts in (0, small):
            run_eval(1)  # the first evaluation compiles
            compile_s[kind] = time.perf_counter() - start
        times, _ = bench.alternate(
            {"train": run_train, "eval": run_eval}, args.steps, args.rounds, args.warmup
        )
        tokens = 1 + cfg.num_patches + prompts
        train[(kind, tokens)] = times["train"] / args.batch
        if kind == "weights":
            evals[tokens] = times["eval"] / args.eval_batch
        print(
            f"  {variant.label:15} {tokens:4d} tokens: {args.batch / times['train']:8.2f} train "
            f"img/s, {args.eval_batch / times['eval']:8.2f} eval img/s",
            flush=True,
        )
    measured = Measured(cfg.precision, train, evals, compile_s, measure_preprocess(args, cfg))
    if args.grid_members > 1:
        measure_grid(args, cfg, kinds, measured)
    return measured


def measure_grid(args, cfg: ViTConfig, kinds: set[str], m: Measured) -> None:
    """A grid step of `--grid-members` runs trained together, per member image, against the
    single-run step at the same tokens (weights: FT; prompts: VPT-deep at the small count)."""
    small = 1
    cases = {
        "weights": (bench.Variant("full"), 0),
        "prompts": (bench.Variant("vpt_deep", small), small),
    }
    m.grid_members = args.grid_members
    for kind, (variant, prompts) in cases.items():
        if kind not in kinds:
            continue
        run_train, compile_s = bench.grid_runner(cfg, variant, args.batch, args.grid_members)
        times, _ = bench.alternate({"grid": run_train}, args.steps, args.rounds, args.warmup)
        per_image = times["grid"] / (args.batch * args.grid_members)
        single = m.train[(kind, 1 + cfg.num_patches + prompts)]
        m.grid_factor[kind], m.grid_compile_s[kind] = per_image / single, compile_s
        print(
            f"  {variant.label:15} {args.grid_members} runs together: "
            f"{args.batch * args.grid_members / times['grid']:8.2f} member img/s "
            f"({m.grid_factor[kind]:.2f}x a single run's time per image)",
            flush=True,
        )


def measure_preprocess(args, cfg: ViTConfig) -> float:
    """Seconds per image of the trainer's on-device part: gather from uint8 and normalise."""
    size = cfg.image_size
    split = jnp.asarray(np.random.default_rng(0).integers(0, 255, (64, size, size, 3), np.uint8))
    indices = jnp.arange(args.batch) % 64

    @jax.jit
    def step(split, indices):
        return preprocess_batch(split[indices], normalization="inception").sum()

    times, _ = bench.alternate(
        {"p": lambda n: [step(split, indices).block_until_ready() for _ in range(n)]},
        max(args.steps, 5),
        1,
        1,
    )
    return times["p"] / args.batch


def measure_decode(args) -> dict[str, float]:
    """Host seconds per image: procedural rendering, and TF decode + resize per source kind."""
    out = {}
    count = 2 if args.smoke else 64
    start = time.perf_counter()
    get_dataset("procedural:objects", f"train{count}", image_size=224).materialize()
    out["procedural"] = (time.perf_counter() - start) / count
    try:
        from vpt_jax.data.host_tf import tf
        from vpt_jax.data.image_convert import to_model_image
    except ImportError:
        return out
    rng = np.random.default_rng(0)
    for kind, (h, w) in SOURCE_SHAPES.items():
        if args.smoke and kind != "small":
            continue
        smooth = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)).repeat(8, 0).repeat(8, 1)
        pixels = smooth[:h, :w].astype(np.uint8)
        encode = tf.io.encode_png if kind == "small" else tf.io.encode_jpeg
        blob = encode(pixels).numpy()
        data = tf.data.Dataset.from_tensors(blob).repeat(count * (8 if kind == "small" else 2))
        data = data.map(
            lambda b: to_model_image(tf.io.decode_image(b, 3, expand_animations=False), 224),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).batch(64)
        for _ in data.take(1):
            pass
        start = time.perf_counter()
        n = sum(int(batch.shape[0]) for batch in data)
        out[kind] = (time.perf_counter() - start) / n
    return out


# ------------------------------------------------------------------------------------------------
# Projection


@dataclasses.dataclass
class Cost:
    train: float = 0.0
    eval: float = 0.0
    decode: float = 0.0
    compile: float = 0.0
    runs: int = 0

    def add(self, other: Cost, times: int = 1) -> None:
        for field in dataclasses.fields(self):
            name = field.name
            setattr(self, name, getattr(self, name) + times * getattr(other, name))

    @property
    def total(self) -> float:
        return self.train + self.eval + self.decode + self.compile


# How runs evaluate: the study's defaults before and after curves on a subset, and the floor.
POLICIES = {
    "every": "full eval split after every epoch (the study's default before curve subsets)",
    "curves": "search: val200 after the last epoch; final: test loss curves on "
    f"{CURVE_EXAMPLES:,} fixed test images every epoch, full test after the last (the default)",
    "last": "every eval split once, after the last epoch (no curves)",
}


BASE_TOKENS = 197  # ViT-B/16 at 224: the class token and 196 patches
# Each strategy's stages: (step kind, whether its prompts are in the sequence).
STAGES = {
    "full": [("weights", False)],
    "vpt_deep": [("prompts", True)],
    "vpt_shallow": [("prompts", True)],
    "mixed": [("weights", True)],
    "ft_then_pt": [("weights", False), ("prompts", True)],
    "linear": [("probe", False)],
    "mlp": [("probe", False)],
}


def run_cost(m: Measured, decode: dict[str, float], task, strategy: str, final: bool,
             policy: str, compiles: bool = True, probes: str = "shared",
             featurised: bool = False) -> Cost:  # fmt: skip
    """Seconds of one run of `strategy` on `task` (a search run, or a final run), evaluating as
    `policy` (`POLICIES`) says.

    `compiles`: whether this run compiles its steps. The learning rate and weight decay are
    optimizer state (vpt_jax.train.optimizer), so the runs of one grid, and the seeds of one final
    phase, are one program: the command line's persistent compilation cache compiles it once.
    `probes` (`PROBES`): how probes (linear, MLP) run. `shared` and `per_run` compute each
    split's features once and train the head on them (`train.cache_features`); `end_to_end` runs
    the frozen backbone every step and every evaluation. `featurised`: this run finds its features
    kept by an earlier run of the worker's process (`shared`: every run of a task and phase after
    the first). Head steps on features are counted as free (a 768-wide linear or MLP layer against
    a ViT-B/16 forward pass).
    """
    p = task.prompt_length
    stages = [(kind, BASE_TOKENS + p * prompted) for kind, prompted in STAGES[strategy]]
    n_train = FINAL_TRAIN if final else SEARCH_TRAIN
    n_eval = test_size(task) if final else SEARCH_EVAL
    per_decode = decode.get(SOURCE_KIND[task.name], decode["procedural"])
    cached = n_eval * 224 * 224 * 3 <= EVAL_CACHE_BYTES
    full_evals, curve_images, passes = 1, 0, 1  # evaluations of the full split, curve images
    if policy == "every":
        full_evals, passes = EPOCHS, 1 if cached else EPOCHS
    elif policy == "curves" and final:
        curve_images = EPOCHS * min(n_eval, CURVE_EXAMPLES)
        # the subset is drawn in one pass of a split that is not kept decoded
        passes = 1 if cached or n_eval <= CURVE_EXAMPLES else 2
        if n_eval <= CURVE_EXAMPLES:  # the curve is the whole split: its last point is the full one
            full_evals, curve_images = 0, curve_images
    cost = Cost(runs=1)
    for kind, tokens in stages:
        if kind == "probe" and probes != "end_to_end":
            subset = min(n_eval, CURVE_EXAMPLES) if curve_images else 0  # featurised once too
            # Every run reads its training split and draws its curve subset (from a stream: one
            # pass); a split kept decoded is decoded at the run's start.
            draws = subset and not cached and n_eval > CURVE_EXAMPLES
            cost.decode += per_decode * (n_train + n_eval * (cached or draws))
            cost.compile += m.compile_s[kind] if compiles else 0.0
            if featurised and probes == "shared":
                continue
            # one forward pass per example of each split (a stream is read once more for it)
            cost.train += n_train * (m.eval_s(tokens) + m.preprocess_s)
            cost.eval += (n_eval * (full_evals > 0) + subset) * m.eval_s(tokens)
            cost.decode += per_decode * n_eval * (not cached)
            continue
        cost.train += EPOCHS * n_train * (m.train_s(kind, tokens) + m.preprocess_s)
        cost.eval += (full_evals * n_eval + curve_images) * m.eval_s(tokens)
        cost.decode += per_decode * (n_train + n_eval * passes)
        cost.compile += m.compile_s[kind] if compiles else 0.0
    return cost


def grid_points(strategy: str, recipe: str) -> int:
    """Distinct grid runs of a strategy in the paper's study under a recipe (the study's own
    `grid_for`: under `reference` the FT grid's AdamW decays > 0 are one run, trained at 0.01)."""
    c = paper_study_config()
    c.run.recipe = recipe
    lrs, wds = protocol.grid_for(c.study, strategy, c.run)
    return len(lrs) * len(wds)


PROBES = {
    "shared": "probes on features computed once per task and phase, shared by its runs "
    "(train.cache_features, the default; one worker process)",
    "per_run": "probes on features computed once per run",
    "end_to_end": "probes end to end (train.cache_features=False, the default before)",
}


def batched_cost(m: Measured, one: Cost, strategy: str, runs: int) -> Cost | None:
    """`runs` runs of one phase trained together in chunks of `m.grid_members`
    (vpt_jax.train.grid), from one run's cost without its compile (`one`); None where the grid
    path does not apply (probes on shared features: their head steps are counted free; two-stage
    strategies train one at a time)."""
    kind = STAGES[strategy][0][0]
    if m.grid_members < 2 or len(STAGES[strategy]) > 1 or kind not in m.grid_factor:
        return None
    size = min(m.grid_members, runs)
    chunks = -(-runs // size)
    sizes = {size, runs - (chunks - 1) * size}  # a last, smaller chunk compiles once more
    factor = m.grid_factor[kind]
    return Cost(
        train=one.train * factor * runs,
        eval=one.eval * factor * runs,  # assumed: evaluation batches as training does
        decode=one.decode * chunks,  # a chunk reads its splits once
        compile=m.grid_compile_s[kind] * len(sizes),
        runs=runs,
    )


def project(m: Measured, decode: dict[str, float], strategies, policy: str,
            recipe: str = "reference", probes: str = "shared", grids: bool = False):  # fmt: skip
    seeds = len(PAPER_SEEDS)
    per_task = {}
    for name, task in VTAB_TASKS.items():
        total = Cost()
        featurised = set()  # phases of this task whose probe features a worker holds
        for strategy in strategies:
            grid = grid_points(strategy, recipe)
            probe = STAGES[strategy][0][0] == "probe"
            for final, runs in ((False, grid), (True, seeds)):
                if grids:
                    one = run_cost(m, decode, task, strategy, final, policy, False, probes)
                    batched = batched_cost(m, one, strategy, runs)
                    if batched is not None:
                        total.add(batched)
                        continue
                for compiles, times in ((True, 1), (False, runs - 1)):
                    held = final in featurised
                    cost = run_cost(
                        m, decode, task, strategy, final, policy, compiles, probes, held
                    )
                    total.add(cost, times)
                    if probe:
                        featurised.add(final)
        per_task[name] = total
    return per_task


def print_projection(m: Measured, decode, strategies, batch: int, recipe: str) -> None:
    device = jax.devices()[0].device_kind
    print(f"\nProjection on {device}, ViT-B/16, vpt_jax precision {m.precision}, batch {batch}, "
          f"recipe {recipe}:")  # fmt: skip
    results = {policy: project(m, decode, strategies, policy, recipe) for policy in POLICIES}
    print(f"{'task':22} {'test':>6} {'cached':>6} {'p':>4} | default, hours: {'train':>8} "
          f"{'eval':>8} {'decode':>7} {'compile':>7} {'total':>8} | total if: every epoch "
          "| last only")  # fmt: skip
    for name, task in VTAB_TASKS.items():
        c = results["curves"][name]
        size = test_size(task)
        cached = "yes" if size * 224 * 224 * 3 <= EVAL_CACHE_BYTES else "no"
        print(f"{name:22} {size:6d} {cached:>6} {task.prompt_length:4d} |                 "
              f"{c.train / 3600:8.1f} {c.eval / 3600:8.1f} {c.decode / 3600:7.1f} "
              f"{c.compile / 3600:7.1f} {c.total / 3600:8.1f} | "
              f"{results['every'][name].total / 3600:20.1f} | "
              f"{results['last'][name].total / 3600:9.1f}")  # fmt: skip
    totals = {f"{p} ({label})": results[p] for p, label in POLICIES.items()}
    if any(STAGES[s][0][0] == "probe" for s in strategies):
        for probes, label in list(PROBES.items())[1:]:
            totals[f"curves, {label}"] = project(m, decode, strategies, "curves", recipe, probes)
    if m.grid_members > 1:
        label = (
            f"curves, grids and seeds trained {m.grid_members} runs at a time (study.batch_runs)"
        )
        totals[label] = project(m, decode, strategies, "curves", recipe, grids=True)
    for label, per_task in totals.items():
        total = Cost()
        for cost in per_task.values():
            total.add(cost)
        print(f"TOTAL {label}: {total.runs} runs, {total.total / 3600:,.0f} "
              f"device-hours ({total.total / 86400:,.1f} days): train {total.train / 3600:,.0f} h, "
              f"eval {total.eval / 3600:,.0f} h, decode {total.decode / 3600:,.0f} h, compile "
              f"{total.compile / 3600:,.1f} h")  # fmt: skip


def print_assumptions(args, strategies, decode, measured: list[Measured]) -> None:
    print("\nAssumptions:")
    lines = [
        f"strategies {', '.join(strategies)}; 19 VTAB-1k tasks; grids: AdamW (full) "
        f"{len(FINETUNE_LRS)}x{len(FINETUNE_WDS)}, SGD (others) {len(PROMPT_LRS)}x{len(PROMPT_WDS)}"
        f"; {len(PAPER_SEEDS)} final seeds; {EPOCHS} epochs per stage (ft_then_pt: 2 stages)",
        "recipe reference (the paper's configs): the FT grid's AdamW decays > 0 train as one run "
        f"(0.01), so it is {grid_points('full', 'reference')} distinct runs, not "
        f"{grid_points('full', 'clean')}; batch sizes (FT 128, prompts 64) change steps, not images",
        f"search: train {SEARCH_TRAIN}, evaluate val200 ({SEARCH_EVAL}); final: train "
        f"{FINAL_TRAIN}, evaluate test (sizes from VTAB_TASKS' split strings and source_sizes)",
        f"step times measured at batch {args.batch} (eval batch {args.eval_batch}) and applied "
        "per image (the study trains at batch 64; CPU throughput per image is flat in the batch)",
        "token counts: FT 197; VPT-deep/shallow and mixed 197 + p (TaskSpec.prompt_length); time "
        "linear in tokens between the two measured counts",
        f"test splits larger than {EVAL_CACHE_BYTES / 2**30:.0f} GiB of 224x224 uint8 are decoded "
        "at every evaluation; train/val200 and cached splits once per run",
        "decode per image (host, s): "
        + ", ".join(f"{k} {v * 1e3:.2f} ms" for k, v in decode.items())
        + " (stored sizes per task: SOURCE_KIND, approximate; decode can overlap compute, "
        "counted serially here)",
        "one device; runs sequential; no failures or restarts; one compile per task, strategy "
        "and phase (search, final): a grid's runs differ only in lr/wd, which are optimizer "
        "state, so XLA's persistent compilation cache (on in the command line) serves the rest",
    ]
    for m in measured:
        lines.append(
            f"{m.precision}: on-device gather+normalise {m.preprocess_s * 1e3:.2f} ms/img; "
            f"compile per run: {', '.join(f'{k} {v:.0f} s' for k, v in m.compile_s.items())}"
        )
        if m.grid_members > 1:
            lines.append(
                f"{m.precision}: {m.grid_members} runs trained together (vpt_jax.train.grid): time "
                "per member image against one run's: "
                + ", ".join(f"{k} {v:.2f}x" for k, v in m.grid_factor.items())
                + "; compile "
                + ", ".join(f"{k} {v:.0f} s" for k, v in m.grid_compile_s.items())
                + "; a chunk reads its splits once; FT-then-PT and probes on shared features "
                "are projected one run at a time"
            )
    for line in lines:
        print(f"- {line}")


def save_step_times(path: str, m: Measured, decode: dict[str, float]) -> None:
    """The measurements as `vpt_jax.study.cost.StepTimes` (what a paper plan projects with): host
    decoding as the mean over the 19 tasks' source kinds."""
    train: dict[str, dict[int, float]] = {}
    for (kind, tokens), seconds in m.train.items():
        train.setdefault(kind, {})[tokens] = seconds
    per_task = [decode.get(SOURCE_KIND[name], decode["procedural"]) for name in VTAB_TASKS]
    kind, backend = jax.devices()[0].device_kind, jax.default_backend()
    device = kind if kind.lower() == backend else f"{kind} ({backend})"
    StepTimes(device, m.precision, train, dict(m.eval), dict(m.compile_s), m.preprocess_s,
              sum(per_task) / len(per_task)).save(path)  # fmt: skip
    print(f"step times ({m.precision}) written to {path}: --config.paper.step_times={path}")


def main(argv: list[str] | None = None) -> None:
    gpu = jax.default_backend() == "gpu"
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--precision", default="bf16" if gpu else "float32,bf16")
    parser.add_argument("--batch", type=int, default=64 if gpu else 8)
    parser.add_argument("--eval-batch", type=int, default=256 if gpu else 16)
    parser.add_argument("--steps", type=int, default=3 if gpu else 2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--strategies",
        default="full,vpt_deep,mixed,ft_then_pt",
        help=f"of Tables 1-2 by default; any of {','.join(STAGES)} (linear,mlp: the probes)",
    )
    parser.add_argument("--allocator", choices=("vpt_jax", "inherit"), default="vpt_jax")
    parser.add_argument(
        "--recipe", default="reference,clean", help="projections for these training recipes"
    )
    parser.add_argument(
        "--grid-members", type=int, default=8 if gpu else 2,
        help="runs trained together in the batched-grid projection (0: not measured)",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny model, one step (tests)")
    parser.add_argument(
        "--save", default="",
        help="write the first precision's step times to this JSON file: the paper plan's "
        "device-hours (--config.paper.step_times=FILE)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.smoke:
        args.batch, args.eval_batch, args.steps, args.rounds, args.warmup = 2, 2, 1, 1, 0
        args.precision = args.precision.split(",")[0]
    strategies = args.strategies.split(",")
    unknown = [s for s in strategies if s not in STAGES]
    if unknown:
        parser.error(f"unknown strategies {', '.join(unknown)}; use any of {', '.join(STAGES)}")
    print(
        f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), "
        f"allocator: {bench.allocator_description()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    decode = measure_decode(args)
    measured = []
    for precision in args.precision.split(","):
        if args.smoke:
            cfg = ViTConfig(**bench.SMOKE_CONFIG, gelu_approximate=False, precision=precision)
        else:
            cfg = ViTConfig.from_variant("B/16", gelu_approximate=False, precision=precision)
        print(f"measuring ViT-B/16 {precision}:" if not args.smoke else f"smoke {precision}:")
        kinds = {kind for s in strategies for kind, _ in STAGES[s]}
        measured.append(measure_model(args, cfg, kinds))
    print_assumptions(args, strategies, decode, measured)
    if args.save:
        save_step_times(args.save, measured[0], decode)
    for m in measured:
        for recipe in args.recipe.split(","):
            print_projection(m, decode, strategies, args.batch, recipe)


if __name__ == "__main__":
    main()

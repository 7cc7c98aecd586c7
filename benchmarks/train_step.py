"""Training-step and evaluation throughput: vpt_jax vs the PyTorch reference, side by side.

    .venv/bin/python benchmarks/train_step.py                      # CPU: ViT-S/16, batch 8, float32
    .venv/bin/python benchmarks/train_step.py --precision bf16     # CPU bf16 (torch: autocast)
    .venv/bin/python benchmarks/train_step.py --compile            # adds torch.compile (slow start)
    .venv/bin/python benchmarks/train_step.py --smoke              # tiny model, one step (tests)

On a GPU the defaults become ViT-B/16, batches 64 and 128, precisions bf16 and float32 (TF32
matmuls in both frameworks), and `--compile` is on.

For every strategy variant (FT `full`, `linear`, `vpt_shallow`, `vpt_deep` with p prompts, and
`mixed` = FT with the same p deep prompts, i.e. FT at VPT's token count) both frameworks train the
same architecture (exact GELU) at the same batch, image size and precision, in this one process:
vpt_jax's jitted `train_step` (gradients only for trainable leaves; the optimizer of the strategy:
AdamW for FT, SGD-momentum otherwise) and timm's VisionTransformer with the official VPT token
layout (KMnP/vpt: prompts after CLS; deep prompts replace the prompt slots before every block),
frozen parameters with `requires_grad_(False)`. Steps run in blocks of `--steps` with one
synchronisation per block (as the trainer does per epoch); blocks of the two frameworks alternate
for `--rounds` rounds and the fastest block of each is reported (other processes only add time;
`--json` keeps every block).

MFU uses an analytic count (2 FLOPs per multiply-add; matmuls and attention only): forward F per
image; a training step is 3F when weights train (full, mixed), 2F for VPT (no weight gradients,
input gradients through every block) and F for linear. The peak is the device's bf16/TF32 dense
tensor-core peak on a GPU; on CPU a large GEMM measured here (so "MFU" reads: share of GEMM speed).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import importlib
import json
import math
import os
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from vpt_jax.runtime import allocator_description, use_fast_allocator


def _allocator_from_argv(argv: list[str]) -> str:
    if "--smoke" in argv or "--allocator=inherit" in argv:
        return "inherit"
    pairs = zip(argv, argv[1:], strict=False)
    return "inherit" if ("--allocator", "inherit") in pairs else "vpt_jax"


# Both frameworks run in this process under the allocator settings vpt_jax's command line uses
# (vpt_jax/runtime.py); `--allocator inherit` keeps the caller's (e.g. VPT_JAX_ALLOCATOR=system).
_SCRIPTS = ("train_step.py", "protocol_cost.py", "gpu_trainer.py", "probes.py", "grid.py")
_AS_SCRIPT = os.path.basename(sys.argv[0]) in _SCRIPTS
if _AS_SCRIPT and _allocator_from_argv(sys.argv[1:]) == "vpt_jax":
    use_fast_allocator()  # re-executes before JAX starts its threads
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# On a GPU both frameworks share the device: JAX must not reserve most of its memory up front.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vpt_jax.models.precision import resolve  # noqa: E402
from vpt_jax.models.vit import ViTConfig, init_params  # noqa: E402
from vpt_jax.train.optimizer import make_optimizer  # noqa: E402
from vpt_jax.train.step import TrainState, eval_step, train_step  # noqa: E402
from vpt_jax.tuning.rules import label_tree, merge, split  # noqa: E402
from vpt_jax.tuning.strategies import get_strategy  # noqa: E402

NUM_CLASSES = 100
CPU_VARIANTS = "full,linear,vpt_shallow:10,vpt_deep:10,vpt_deep:100,mixed:100"
SMOKE_CONFIG = dict(
    patch_size=4, hidden_size=32, num_layers=2, num_heads=2, mlp_dim=64, image_size=16
)
# Dense tensor-core peaks (FLOP/s) by device-kind substring, first match wins: bf16, TF32.
GPU_PEAKS = (
    ("H100 PCIe", 756e12, 378e12),
    ("H100", 989e12, 494e12),
    ("H200", 989e12, 494e12),
    ("A100", 312e12, 156e12),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    strategy: str  # full | linear | vpt_shallow | vpt_deep | mixed
    prompts: int = 0  # p (prompt tokens per set)

    @property
    def label(self) -> str:
        return f"{self.strategy} p={self.prompts}" if self.prompts else self.strategy

    @property
    def deep(self) -> bool:
        return self.strategy in ("vpt_deep", "mixed")


def parse_variants(text: str) -> list[Variant]:
    """`full,vpt_deep:100` -> variants."""
    out = []
    for item in text.split(","):
        name, _, p = item.partition(":")
        out.append(Variant(name, int(p or 0)))
    return out


def forward_flops(cfg: ViTConfig, prompts: int) -> float:
    """Analytic forward FLOPs per image (2 per multiply-add): patch embedding, blocks, head."""
    d, m, n = cfg.hidden_size, cfg.mlp_dim, cfg.num_patches
    tokens = 1 + prompts + n
    embed = n * cfg.patch_size**2 * 3 * d
    block = tokens * (4 * d * d + 2 * d * m) + 2 * tokens * tokens * d
    return 2.0 * (embed + cfg.num_layers * block + d * NUM_CLASSES)


def train_flops(cfg: ViTConfig, variant: Variant) -> float:
    factor = {"full": 3, "mixed": 3, "linear": 1}.get(variant.strategy, 2)
    return factor * forward_flops(cfg, variant.prompts)


# ------------------------------------------------------------------------------------------------
# vpt_jax


def jax_runner(cfg: ViTConfig, variant: Variant, batch: int, eval_batch: int):
    """(train(n), evaluate(n), compile seconds, trace counter) for one variant."""
    strategy = get_strategy(variant.strategy, num_prompts=variant.prompts)
    model = strategy.build_model(cfg, NUM_CLASSES)
    params = init_params(model, 0)
    labels = label_tree(params, strategy.rules)
    tx = make_optimizer(labels, name=strategy.optimizer, lr=1e-3, weight_decay=1e-4)
    traces = {"train": 0}

    def counted_step(state, data):
        traces["train"] += 1
        return train_step(
            state,
            data,
            apply_fn=model.apply,
            tx=tx,
            labels=labels,
            backbone_train=strategy.backbone_dropout,
        )

    step = jax.jit(counted_step, donate_argnums=(0,))
    evaluate = jax.jit(functools.partial(eval_step, apply_fn=model.apply))
    rng = np.random.default_rng(0)
    size = cfg.image_size
    images = rng.uniform(-1, 1, (max(batch, eval_batch), size, size, 3)).astype(np.float32)
    labels_np = rng.integers(0, NUM_CLASSES, max(batch, eval_batch)).astype(np.int32)
    data = {"image": jnp.asarray(images[:batch]), "label": jnp.asarray(labels_np[:batch])}
    eval_data = {
        "image": jnp.asarray(images[:eval_batch]),
        "label": jnp.asarray(labels_np[:eval_batch]),
        "mask": jnp.ones(eval_batch, bool),
    }
    state = [TrainState.create(params, tx, jax.random.key(0))]
    start = time.perf_counter()
    state[0], metrics = step(state[0], data)
    jax.block_until_ready(metrics)
    compile_s = time.perf_counter() - start

    def train(n: int) -> None:
        for _ in range(n):
            state[0], out = step(state[0], data)
        jax.block_until_ready(out)  # one synchronisation per block, as the trainer per epoch

    def run_eval(n: int) -> None:
        for _ in range(n):
            out = evaluate(state[0].params, eval_data)
        jax.block_until_ready(out)

    return train, run_eval, compile_s, traces


def grid_runner(cfg: ViTConfig, variant: Variant, batch: int, members: int):
    """(train(n), compile seconds) for `members` runs of one variant trained together as
    `vpt_jax.train.grid` trains them: the single-run step vmapped over stacked trainable leaves,
    optimizer states and keys, the frozen leaves held once; every member sees the same batch."""
    strategy = get_strategy(variant.strategy, num_prompts=variant.prompts)
    model = strategy.build_model(cfg, NUM_CLASSES)
    params = init_params(model, 0)
    labels = label_tree(params, strategy.rules)
    tx = make_optimizer(labels, name=strategy.optimizer, lr=1e-3, weight_decay=1e-4)
    trainable, frozen = split(params, labels)
    opt_state = tx.init(params)
    stack = lambda tree: jax.tree_util.tree_map(lambda x: jnp.stack([x] * members), tree)
    keys = jax.random.split(jax.random.key(0), members)

    def grid_step(stacked, data):
        def one(trainable, opt_state, rng):
            state = TrainState(jnp.zeros((), jnp.int32), merge(trainable, frozen), opt_state, rng)
            state, metrics = train_step(
                state, data, apply_fn=model.apply, tx=tx, labels=labels,
                backbone_train=strategy.backbone_dropout,
            )  # fmt: skip
            return (split(state.params, labels)[0], state.opt_state, state.rng), metrics["loss"]

        return jax.vmap(one)(*stacked)

    step = jax.jit(grid_step, donate_argnums=(0,))
    rng = np.random.default_rng(0)
    size = cfg.image_size
    data = {
        "image": jnp.asarray(rng.uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)),
        "label": jnp.asarray(rng.integers(0, NUM_CLASSES, batch).astype(np.int32)),
    }
    state = [(stack(trainable), stack(opt_state), keys)]
    start = time.perf_counter()
    state[0], loss = step(state[0], data)
    jax.block_until_ready(loss)
    compile_s = time.perf_counter() - start

    def train(n: int) -> None:
        for _ in range(n):
            state[0], out = step(state[0], data)
        jax.block_until_ready(out)

    return train, compile_s


# ------------------------------------------------------------------------------------------------
# PyTorch reference (timm + the official VPT token layout)


def import_torch():
    """`(torch, timm.models.vision_transformer)`, or `(None, None)` without the dev extra."""
    try:
        from tests.torch_reference import torch  # registers torchvision ops timm needs
    except BaseException as error:  # pytest.importorskip raises Skipped, a BaseException
        if isinstance(error, KeyboardInterrupt):
            raise
        return None, None
    return torch, importlib.import_module("timm.models.vision_transformer")


def torch_runner(torch, timm_vit, cfg: ViTConfig, variant: Variant, batch: int, eval_batch: int,
                 precision: str, compile_model: bool):  # fmt: skip
    """(train(n), evaluate(n), first-call seconds) of the PyTorch reference for one variant."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    vit = timm_vit.VisionTransformer(
        img_size=cfg.image_size,
        patch_size=cfg.patch_size,
        embed_dim=cfg.hidden_size,
        depth=cfg.num_layers,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_dim / cfg.hidden_size,
        num_classes=NUM_CLASSES,
        global_pool="token",
    )
    model = _PromptedViT(torch, vit, cfg, variant).to(device)
    trains_backbone = variant.strategy in ("full", "mixed")
    for name, param in model.named_parameters():
        trainable = trains_backbone or name.startswith(("prompts", "vit.head."))
        param.requires_grad_(trainable)
    groups = [
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and "bias" in n],
         "weight_decay": 0.0},
        {"params": [p for n, p in model.named_parameters() if p.requires_grad and "bias" not in n],
         "weight_decay": 1e-4},
    ]  # fmt: skip
    if variant.strategy == "full":
        opt = torch.optim.AdamW(groups, lr=1e-3)
    else:
        opt = torch.optim.SGD(groups, lr=1e-3, momentum=0.9)
    if compile_model:  # every variant's model shares one forward: without a reset, dynamo's
        torch._dynamo.reset()  # recompile limit (8) would silently fall back to eager
    forward = torch.compile(model) if compile_model else model
    autocast = functools.partial(
        torch.autocast, device, dtype=torch.bfloat16, enabled=precision != "float32"
    )
    gen = torch.Generator().manual_seed(0)
    size = cfg.image_size
    images = torch.rand(max(batch, eval_batch), 3, size, size, generator=gen).to(device) * 2 - 1
    labels = torch.randint(0, NUM_CLASSES, (max(batch, eval_batch),), generator=gen).to(device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def train(n: int) -> None:
        model.train()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = torch.nn.functional.cross_entropy(forward(images[:batch]), labels[:batch])
            loss.backward()
            opt.step()
        sync()

    def run_eval(n: int) -> None:
        model.eval()
        with torch.inference_mode(), autocast():
            for _ in range(n):
                logits = forward(images[:eval_batch])
                (logits.argmax(-1) == labels[:eval_batch]).sum()
        sync()

    start = time.perf_counter()
    train(1)
    first_s = time.perf_counter() - start
    return train, run_eval, first_s


def _PromptedViT(torch, vit, cfg: ViTConfig, variant: Variant):
    """timm's ViT with VPT prompts inserted exactly as KMnP/vpt does (no prompts: plain timm)."""

    class PromptedViT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.vit = vit
            self.p = variant.prompts
            if self.p:
                sets = cfg.num_layers if variant.deep else 1
                bound = math.sqrt(6.0 / (3 * cfg.patch_size**2 + cfg.hidden_size))
                init = torch.empty(sets, self.p, cfg.hidden_size).uniform_(-bound, bound)
                self.prompts = torch.nn.Parameter(init)

        def forward(self, x):
            v = self.vit
            if not self.p:
                return v(x)
            x = v.norm_pre(v.patch_drop(v._pos_embed(v.patch_embed(x))))  # [cls, patches] + pos
            b = x.shape[0]
            for i, block in enumerate(v.blocks):
                if i == 0 or variant.deep:
                    rest = x[:, 1:] if i == 0 else x[:, 1 + self.p :]
                    prompts = self.prompts[i if variant.deep else 0].expand(b, -1, -1)
                    x = torch.cat([x[:, :1], prompts, rest], dim=1)
                x = block(x)
            return v.forward_head(v.norm(x))

    return PromptedViT()


# ------------------------------------------------------------------------------------------------
# Timing


def alternate(
    runs: dict[str, Callable[[int], None]], steps: int, rounds: int, warmup: int
) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Seconds per step of each run over `rounds` blocks of `steps`, the runs alternating.

    Returns the best block of each run (other processes only ever add time, so the fastest block
    is the least disturbed one) and every block's seconds per step.
    """
    for run in runs.values():
        if warmup:
            run(warmup)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            run(steps)
            times[name].append((time.perf_counter() - start) / steps)
    return {name: min(t) for name, t in times.items()}, times


def gemm_peak(dtype: str) -> float:
    """FLOP/s of a large jitted matmul (bf16: bf16 operands, float32 accumulation)."""
    n = 2048
    x = jnp.ones((n, n), jnp.float32)
    if dtype == "float32":
        fn = jax.jit(lambda a: a @ a)
    else:
        fn = jax.jit(
            lambda a: jax.lax.dot(
                a.astype(jnp.bfloat16), a.astype(jnp.bfloat16), preferred_element_type=jnp.float32
            )
        )
    fn(x).block_until_ready()
    best = math.inf
    for _ in range(10):  # the best of several: on a shared machine most runs are interrupted
        start = time.perf_counter()
        fn(x).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def device_peak(precision: str) -> tuple[float, str]:
    device = jax.devices()[0]
    if device.platform == "gpu":
        for kind, bf16, tf32 in GPU_PEAKS:
            if kind in device.device_kind:
                return (bf16 if precision != "float32" else tf32), f"{kind} datasheet"
        return math.nan, "unknown GPU"
    return gemm_peak("float32" if precision == "float32" else "bf16"), "measured GEMM"


# ------------------------------------------------------------------------------------------------


def run_config(args, torch, timm_vit, model_name: str, batch: int, precision: str) -> list[dict]:
    if args.smoke:
        cfg = ViTConfig(**SMOKE_CONFIG, gelu_approximate=False, precision=precision)
    else:
        cfg = ViTConfig.from_variant(model_name, gelu_approximate=False, precision=precision)
    eval_batch = args.eval_batch or batch
    peak, peak_source = device_peak(precision) if not args.smoke else (math.nan, "")
    rows = []
    for variant in parse_variants(args.variants):
        train, evaluate, compile_s, traces = jax_runner(cfg, variant, batch, eval_batch)
        runs = {"jax": train}
        eval_runs = {"jax": evaluate}
        first = {"jax": compile_s}
        if torch is not None:
            for compiled in (False, True) if args.compile else (False,):
                key = "compile" if compiled else "torch"
                t_train, t_eval, first[key] = torch_runner(
                    torch, timm_vit, cfg, variant, batch, eval_batch, precision, compiled
                )
                runs[key], eval_runs[key] = t_train, t_eval
        step_s, step_blocks = alternate(runs, args.steps, args.rounds, args.warmup)
        eval_s, eval_blocks = alternate(eval_runs, args.steps, args.rounds, args.warmup)
        assert traces["train"] == 1, f"the jitted step was traced {traces['train']} times"
        flops = train_flops(cfg, variant)
        row = {
            "model": "smoke" if args.smoke else model_name,
            "batch": batch,
            "precision": precision,
            "jax_precision": resolve(precision),
            "variant": variant.label,
            "strategy": variant.strategy,
            "prompts": variant.prompts,
            "tokens": 1 + variant.prompts + cfg.num_patches,
            "train_img_s": {k: batch / v for k, v in step_s.items()},
            "eval_img_s": {k: eval_batch / v for k, v in eval_s.items()},
            "step_s": step_s,
            "step_blocks_s": step_blocks,
            "eval_blocks_s": eval_blocks,
            "first_call_s": first,
            "train_flops_per_image": flops,
            "mfu": {k: flops * batch / v / peak for k, v in step_s.items()},
            "peak_flops": peak,
            "peak_source": peak_source,
        }
        rows.append(row)
        print_row(row, header=len(rows) == 1)
    print_equal_token_ratios(rows)
    return rows


COLUMNS = ("jax", "torch", "compile")


def print_row(row: dict, header: bool) -> None:
    present = [c for c in COLUMNS if c in row["train_img_s"]]
    if header:
        print(
            f"\n{row['model']} batch {row['batch']} {row['precision']} (vpt_jax: "
            f"{row['jax_precision']}); train and eval images/s, ratio = vpt_jax / reference; "
            f"MFU vs {row['peak_source']} {row['peak_flops'] / 1e12:.3g} TFLOP/s"
        )
        names = {"jax": "vpt_jax", "torch": "torch", "compile": "compiled"}
        cells = [f"{names[c]:>9}" for c in present]
        ratios = [f"{'/' + names[c]:>9}" for c in present[1:]]
        print(
            f"{'variant':17} {'tokens':>6} | train {' '.join(cells)} {' '.join(ratios)} | "
            f"eval {' '.join(cells)} {' '.join(ratios)} | MFU {' '.join(cells)} | "
            f"first call s {' '.join(cells)}"
        )
    train, evals, mfu = row["train_img_s"], row["eval_img_s"], row["mfu"]
    t_cells = " ".join(f"{train[c]:9.2f}" for c in present)
    t_ratio = " ".join(f"{train['jax'] / train[c]:9.2f}" for c in present[1:])
    e_cells = " ".join(f"{evals[c]:9.2f}" for c in present)
    e_ratio = " ".join(f"{evals['jax'] / evals[c]:9.2f}" for c in present[1:])
    m_cells = " ".join(f"{mfu[c]:9.1%}" for c in present)
    f_cells = " ".join(f"{row['first_call_s'][c]:9.1f}" for c in present)
    print(
        f"{row['variant']:17} {row['tokens']:6d} |       {t_cells} {t_ratio} | "
        f"     {e_cells} {e_ratio} |     {m_cells} |              {f_cells}",
        flush=True,
    )


def print_equal_token_ratios(rows: list[dict]) -> None:
    """VPT step time / FT step time at the same token count (vpt_deep p vs mixed p)."""
    by_label = {r["variant"]: r for r in rows}
    for row in rows:
        ft = by_label.get(f"mixed p={row['prompts']}")
        if row["strategy"] != "vpt_deep" or ft is None:
            continue
        ratios = ", ".join(
            f"{name} {row['step_s'][name] / ft['step_s'][name]:.2f}" for name in row["step_s"]
        )
        print(f"VPT/FT step time at {row['tokens']} tokens (vpt_deep vs mixed p={row['prompts']}): "
              f"{ratios}")  # fmt: skip


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    gpu = jax.default_backend() == "gpu"
    parser.add_argument("--model", default="B/16" if gpu else "S/16")
    parser.add_argument("--batch", default="64,128" if gpu else "8", help="comma-separated")
    parser.add_argument("--eval-batch", type=int, default=0, help="0: the training batch")
    parser.add_argument("--precision", default="bf16,float32" if gpu else "float32",
                        help="comma-separated: float32, bf16")  # fmt: skip
    parser.add_argument("--variants", default=CPU_VARIANTS, help="strategy[:prompts],...")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed block")
    parser.add_argument("--rounds", type=int, default=5, help="alternating timed blocks")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=gpu,
                        help="also time torch.compile (25-30 s compile per variant on CPU)")  # fmt: skip
    parser.add_argument("--no-torch", action="store_true", help="vpt_jax only")
    parser.add_argument("--allocator", choices=("vpt_jax", "inherit"), default="vpt_jax",
                        help="vpt_jax: the command line's settings (vpt_jax/runtime.py)")  # fmt: skip
    parser.add_argument("--json", default="", help="also write the rows to this file")
    parser.add_argument("--smoke", action="store_true", help="tiny model, one step (tests)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.rounds, args.warmup, args.allocator = 1, 1, 0, "inherit"
        args.variants = "full,linear,vpt_shallow:2,vpt_deep:2,mixed:2"
    torch, timm_vit = (None, None) if args.no_torch else import_torch()
    if torch is not None:  # as many threads as JAX uses: the CPUs this process may run on
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    if torch is not None and jax.default_backend() == "gpu":
        torch.set_float32_matmul_precision("high")  # TF32, as XLA's default for float32 dots
    print(
        f"device: {jax.devices()[0].device_kind} x{jax.device_count()} ({jax.default_backend()}), "
        f"jax {jax.__version__}, torch {torch.__version__ if torch else '-'} "
        f"({torch.get_num_threads() if torch else '-'} threads), "
        f"allocator: {allocator_description()}, "
        f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs"
    )
    rows = []
    for precision in args.precision.split(","):
        for batch in (int(b) for b in args.batch.split(",")):
            rows += run_config(args, torch, timm_vit, args.model, batch, precision)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

"""Parameter budgets: `tuned / total` per task, as the paper's tables report it.

`tuned` counts the leaves a strategy trains (in any stage); `total` counts the whole tuned model,
i.e. the backbone without `pre_logits`/head plus what the strategy adds and trains. For additive
methods (VPT, linear, LoRA) this is the paper's `tuned / (backbone + tuned)`; for FT it is 100%.

    python -m vpt_jax.tuning.budget                       # VPT-deep, ViT-B/16, the 19 VTAB-1k tasks
    python -m vpt_jax.tuning.budget --strategy vpt_shallow --variant B/16
"""

from __future__ import annotations

import argparse
import dataclasses

from vpt_jax import paths
from vpt_jax.models.vit import ViTConfig, param_shapes
from vpt_jax.tuning.artifact import tuned_paths
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy

# VPT-deep prompt lengths per task that the published ViT-B/16 numbers imply (../shared/DESIGN.md).
PAPER_PROMPT_LENGTHS = {
    "cifar100": 10,
    "caltech101": 10,
    "dtd": 10,
    "oxford_flowers102": 1,
    "oxford_iiit_pet": 1,
    "svhn_cropped": 50,
    "sun397": 5,
    "patch_camelyon": 100,
    "eurosat": 100,
    "resisc45": 10,
    "diabetic_retinopathy": 1,
    "clevr_count": 50,
    "clevr_distance": 200,
    "dmlab": 100,
    "kitti_distance": 50,
    "dsprites_location": 10,
    "dsprites_orientation": 50,
    "smallnorb_azimuth": 200,
    "smallnorb_elevation": 200,
}


@dataclasses.dataclass(frozen=True)
class Budget:
    tuned: int  # parameters trained
    total: int  # parameters of the tuned model (backbone + additions)

    @property
    def percent(self) -> float:
        return 100.0 * self.tuned / self.total


def budget(strategy: Strategy, config: ViTConfig, num_classes: int) -> Budget:
    """Counts tuned and total parameters of `strategy` on a backbone, without allocating it."""
    shapes = param_shapes(strategy.final.build_model(config, num_classes))
    flat = paths.flatten(shapes)
    size = lambda k: int(flat[k].size)
    tuned = sum(size(k) for k in tuned_paths(strategy, shapes))
    return Budget(tuned=tuned, total=sum(size(k) for k in flat))


def vtab_table(strategy_name: str = "vpt_deep", variant: str = "B/16") -> list[dict]:
    """One row per VTAB-1k task: prompt length, classes, tuned, total and the percentage."""
    from vpt_jax.data.vtab import VTAB_TASKS  # the task table (classes per task)

    config = ViTConfig.from_variant(variant)
    rows = []
    for name, task in VTAB_TASKS.items():
        p = PAPER_PROMPT_LENGTHS[name]
        strategy = get_strategy(strategy_name, num_prompts=p, num_layers=config.num_layers)
        b = budget(strategy, config, task.num_classes)
        rows.append(
            dict(
                task=name,
                prompts=p,
                classes=task.num_classes,
                tuned=b.tuned,
                total=b.total,
                percent=b.percent,
            )
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="tuned / total parameters per VTAB-1k task")
    parser.add_argument("--strategy", default="vpt_deep", choices=STRATEGIES)
    parser.add_argument("--variant", default="B/16")
    args = parser.parse_args(argv)
    rows = vtab_table(args.strategy, args.variant)
    print(f"{args.strategy} on ViT-{args.variant}: tuned / total parameters")
    print(f"| {'task':22} | {'p':>3} | {'classes':>7} | {'tuned':>9} | {'total':>11} | {'%':>6} |")
    print(f"|{'-' * 24}|{'-' * 5}|{'-' * 9}|{'-' * 11}|{'-' * 13}|{'-' * 8}|")
    for r in rows:
        print(
            f"| {r['task']:22} | {r['prompts']:3d} | {r['classes']:7d} | {r['tuned']:9,d} | "
            f"{r['total']:11,d} | {r['percent']:6.3f} |"
        )
    mean = sum(r["percent"] for r in rows) / len(rows)
    print(f"mean over {len(rows)} tasks: {mean:.3f}%")


if __name__ == "__main__":
    main()

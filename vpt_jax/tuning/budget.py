"""Parameter budgets: `tuned / total` per task, as the paper's tables report it, counted in one place.

`tuned` counts the leaves a strategy trains (in any stage); `total` counts the whole tuned model,
i.e. the backbone without `pre_logits`/head plus what the strategy adds and trains. For additive
methods (VPT, linear, LoRA) this is the paper's `tuned / (backbone + tuned)`; for FT it is 100%.
Runs, artifacts and the table below all count with `parameter_budget`.

    python -m vpt_jax.tuning.budget                       # VPT-deep, ViT-B/16, the 19 VTAB-1k tasks
    python -m vpt_jax.tuning.budget --strategy=vpt_shallow --variant=B/16
    python -m vpt_jax.tuning.budget --family=swin --variant=B   # Swin-B (appendix C)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import flags

from vpt_jax import cli, paths
from vpt_jax.models.vit import param_shapes
from vpt_jax.tuning.rules import FROZEN, label_paths
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy


@dataclasses.dataclass(frozen=True)
class Budget:
    tuned: int  # parameters trained
    total: int  # parameters of the tuned model (backbone + additions)

    @property
    def percent(self) -> float:
        return 100.0 * self.tuned / self.total


def tuned_paths(strategy: Strategy, params: Mapping[str, Any]) -> list[str]:
    """Paths of the leaves trained in any stage of `strategy`, in the tree's order."""
    keys = list(paths.flatten(params))
    tuned: set[str] = set()
    for stage in strategy.stages or (strategy,):
        labels = label_paths(strategy.stage_keys(stage, keys), stage.rules)
        tuned.update(k for k, label in labels.items() if label != FROZEN)
    return [k for k in keys if k in tuned]


def count(tree: Any) -> int:
    """Number of scalar parameters in a tree (of arrays or `ShapeDtypeStruct`s)."""
    return sum(int(np.prod(np.shape(leaf), dtype=np.int64)) for leaf in jax.tree.leaves(tree))


def parameter_budget(strategy: Strategy, params: Mapping[str, Any]) -> Budget:
    """Tuned and total parameters of a tree (arrays or `ShapeDtypeStruct`s) under `strategy`."""
    flat = paths.flatten(params)
    return Budget(count([flat[k] for k in tuned_paths(strategy, params)]), count(flat))


def budget(strategy: Strategy, config: Any, num_classes: int) -> Budget:
    """Counts tuned and total parameters of `strategy` on a backbone, without allocating it."""
    return parameter_budget(strategy, param_shapes(strategy.final.build_model(config, num_classes)))


def backbone(family: str, variant: str) -> Any:
    """The config of a `model.family` backbone of a published variant (no checkpoint read)."""
    from vpt_jax import recipe
    from vpt_jax.config import base_config
    from vpt_jax.train.backbone import backbone_config

    c = base_config()
    c.model.family, c.model.variant = family, variant
    return backbone_config(recipe.resolve(c).model, None)


def vtab_table(
    strategy_name: str = "vpt_deep", variant: str = "B/16", family: str = "vit"
) -> list[dict]:
    """One row per VTAB-1k task: prompt length, classes, tuned, total and the percentage."""
    from vpt_jax.data.vtab import VTAB_TASKS  # the task table (classes, prompt lengths)
    from vpt_jax.models.family import layout_of

    config = backbone(family, variant)
    rows = []
    for name, task in VTAB_TASKS.items():
        p = task.prompt_length
        strategy = get_strategy(
            strategy_name, num_prompts=p, num_layers=config.num_layers, layout=layout_of(config)
        )
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


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_enum("strategy", "vpt_deep", STRATEGIES, "the strategy", flag_values=values)
    flags.DEFINE_string("variant", "B/16", "the variant: B/16 (ViTs), B (swin)", flag_values=values)
    flags.DEFINE_enum(
        "family", "vit", ["vit", "mae", "moco_v3", "swin"], "model.family", flag_values=values
    )


def _print_table(values: flags.FlagValues, rest: list[str]) -> list[dict]:
    cli.no_arguments(rest)
    rows = vtab_table(values.strategy, values.variant, values.family)
    print(f"{values.strategy} on {values.family} {values.variant}: tuned / total parameters")
    print(f"| {'task':22} | {'p':>3} | {'classes':>7} | {'tuned':>9} | {'total':>11} | {'%':>6} |")
    print(f"|{'-' * 24}|{'-' * 5}|{'-' * 9}|{'-' * 11}|{'-' * 13}|{'-' * 8}|")
    for r in rows:
        print(
            f"| {r['task']:22} | {r['prompts']:3d} | {r['classes']:7d} | {r['tuned']:9,d} | "
            f"{r['total']:11,d} | {r['percent']:6.3f} |"
        )
    mean = sum(r["percent"] for r in rows) / len(rows)
    print(f"mean over {len(rows)} tasks: {mean:.3f}%")
    return rows


def main(argv: list[str] | None = None) -> None:
    """Command line: the tuned / total table of a strategy over the VTAB-1k tasks."""
    cli.run(__doc__, _define, _print_table, argv, prog="python -m vpt_jax.tuning.budget")


if __name__ == "__main__":
    main()

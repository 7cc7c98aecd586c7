"""The paper's protocol as data: which runs a study consists of, and how settings are selected.

For every dataset x strategy (x training size), a grid of learning rate x weight decay is trained on
the search split and scored on the validation split at the last epoch; the best setting (ties go to
the smaller learning rate, then the smaller weight decay) is retrained with several seeds on the final
split and scored on the test split. A multi-stage strategy's earlier stage (FT-then-PT's FT) uses
the setting selected for the strategy it is (`vpt_jax.study.planning`).

Runs are described by `RunSpec`s; a study's runs depend on earlier results only through `select`.
Which grid a strategy searches and which stages it has are properties the strategy declares.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
from collections.abc import Mapping, Sequence

import ml_collections

from vpt_jax import config as config_lib
from vpt_jax import recipe
from vpt_jax.data import max_scaling_size, parse_dataset, scaling_splits
from vpt_jax.data.splits import parse_sized_split
from vpt_jax.errors import UserError
from vpt_jax.tuning.strategies import STRATEGIES, get_strategy

SEARCH, FINAL = "search", "final"
MIN_CLAIM_TIMEOUT_S = 10.0
# Run-template fields every study run sets itself (`run_config`), and what sets them.
REPLACED_BY_STUDY = {
    "data.dataset": "study.datasets",
    "data.train_split": "study.search.train_split / study.final.train_split / study.train_sizes",
    "data.eval_splits": "study.search.eval_split / study.final.eval_split",
    "data.shots": "study.shots",
    "strategy.name": "study.strategies",
    "strategy.num_prompts": "study.num_prompts",
    "optimizer.lr": "study.grids.<prompt|finetune>.lrs",
    "optimizer.weight_decay": "study.grids.<prompt|finetune>.weight_decays",
    "train.seed": "study.search.seed / study.final.seeds",
    "train.eval_every_epochs": "study.search.eval_every_epochs / study.final.eval_every_epochs",
    "train.curve_every_epochs": "study.final.curve_every_epochs",
    "train.curve_examples": "study.final.curve_examples",
}


@dataclasses.dataclass(frozen=True)
class RunSpec:
    """One run of a study. Its record (`study_run.json`) holds these fields."""

    phase: str  # search | final
    dataset: str  # e.g. vtab/cifar100 or procedural:count
    strategy: str  # a strategy name
    size: int  # training-set size of a data-scaling point; 0: the standard splits
    shots: int  # examples per class (one-shot studies); 0: all
    lr: float
    weight_decay: float
    seed: int
    ft_lr: float = 0.0  # multi-stage strategies: the earlier stage's learning rate
    ft_weight_decay: float = 0.0  # and weight decay

    @property
    def group(self) -> tuple[str, str, int, int]:
        """The (dataset, strategy, size, shots) whose grid and seeds belong together."""
        return (self.dataset, self.strategy, self.size, self.shots)

    @property
    def run_id(self) -> str:
        """A unique, readable directory name (records never parse it back)."""
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", self.dataset).strip("-")
        point = f"n{self.size}" if self.size else "vtab1k"
        if self.shots:
            point += f"-{self.shots}shot"
        tag = f"lr{self.lr:g}_wd{self.weight_decay:g}_s{self.seed}"
        if self.ft_lr:
            tag += f"_ft{self.ft_lr:g}-{self.ft_weight_decay:g}"
        return f"{self.phase}/{slug}/{self.strategy}/{point}/{tag}"


def grid_for(
    study: ml_collections.ConfigDict, strategy: str, run: ml_collections.ConfigDict | None = None
) -> tuple[Sequence[float], Sequence[float]]:
    """(learning rates, weight decays) searched for a strategy: the grid it declares.

    With the run template `run`, weight decays that train identically under its recipe are one
    grid point, named by the decay it trains with: under `reference`, AdamW trains every decay
    > 0 as 0.01 (the official code), so the FT grid's (0.01, 0.001, 0.0001, 0) is (0.01, 0),
    the 0 being SGD. Identical runs are not trained twice.
    """
    declared = get_strategy(strategy)
    grid = study.grids[declared.grid]
    lrs, wds = tuple(grid.lrs), tuple(grid.weight_decays)
    if run is None:
        return lrs, wds
    r = recipe.resolve(run)
    name = r.optimizer.name or declared.final.optimizer
    trained = [
        recipe.effective_optimizer(
            name,
            wd,
            fixed_adamw_decay=r.optimizer.fixed_adamw_decay,
            sgd_when_no_decay=r.optimizer.sgd_when_no_decay,
        )[1]
        for wd in wds
    ]
    return lrs, tuple(dict.fromkeys(trained))


def earlier_stage(strategy: str) -> str | None:
    """The strategy a multi-stage strategy's first stage is (whose selected setting it takes)."""
    stages = get_strategy(strategy).stages
    if len(stages) > 2:
        raise UserError(f"strategy {strategy!r} has {len(stages)} stages; studies run at most two")
    return stages[0].name if stages else None


def points(study: ml_collections.ConfigDict) -> list[tuple[int, int]]:
    """(size, shots) points: standard VTAB-1k, data-scaling sizes, or k-shot."""
    sizes = tuple(study.train_sizes) or (0,)
    shots = (study.shots,) if study.shots else (0,)
    return list(itertools.product(sizes, shots))


def standard_size(study: ml_collections.ConfigDict) -> int:
    """The training size the standard splits stand for (train800 for VTAB-1k), or 0 if unsized."""
    train = parse_sized_split(str(study.search.train_split))
    val = parse_sized_split(str(study.search.eval_split))
    if not train or not val or train.val or val.train or val.val * 4 != train.train:
        return 0  # not the train{n} / val{n/4} pair a scaling size n trains on
    return train.train


def groups(study: ml_collections.ConfigDict) -> list[tuple[str, str, int, int]]:
    """Every (dataset, strategy, size, shots) group of a study, in order.

    The cross product of datasets, strategies and `points`, then `study.scaling`'s extra sweep
    (its datasets x strategies x sizes); a sweep size equal to `standard_size` is the standard
    group itself (the same splits), so it is not planned twice.
    """
    out = list(
        (d, s, size, shots)
        for d, s, (size, shots) in itertools.product(
            study.datasets, study.strategies, points(study)
        )
    )
    sweep = study.get("scaling")
    if sweep is not None and sweep.sizes:
        same = standard_size(study) if not study.train_sizes and not study.shots else -1
        for d, s, n in itertools.product(sweep.datasets, sweep.strategies, sweep.sizes):
            if sweep.get("supported_only") and not supports_size(d, n):
                continue
            group = (d, s, 0 if n == same else n, 0)
            if group not in out:
                out.append(group)
    return out


def supports_size(dataset: str, size: int) -> bool:
    """Whether a dataset can supply a data-scaling point of `size` training images (VTAB tasks
    have a maximum, `vpt_jax.data.max_scaling_size`; other data is not checked here)."""
    task = parse_dataset(dataset).vtab_task
    return task is None or size <= max_scaling_size(task)


def check_study(study: ml_collections.ConfigDict) -> None:
    """One-line errors for a study config, before any run starts."""
    if not study.datasets:
        raise UserError("study.datasets is empty; name at least one dataset (e.g. vtab/cifar100)")
    unknown = [s for s in study.strategies if s not in STRATEGIES]
    if unknown or not study.strategies:
        raise UserError(f"unknown study strategies {unknown}; use some of: {', '.join(STRATEGIES)}")
    if not study.final.seeds:
        raise UserError("study.final.seeds is empty; the protocol averages over seeds")
    for name, value in (
        ("search.eval_every_epochs", study.search.eval_every_epochs),
        ("final.eval_every_epochs", study.final.eval_every_epochs),
        ("final.curve_every_epochs", study.final.curve_every_epochs),
        ("final.curve_examples", study.final.curve_examples),
    ):
        if value < 0:
            means = config_lib.ZERO_MEANS[name.split(".")[1]]
            raise UserError(f"study.{name} must be >= 0 (0: {means}), got {value}")
    for name in ("prompt", "finetune"):
        grid = study.grids[name]
        if not grid.lrs or not grid.weight_decays:
            raise UserError(f"study.grids.{name} needs at least one lr and one weight decay")
        if any(lr <= 0 for lr in grid.lrs) or any(wd < 0 for wd in grid.weight_decays):
            raise UserError(
                f"study.grids.{name}: learning rates must be > 0 and weight decays >= 0"
            )
        for field, least in (("batch_size", 1), ("warmup_epochs", 0)):
            if grid[field] is not None and grid[field] < least:
                raise UserError(f"study.grids.{name}.{field} must be >= {least}, got {grid[field]}")
    if any(n <= 0 or n % 4 for n in study.train_sizes):
        raise UserError(f"study.train_sizes must be positive multiples of 4: {study.train_sizes}")
    sweep = study.get("scaling")
    if sweep is not None and sweep.sizes:
        if any(n <= 0 or n % 4 for n in sweep.sizes):
            raise UserError(f"study.scaling.sizes must be positive multiples of 4: {sweep.sizes}")
        if not sweep.datasets or not sweep.strategies:
            raise UserError(
                "study.scaling.sizes is set but study.scaling.datasets or .strategies is empty; "
                "name the datasets and strategies of the data-scaling sweep"
            )
        unknown = [s for s in sweep.strategies if s not in STRATEGIES]
        if unknown:
            raise UserError(
                f"unknown study.scaling.strategies {unknown}; use some of: {', '.join(STRATEGIES)}"
            )
    if not study.claim_timeout_s >= MIN_CLAIM_TIMEOUT_S:
        raise UserError(
            f"study.claim_timeout_s must be at least {MIN_CLAIM_TIMEOUT_S:g} s (a claim is refreshed "
            "every max(1 s, timeout / 10); a shorter timeout makes live workers' claims look "
            f"stale, so runs train twice), got {study.claim_timeout_s}"
        )
    if study.batch_runs < 0:
        raise UserError(
            f"study.batch_runs must be >= 0 (1: one run at a time; 0: 8 on an accelerator, 1 on "
            f"a CPU), got {study.batch_runs}"
        )
    if not study.poll_interval_s > 0:
        raise UserError(f"study.poll_interval_s must be > 0 seconds, got {study.poll_interval_s}")


def check_template(
    run: ml_collections.ConfigDict,
    defaults: ml_collections.ConfigDict,
    grids: ml_collections.ConfigDict | None = None,
) -> None:
    """Refuses a run-template field that the protocol sets in every run (its value would be
    recorded but never used), naming the study field that sets it; and one that the recipe's
    per-grid settings would replace (`recipe.GRID_SETTINGS`) where the study's grids leave it."""
    for field, owner in REPLACED_BY_STUDY.items():
        section, name = field.split(".")
        value, default = run[section][name], defaults[section][name]
        if _plain(value) != _plain(default):
            raise UserError(
                f"run.{field}={value!r} is replaced in every run of a study (by {owner}); "
                f"set that instead and leave run.{field} at its default"
            )
    if grids is None:
        return
    recipe.check_recipe(run.recipe)
    for field, section in recipe.GRID_FIELDS.items():
        value, default = run[section][field], defaults[section][field]
        for grid, settings in recipe.GRID_SETTINGS[run.recipe].items():
            if value != default and grids[grid][field] is None and field in settings:
                raise UserError(
                    f"run.{section}.{field}={value} is replaced by the {run.recipe} recipe's "
                    f"{settings[field]} for the {grid} grid; set study.grids.{grid}.{field} "
                    "(for every grid) instead"
                )


def _plain(value):
    return list(value) if isinstance(value, tuple | list) else value


def search_specs(
    study: ml_collections.ConfigDict,
    inherited: Mapping,
    run: ml_collections.ConfigDict | None = None,
) -> list[RunSpec]:
    """Every grid run known now.

    Args:
      study: the `study` section.
      inherited: (earlier-stage strategy, dataset, size, shots) -> its (lr, wd); the grid of a
        multi-stage strategy waits (is left out) until its earlier stage's setting is there.
      run: the run template; given, grid points its recipe trains identically are one (`grid_for`).
    """
    specs = []
    for dataset, strategy, size, shots in groups(study):
        earlier = earlier_stage(strategy)
        stage = (0.0, 0.0) if earlier is None else inherited.get((earlier, dataset, size, shots))
        if stage is None:
            continue  # waits for the earlier stage's selection
        lrs, wds = grid_for(study, strategy, run)
        for lr, wd in itertools.product(lrs, wds):
            specs.append(
                RunSpec(SEARCH, dataset, strategy, size, shots, lr, wd, study.search.seed, *stage)
            )
    return specs


def select(results: Sequence[tuple[RunSpec, float]]) -> RunSpec | None:
    """The selected setting of one group: best validation top-1; ties: smaller lr, then smaller wd.

    Runs that diverged or failed carry `nan` and are never selected unless all failed.
    """
    scored = [(spec, -1.0 if math.isnan(score) else score) for spec, score in results]
    if not scored:
        return None
    return min(scored, key=lambda x: (-x[1], x[0].lr, x[0].weight_decay))[0]


def final_specs(study: ml_collections.ConfigDict, selected: RunSpec) -> list[RunSpec]:
    """The seeded final runs of a selected setting."""
    return [
        dataclasses.replace(selected, phase=FINAL, seed=int(seed)) for seed in study.final.seeds
    ]


def run_config(study_config: ml_collections.ConfigDict, spec: RunSpec) -> ml_collections.ConfigDict:
    """The run config of one spec: the study's `run` template with the spec's settings."""
    return ml_collections.ConfigDict(run_config_dict(study_config, spec))


def run_config_dict(study_config: ml_collections.ConfigDict, spec: RunSpec) -> dict:
    """`run_config` as a plain dict (a tenth of the time: plans of thousands of runs use it)."""
    study = study_config.study
    c = study_config.run.to_dict()
    data, strategy, optimizer, train = c["data"], c["strategy"], c["optimizer"], c["train"]
    data["dataset"] = spec.dataset
    train_split, eval_split = _phase_splits(study, spec)
    task = parse_dataset(spec.dataset).vtab_task  # None for other data
    data["train_split"] = train_split
    data["eval_splits"] = (eval_split,)
    data["shots"] = spec.shots
    strategy["name"] = spec.strategy
    # 0: the per-task lengths the paper's numbers imply (VTAB), 10 for other data.
    strategy["num_prompts"] = int(study.num_prompts or (task.prompt_length if task else 10))
    optimizer["lr"] = spec.lr
    optimizer["weight_decay"] = spec.weight_decay
    grid = get_strategy(spec.strategy).grid
    for field, section in recipe.GRID_FIELDS.items():
        value = recipe.grid_setting(study.grids, c["recipe"], grid, field)
        if value is not None:
            c[section][field] = value
    if spec.ft_lr:
        c["ft_stage"]["lr"] = spec.ft_lr
        c["ft_stage"]["weight_decay"] = spec.ft_weight_decay
        earlier = get_strategy(earlier_stage(spec.strategy)).grid
        warmup = recipe.grid_setting(study.grids, c["recipe"], earlier, "warmup_epochs")
        if warmup is not None:
            c["ft_stage"]["warmup_epochs"] = warmup
    phase = study.search if spec.phase == SEARCH else study.final
    train["seed"] = spec.seed
    train["eval_every_epochs"] = phase.eval_every_epochs
    final = spec.phase == FINAL
    train["curve_every_epochs"] = study.final.curve_every_epochs if final else 0
    train["curve_examples"] = study.final.curve_examples if train["curve_every_epochs"] else 0
    return c


def eval_split(study_config: ml_collections.ConfigDict, spec: RunSpec) -> str:
    """The split a run is scored on (`run_config(...).data.eval_splits[0]`)."""
    return _phase_splits(study_config.study, spec)[1]


def _phase_splits(study: ml_collections.ConfigDict, spec: RunSpec) -> tuple[str, str]:
    phase = study.search if spec.phase == SEARCH else study.final
    train_split, eval_split = phase.train_split, phase.eval_split
    if spec.size:
        splits = scaling_splits(spec.size, parse_dataset(spec.dataset).vtab_task)
        train_split = splits.train if spec.phase == SEARCH else splits.trainval
        eval_split = splits.val if spec.phase == SEARCH else phase.eval_split
    return train_split, eval_split

"""What a run is built from, built once from its config: backbone, strategy, stages, data.

`build_run(config, num_devices)` checks the settings (`vpt_jax.config.check`), reads the pretrained
checkpoint once, and builds the backbone's config, the strategy and each stage's optimizer
settings; a mistake in any name is one `UserError` line here, before data is read or anything
compiled. The trainer uses the result as it is, and a study validates its runs with the same call.
`open_data` reads the training split and opens the evaluation splits.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from typing import Any

import ml_collections
import numpy as np

from vpt_jax import config as config_lib
from vpt_jax import recipe
from vpt_jax.data import (
    ArraySplit,
    DatasetName,
    DataSource,
    fgvc_split,
    get_dataset,
    parse_dataset,
)
from vpt_jax.data.preprocess import check_normalization
from vpt_jax.data.splits import one_shot_indices
from vpt_jax.errors import UserError
from vpt_jax.models.additions import Prompts
from vpt_jax.models.checkpoint import Checkpoint, check_fits, read_checkpoint
from vpt_jax.models.family import VIT_LAYOUT, ParamLayout, layout_of
from vpt_jax.train import feed
from vpt_jax.train.backbone import backbone_config
from vpt_jax.train.train_data import TrainData, fgvc_train_data
from vpt_jax.tuning.strategies import STRATEGIES, Strategy, get_strategy

log = logging.getLogger("vpt_jax")
EVAL_CACHE_BYTES = 2 * 1024**3  # evaluation splits up to this size are decoded once and kept


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
    """One stage's optimizer, as configured."""

    name: str  # sgd | adamw
    lr: float  # base learning rate (before batch scaling)
    weight_decay: float
    warmup_epochs: int
    scale_lr_by_batch: bool  # peak = lr * batch / 256
    momentum: float
    b1: float
    b2: float
    eps: float
    grad_clip: float
    schedule_unit: str = "step"  # step | epoch (see vpt_jax.recipe)
    adamw: str = "optax"  # optax | vpt
    decay_set: str = "strategy"  # strategy | vpt


@dataclasses.dataclass(frozen=True)
class StagePlan:
    """What one stage trains, with which optimizer, for how long."""

    index: int
    strategy: Strategy
    optimizer: OptimizerSettings
    epochs: int


@dataclasses.dataclass(frozen=True)
class RunSetup:
    """Everything a run is built from."""

    dataset: DatasetName
    backbone: Any  # the backbone's config: ViTConfig or SwinConfig (vpt_jax.train.backbone)
    strategy: Strategy
    stages: tuple[StagePlan, ...]
    checkpoint: Checkpoint | None  # the pretrained weights, read once; None: random init
    config: ml_collections.ConfigDict  # the run config with its recipe resolved


def build_run(
    c: ml_collections.ConfigDict,
    num_devices: int,
    *,
    read_weights: bool = True,
    checkpoint: Checkpoint | None = None,
) -> RunSetup:
    """Checks a run config and builds what it describes.

    Args:
      c: the run config (`vpt_jax.config.base_config`); its recipe is resolved here
        (`vpt_jax.recipe.resolve`), and `RunSetup.config` is the result.
      num_devices: devices the batches are split over.
      read_weights: read `model.checkpoint`; False (checking a config without running it) reads it
        only when the architecture comes from it (`model.variant="auto"`).
      checkpoint: `model.checkpoint` already read (by an earlier call), so it is not read again.

    Raises:
      UserError: any mistake, as one line.
    """
    c = recipe.resolve(c)
    config_lib.check(c, num_devices)
    dataset = parse_dataset(c.data.dataset)  # an unknown task fails here, before any data is read
    try:
        check_normalization(c.data.normalization)
    except UserError as e:
        raise UserError(f"data.normalization: {e}") from None
    if checkpoint is not None and checkpoint.path != c.model.checkpoint:
        raise ValueError(f"checkpoint {checkpoint.path} is not model.checkpoint")
    if checkpoint is None and c.model.checkpoint and (read_weights or c.model.variant == "auto"):
        checkpoint = read_checkpoint(c.model.checkpoint)
    backbone = backbone_config(c.model, checkpoint)
    if backbone.image_size % backbone.patch_size:
        size, patch = backbone.image_size, backbone.patch_size
        raise UserError(
            f"model.image_size={size} is not divisible by the patch size {patch} of this backbone; "
            f"use a multiple of {patch} (e.g. {max(patch, size - size % patch)})"
        )
    strategy = build_strategy(c.strategy, backbone.num_layers, layout_of(backbone))
    stages = stage_plans(c, strategy)
    if checkpoint is not None:  # the head is fresh: any class count checks the backbone's fit
        check_fits(checkpoint, stages[0].strategy.build_model(backbone, 2))
    return RunSetup(dataset, backbone, strategy, stages, checkpoint, c)


def build_strategy(
    s: ml_collections.ConfigDict, num_layers: int, layout: ParamLayout | None = None
) -> Strategy:
    """The `Strategy` the `strategy` section describes, on a backbone `num_layers` deep whose
    parameters are laid out as `layout` (default: the supervised ViT's)."""
    layout = layout or VIT_LAYOUT
    if s.name == "custom":
        if not s.rules:
            raise UserError("strategy 'custom' needs strategy.rules: ((regex, label), ...)")
        rules = tuple((str(pattern), str(label)) for pattern, label in s.rules)
        return Strategy("custom", rules, layout=layout, backbone_dropout=s.backbone_dropout)
    if s.rules:
        raise UserError(f"strategy.rules is only read by strategy 'custom' (not {s.name!r})")
    if s.name not in STRATEGIES:
        raise UserError(f"unknown strategy {s.name!r}; use one of: {', '.join(STRATEGIES)}, custom")
    build = lambda dropout: get_strategy(
        s.name,
        num_prompts=s.num_prompts,
        prompt_dropout=dropout,
        prompt_dim=s.prompt_dim or None,
        partial_k=s.partial_k,
        num_layers=num_layers,
        mlp_hidden=tuple(s.mlp_hidden),
        lora_rank=s.lora_rank,
        lora_alpha=s.lora_alpha,
        layout=layout,
    )
    if s.prompt_dropout is not None:
        return build(s.prompt_dropout)
    # The reference recipe's prompt dropout depends on the prompts the strategy declares.
    deep = any(isinstance(a, Prompts) and a.deep for a in build(0.0).final.additions)
    return build(recipe.prompt_dropout(None, deep))


def stage_plans(c: ml_collections.ConfigDict, strategy: Strategy) -> tuple[StagePlan, ...]:
    """The stages of a run: the last uses `optimizer`/`train`, an earlier one `ft_stage`.

    `c` has its recipe resolved. Each stage's optimizer and weight decay are the ones it trains
    with (`recipe.effective_optimizer`: the reference recipe's AdamW rules).
    """
    stages = strategy.stages or (strategy,)
    o, f = c.optimizer, c.ft_stage
    shared = dict(
        scale_lr_by_batch=o.scale_lr_by_batch,
        momentum=o.momentum,
        b1=o.b1,
        b2=o.b2,
        eps=o.eps,
        grad_clip=o.grad_clip,
        schedule_unit=o.schedule_unit,
        adamw=o.adamw,
        decay_set=o.decay_set,
    )

    def settings(name: str, lr: float, weight_decay: float, warmup: int) -> OptimizerSettings:
        trained = recipe.effective_optimizer(
            name,
            weight_decay,
            fixed_adamw_decay=o.fixed_adamw_decay,
            sgd_when_no_decay=o.sgd_when_no_decay,
        )
        if trained != (name, weight_decay):
            log.info(
                "%s with weight decay %g trains as %s with weight decay %g (the official code's "
                "AdamW rules: optimizer.fixed_adamw_decay, optimizer.sgd_when_no_decay)",
                name, weight_decay, *trained,
            )  # fmt: skip
        return OptimizerSettings(*trained[:1], lr, trained[1], warmup, **shared)

    last = len(stages) - 1
    return tuple(
        StagePlan(
            i, stage, settings(o.name or strategy.final.optimizer, o.lr, o.weight_decay,
                               o.warmup_epochs), c.train.epochs,
        )
        if i == last
        else StagePlan(i, stage, settings(f.optimizer, f.lr, f.weight_decay, f.warmup_epochs),
                       f.epochs)
        for i, stage in enumerate(stages)
    )  # fmt: skip


@dataclasses.dataclass(frozen=True)
class RunData:
    """A run's data: the training split (resident or streamed), the evaluation splits opened."""

    train: TrainData
    evals: tuple[feed.EvalData, ...]


def open_data(c: ml_collections.ConfigDict, dataset: DatasetName) -> RunData:
    """Reads the training split (k per class with `data.shots`) and opens the evaluation splits."""
    d = c.data
    options = dict(data_dir=d.data_dir or None, image_size=c.model.image_size, seed=d.seed)
    if dataset.kind == "fgvc":  # read by index: resident or streamed, canvases or crops
        fgvc = fgvc_split(dataset.value, d.train_split, data_dir=options["data_dir"])
        if d.shots:
            fgvc = fgvc.subset(one_shot_indices(fgvc.labels, d.seed, d.shots), f"{d.shots}shot")
        train_source = None
    else:
        train_source = get_dataset(dataset, d.train_split, **options)
    evals = []
    for split_name in d.eval_splits:
        source = get_dataset(dataset, split_name, **options)
        if d.shots and split_name.startswith("val"):  # k-shot selection on k-shot validation
            source = DataSource.from_arrays(few_shot(source.materialize(), d.shots, d.seed + 1))
        curve = c.train.curve_examples if c.train.curve_every_epochs else -1
        evals.append(feed.EvalData(split_name, source, EVAL_CACHE_BYTES, curve))
    if train_source is None:
        train = fgvc_train_data(
            fgvc, c.model.image_size, canvases=d.resize_crop, stream=d.stream_train or None
        )
    else:
        _check_fits_in_memory(train_source, d.train_split)
        split = train_source.materialize()
        if d.shots:
            split = few_shot(split, d.shots, d.seed)
        train = TrainData.from_split(split)
    if train.num_classes < 2 or len(np.unique(train.labels)) < 2:
        raise UserError(
            f"{dataset.value} {d.train_split} has {len(np.unique(train.labels))} class(es) "
            "among its training labels; classification needs at least 2 (check the dataset and "
            "its split)"
        )
    return RunData(train, tuple(evals))


def _check_fits_in_memory(source: DataSource, split: str) -> None:
    """The training split is held in host memory (as uint8): refuse one that cannot fit."""
    if source.num_examples is None:
        return
    needed = source.num_examples * source.image_size**2 * 3
    available = _physical_memory()
    if needed > available // 2:
        raise UserError(
            f"data.train_split {split!r} is {source.num_examples:,} images of "
            f"{source.image_size}x{source.image_size}: {needed / 1e9:.1f} GB in memory, more than "
            f"half of this machine's {available / 1e9:.0f} GB; use a smaller split"
        )


def _physical_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def few_shot(split: ArraySplit, shots: int, seed: int) -> ArraySplit:
    """`shots` examples per class of a split, drawn reproducibly by `seed` (the one-shot study)."""
    return split.subset(
        one_shot_indices(split.labels, seed, shots), name=f"{split.name}:{shots}shot"
    )

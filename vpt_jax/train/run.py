"""One training run: built once from its config, trained stage by stage, recorded.

`train_and_evaluate(config, workdir)` is the whole contract. A run writes `config.json`, per-epoch
`metrics.jsonl` (and TensorBoard summaries), orbax checkpoints of its trainable state, and at the end
`artifact.npz` (the tuned leaves) and `result.json`. Started again on the same workdir it resumes
from the last checkpoint (ending with the same metrics as an uninterrupted run); a finished run is
not redone.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from typing import Any

import jax
import ml_collections

from vpt_jax import faults, paths
from vpt_jax.models.checkpoint import load_pretrained, save_npz
from vpt_jax.models.vit import init_params
from vpt_jax.train import feed, records
from vpt_jax.train.setup import RunData, RunSetup, build_run, open_data
from vpt_jax.train.stage import RunContext, RunStopped, TrainingDiverged, train_stage
from vpt_jax.train.step import Augmentation
from vpt_jax.train.train_data import TrainStream
from vpt_jax.train.workdir import check_workdir, resume_point, start_workdir
from vpt_jax.tuning.artifact import export_artifact
from vpt_jax.tuning.budget import parameter_budget

log = logging.getLogger("vpt_jax")

__all__ = ["RunStopped", "TrainingDiverged", "train_and_evaluate"]


def train_and_evaluate(
    c: ml_collections.ConfigDict,
    workdir: str,
    *,
    should_stop: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Trains and evaluates one run as the config says; returns its result record.

    `should_stop` is asked before every epoch; True stops the run with `RunStopped` (its records
    so far stay, resumable). A study worker passes "my claim on this run was taken over".
    """
    mesh = feed.make_mesh()
    setup = build_run(c, mesh.size)
    c = setup.config  # the recipe resolved: what the run trains with, and what config.json holds
    finished = check_workdir(workdir, c)
    if finished is not None:
        log.info("%s already finished: %s", workdir, summary(finished["final"]))
        return finished
    start_time = time.time()
    data = open_data(c, setup.dataset)
    train = data.train
    vit = setup.backbone
    log.info(
        "%s %s: %d training examples, %d classes; strategy %s on %s (hidden %d, %d layers, patch "
        "%d) at %dx%d on %d device(s)",
        c.data.dataset, c.data.train_split, len(train), train.num_classes, setup.strategy.name,
        c.model.get("family", "vit"), vit.hidden_size, vit.num_layers, vit.patch_size, vit.image_size, vit.image_size, mesh.size,
    )  # fmt: skip
    key = jax.random.key(c.train.seed)
    models = [plan.strategy.build_model(vit, train.num_classes) for plan in setup.stages]
    base = initial_params(setup, models[0], jax.random.fold_in(key, 0))
    start_workdir(workdir, c)  # the first write: settings, data and weights passed every check
    ctx = run_context(c, setup, data, mesh, workdir)
    if should_stop is not None:
        ctx = dataclasses.replace(ctx, should_stop=should_stop)
    params, final_metrics = base, {}
    for plan, model in zip(setup.stages, models, strict=True):
        if plan.index:  # later stages add parameters (prompts) to the previous stage's
            params = _carry_over(
                params, init_params(model, jax.random.fold_in(key, plan.index + 1))
            )
        params, final_metrics = train_stage(plan, model, params, ctx)
    ctx.log.close()
    result = run_result(c, setup, params, train, final_metrics, time.time() - start_time)
    if jax.process_index() == 0:
        write_outputs(c, setup, workdir, params, base, result)
    log.info("finished %s: %s", workdir, summary(final_metrics))
    return result


def initial_params(setup: RunSetup, first: Any, rng: jax.Array) -> dict:
    if setup.checkpoint is not None:
        return load_pretrained(setup.checkpoint, first, rng=rng)
    log.warning("model.checkpoint is empty: training from random initialisation")
    return jax.device_get(init_params(first, rng))


def run_context(c, setup: RunSetup, data: RunData, mesh, workdir: str) -> RunContext:
    train = data.train
    rep = feed.replicated(mesh)
    writes = jax.process_index() == 0
    return RunContext(
        train=c.train,
        augmentation=Augmentation(
            c.data.normalization,
            c.data.flip,
            c.data.crop_padding,
            c.model.image_size if c.data.resize_crop else 0,
        ),
        mesh=mesh,
        train_arrays=(
            None
            if train.arrays is None
            else {k: feed.global_array(v, rep) for k, v in train.arrays.items()}
        ),
        stream=None if train.gather is None else TrainStream(train.gather),
        num_train=len(train),
        evals=data.evals,
        workdir=workdir,
        log=records.RunLog(workdir, resume_point(workdir, len(setup.stages)), writes=writes),
        num_stages=len(setup.stages),
        data_key=json.dumps(
            {"data": records.jsonable(c.data.to_dict()), "image_size": c.model.image_size},
            sort_keys=True,
        ),
    )


def _carry_over(previous: dict, fresh: dict) -> dict:
    """Parameters of a stage: the previous stage's where they exist, fresh ones (prompts) elsewhere."""
    prev = paths.flatten(previous)
    return paths.unflatten({k: prev.get(k, v) for k, v in paths.flatten(fresh).items()})


def run_result(
    c, setup: RunSetup, params, train, final_metrics, wall_time: float
) -> dict[str, Any]:
    counted = parameter_budget(setup.strategy, params)
    return {
        "config": c.to_dict(),
        "final": final_metrics,
        "num_classes": train.num_classes,
        "train_examples": len(train),
        "tuned_parameters": counted.tuned,
        "total_parameters": counted.total,
        "tuned_percent": counted.percent,
        "wall_time_s": wall_time,
    }


def write_outputs(c, setup: RunSetup, workdir: str, params, base, result) -> None:
    export_artifact(
        os.path.join(workdir, records.ARTIFACT),
        params,
        strategy=setup.strategy,
        config=setup.backbone,
        num_classes=result["num_classes"],
        base_params=base,
        extra={
            "dataset": c.data.dataset,
            "train_split": c.data.train_split,
            "image_size": c.model.image_size,
            "normalization": c.data.normalization,
            **result["final"],
        },
    )
    if c.train.export_checkpoint:
        save_npz(os.path.join(workdir, records.CHECKPOINT), params)
    faults.point("artifact")
    records.write_json(os.path.join(workdir, records.RESULT), records.jsonable(result))


def summary(metrics: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in sorted(metrics.items()) if k.endswith("top1"))

"""Figures 8, 17 and 18: GradCAM and Integrated Gradients of FT against VPT-deep, per quadrant.

For each chosen task, the first seed's final FT and VPT-deep runs of the `attribution` part are
compared on the test images exactly one of them classifies correctly
(`vpt_jax.analysis.attribution.figures`, the same command as for any two runs). The default tasks
are the paper's where it names them: Figure 18's caption places KITTI-dist. in the 2nd quadrant,
DMLab in the 3rd, Retinopathy in the 4th; for the 1st (Figure 8's natural images, "the bicycle")
we take Caltech101 (`--config.paper.attribution_tasks` picks others).
"""

from __future__ import annotations

import logging
import os
import re
import types
from typing import Any

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.paper.parts import part_studies, pool_dir, study_dir
from vpt_jax.study import planning, protocol
from vpt_jax.study.pool import pooled_store

log = logging.getLogger("vpt_jax")
# the paper's quadrants 1-4 (Figure 1): Figure 8's natural images, then Figure 18's three tasks
DEFAULT_TASKS = (
    "vtab/caltech101", "vtab/kitti_distance", "vtab/dmlab", "vtab/diabetic_retinopathy"
)  # fmt: skip
FIGURE_DIR = "attribution"


def tasks_of(c: ml_collections.ConfigDict, study: ml_collections.ConfigDict) -> list[str]:
    chosen = tuple(c.paper.attribution_tasks) or DEFAULT_TASKS
    listed = [d for d in chosen if d in study.study.datasets]
    return listed or list(study.study.datasets)  # tiny mode: its own tasks


def draw(c: ml_collections.ConfigDict, workdir: str) -> dict[str, dict[str, Any]]:
    """Draws the figures of every chosen task whose two runs are done; returns, per task, the
    summary the attribution command writes, or {"error": why not}."""
    from vpt_jax.analysis.attribution import figures

    out: dict[str, dict[str, Any]] = {}
    for part, name, study in part_studies(c):
        if part != "attribution":
            continue
        store = pooled_store(study, study_dir(workdir, part, name), pool_dir(workdir))
        specs, _ = planning.plan(study, store)
        s = study.study
        for task in tasks_of(c, study):
            runs = {}
            first_seed = (protocol.FINAL, task, s.final.seeds[0])
            for spec in specs:
                wanted = spec.strategy in (s.ft_strategy, s.vpt_strategy) and store.done(spec)
                if (spec.phase, spec.dataset, spec.seed) == first_seed and wanted:
                    runs[spec.strategy] = os.path.join(store.run_dir(spec), "artifact.npz")
            if len(runs) < 2:
                out[task] = {"error": "its FT and VPT-deep final runs are not done yet"}
                continue
            slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", task).strip("-")
            tiny = bool(c.paper.tiny)
            values = types.SimpleNamespace(
                ft_artifact=runs[s.ft_strategy], vpt_artifact=runs[s.vpt_strategy],
                base=study.run.model.checkpoint, dataset=task, split=s.final.eval_split,
                data_dir=study.run.data.get("data_dir"), image_size=None, normalization=None,
                out=os.path.join(workdir, "report", FIGURE_DIR, slug), max_rows=2 if tiny else 8,
                max_examples=None, target="true", figures=["gradcam", "ig"],
                ig_steps=4 if tiny else 50, ig_method="gausslegendre", ig_baseline="black",
                blur_sigma=5.0, batch_size=64,
            )  # fmt: skip
            try:
                out[task] = figures.run(values)
            except UserError as e:  # e.g. both models right on the same images
                log.warning("attribution figures of %s: %s", task, e)
                out[task] = {"error": str(e)}
    return out


__all__ = ["DEFAULT_TASKS", "draw"]

"""The paper as one command: plan, check every input, train every part's runs once, report.

    python -m vpt_jax.main --config configs/study/paper.py --workdir runs/paper [--dry_run]

Layout of the workdir: `paper.json` (the config), `pool/` (every run, one directory per distinct
run config, with the claims that share them between workers), `parts/<part>/<study>/` (each
study's `study.json` and `report/`), `report/` (the paper in its own layout: `paper.md`, `.csv`,
`.json`, the figures). Workers started on the same workdir (or a Slurm array with
`--config.paper.shard=slurm`) share the plan; the report is written by each worker that finds
nothing left to do, and `python -m vpt_jax.paper.report --workdir DIR` writes it at any time.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import ml_collections

from vpt_jax.errors import UserError
from vpt_jax.paper import attribution
from vpt_jax.paper.parts import part_studies, pool_dir, study_dir
from vpt_jax.paper.plan import make_plan, plan_text
from vpt_jax.paper.report import write_paper_report
from vpt_jax.paper.tiny import with_tiny_inputs
from vpt_jax.study.pool import pooled_store
from vpt_jax.study.runner import Member, check_runs, check_study_dir, work
from vpt_jax.study.shard import parse_shard
from vpt_jax.train import records

log = logging.getLogger("vpt_jax")
PAPER_CONFIG = "paper.json"


def run_paper(c: ml_collections.ConfigDict, workdir: str, *, dry_run: bool = False) -> dict:
    """Plans the paper; with `dry_run` prints the plan and stops, else refuses missing inputs
    (before anything compiles), trains every run of every part once and writes the report."""
    if c.paper.tiny:
        c = with_tiny_inputs(c, workdir)
    shard = parse_shard(c.paper.shard)  # a bad value is one line before the plan's work
    plan = make_plan(c)
    text = plan_text(plan)
    if dry_run:
        print(text)
        return {"plan": plan}
    for line in text.splitlines():
        log.info("%s", line)
    if plan.missing:
        more = f" (and {len(plan.missing) - 1} more, listed above)" if len(plan.missing) > 1 else ""
        raise UserError(f"the plan's inputs are missing: {plan.missing[0]}{more}")
    members = []
    for part, name, study in part_studies(c):
        check_runs(study)
        members.append((part, name, study))
    check_paper_dir(workdir, c)
    stores = []
    for part, name, study in members:
        directory = study_dir(workdir, part, name)
        check_study_dir(directory, study)
        stores.append(pooled_store(study, directory, pool_dir(workdir)))
    ran = work(
        [Member(study, store) for (_, _, study), store in zip(members, stores, strict=True)],
        shard,
        c.paper.poll_interval_s,
    )
    stores[0].sweep()
    log.info("paper %s: every run done (%d trained by this worker)", workdir, ran)
    return write_all(c, workdir)


def write_all(c: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Every part's study report, the attribution figures, then the paper's report."""
    from vpt_jax.study.report import write_report

    reports = {}
    for part, name, study in part_studies(c):
        directory = study_dir(workdir, part, name)
        store = pooled_store(study, directory, pool_dir(workdir))
        reports[(part, name)] = write_report(study, directory, store)
    drawn = attribution.draw(c, workdir) if "attribution" in c.paper.parts else {}
    return write_paper_report(c, workdir, reports, drawn)


def check_paper_dir(workdir: str, c: ml_collections.ConfigDict) -> None:
    """Records the paper config in its directory, or refuses a directory of another one."""
    path = os.path.join(workdir, PAPER_CONFIG)
    current = records.jsonable(c.to_dict())
    if os.path.exists(path):
        if _semantic(records.read_json(path)) != _semantic(current):
            raise UserError(
                f"{workdir} holds a paper with another config ({path}); use a new --workdir, or "
                "the same config to continue it"
            )
        return
    os.makedirs(workdir, exist_ok=True)
    records.write_json(path, current)


def _semantic(paper_json: dict) -> dict:
    """A paper config without the fields that only say how workers share it."""
    out = dict(paper_json, paper=dict(paper_json.get("paper", {})))
    for field in ("shard", "claim_timeout_s", "poll_interval_s", "batch_runs", "step_times",
                  "keep_checkpoints"):  # fmt: skip
        out["paper"].pop(field, None)
    return out


__all__ = ["run_paper", "write_all"]

"""Study reports from the records alone: tables in the paper's layout, CSV, JSON and figures.

    python -m vpt_jax.study.report --workdir runs/study      # also written when a study finishes

Works on a partially finished study: what is done is reported, what is missing is listed.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import statistics
from collections import defaultdict
from typing import Any

import ml_collections
from absl import flags

from vpt_jax import atomic, cli
from vpt_jax.data import parse_dataset
from vpt_jax.errors import UserError
from vpt_jax.study import figures, protocol, quadrant_report
from vpt_jax.study.planning import final_metric, missing_runs, plan
from vpt_jax.study.report_tables import BETTER, WORSE, group_tables, paper_table
from vpt_jax.study.store import StudyStore
from vpt_jax.train import records

log = logging.getLogger("vpt_jax")


def collect(config: ml_collections.ConfigDict, store: StudyStore) -> dict[str, Any]:
    """Final results per (dataset, strategy, size, shots): seeds' test top-1, budget, setting."""
    finals: dict[tuple, dict[str, Any]] = defaultdict(lambda: {"scores": [], "runs": []})
    eval_split = config.study.final.eval_split
    specs, _ = plan(config, store)  # this study's runs (a shared pool also holds other studies')
    for spec in specs:
        result = store.result(spec) if spec.phase == protocol.FINAL else None
        if result is None:
            continue
        path = store.run_dir(spec)
        entry = finals[spec.group]
        entry["spec"] = spec
        if result.get("status") == "diverged":
            entry["scores"].append(math.nan)
            continue
        entry["scores"].append(100.0 * final_metric(result, f"{eval_split}_top1", spec))
        entry["tuned_percent"] = result["tuned_percent"]
        entry["runs"].append(path)
    return finals


def summarise(finals: dict[tuple, dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per group: mean and std (over seeds, sample std) of test top-1 in percent."""
    rows = []
    for (dataset, strategy, size, shots), entry in sorted(finals.items()):
        scores = [s for s in entry["scores"] if not math.isnan(s)]
        spec = entry["spec"]
        name = parse_dataset(dataset)
        rows.append(
            {
                "dataset": str(name),
                "task": name.short,
                "group": name.group or "other",
                "strategy": strategy,
                "size": size,
                "shots": shots,
                "seeds": len(entry["scores"]),
                "diverged": len(entry["scores"]) - len(scores),
                "mean": statistics.fmean(scores) if scores else math.nan,
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "lr": spec.lr,
                "weight_decay": spec.weight_decay,
                "tuned_percent": entry.get("tuned_percent", math.nan),
            }
        )
    return rows


def backbone_name(run: ml_collections.ConfigDict) -> str:
    """The run template's backbone as a table title (`swin B`, `mae B/16`)."""
    family = run.model.get("family", "vit")
    return f"{family} {run.model.variant}"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = list(rows[0]) if rows else ["dataset"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def write_report(
    config: ml_collections.ConfigDict, workdir: str, store: StudyStore | None = None
) -> dict[str, Any]:
    """Writes report/{results.md, results.csv, results.json, *.png}; returns the summary rows.
    `store`: where the study's runs are (default: its own `workdir`; a paper's part: the pool)."""
    store = store or StudyStore(workdir, config.study.claim_timeout_s)
    finals = collect(config, store)
    rows = summarise(finals)
    missing, waiting = missing_runs(config, store)
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    ft = config.study.ft_strategy
    lines = [
        "# Study report",
        "",
        f"Test top-1 (%) of the selected setting, mean ± std over seeds; "
        f"wins: tasks where the strategy's mean beats {ft}; {BETTER} / {WORSE}: better / worse "
        f"than {ft} by more than the pooled std of the two (significant at this seed count).",
        "",
        paper_table(rows, ft),
    ]
    if config.study.get("group_tables", False):
        lines += [
            f"## Per group ({backbone_name(config.run)})",
            "",
            group_tables(rows, ft, backbone_name(config.run)),
        ]
    quadrant_files: list[str] = []
    if quadrant_report.enabled(config.study):
        section, quadrant_files = quadrant_report.write_section(config, workdir, rows, out_dir)
        lines += ["", *section, ""]
    if missing or waiting:
        lines += (
            [
                f"**Incomplete:** {len(missing)} known runs missing"
                + (
                    " (and final runs not yet known: their grid searches are unfinished)"
                    if waiting
                    else ""
                )
                + ":",
                "",
            ]
            + [f"- {m}" for m in missing[:50]]
            + (["- ..."] if len(missing) > 50 else [])
        )
    else:
        lines.append("All runs finished.")
    figures_written = figures.write_figures(config, store, rows, finals, out_dir)
    figures_written += [f for f in quadrant_files if f.endswith(".png")]
    lines += ["", "Figures: " + ", ".join(os.path.basename(f) for f in figures_written)]
    atomic.write_text(os.path.join(out_dir, "results.md"), "\n".join(lines) + "\n")
    atomic.write_text(os.path.join(out_dir, "results.csv"), to_csv(rows))
    # Keyed by the canonical dataset name, as the distance command's FID tables are.
    standard = {r["dataset"]: {} for r in rows if not r["size"] and not r["shots"]}
    for r in rows:
        if not r["size"] and not r["shots"]:
            standard[r["dataset"]][r["strategy"]] = r["mean"]
    records.write_json(os.path.join(out_dir, "results.json"), standard)
    log.info("report written to %s (%d results, %d runs missing)", out_dir, len(rows), len(missing))
    return {"rows": rows, "missing": missing, "waiting": waiting, "figures": figures_written}


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "the study's directory", flag_values=values, required=True)


def _report(values: flags.FlagValues, rest: list[str]) -> dict[str, Any]:
    cli.no_arguments(rest)
    path = os.path.join(values.workdir, "study.json")
    if not os.path.exists(path):
        raise UserError(f"{values.workdir} is not a study directory (no study.json)")
    config = ml_collections.ConfigDict(records.read_json(path))
    result = write_report(config, values.workdir)
    with open(os.path.join(values.workdir, "report", "results.md")) as f:
        print(f.read())
    if result["missing"]:
        print(f"{len(result['missing'])} runs missing")
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: writes a study's report from its records and prints it."""
    cli.run(__doc__, _define, _report, argv, prog="python -m vpt_jax.study.report")


if __name__ == "__main__":
    main()

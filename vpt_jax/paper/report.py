"""The paper's report in the paper's layout: each table numbered as printed, each figure captioned.

    python -m vpt_jax.paper.report --workdir runs/paper      # also written when the paper finishes

Every cell is ours (test top-1 %, mean ± std over seeds) beside the paper's printed value and the
difference: `71.3 ± 0.4 ‹64.5, +6.8›`. Group means carry the number of wins against FT in
parentheses, as the paper prints them, ours then the paper's. A cell the study has not finished is
`missing`; the report works on a partial paper. `report/paper.csv` and `paper.json` hold every
cell with its table, row and column.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import math
import os
import shutil
import statistics
from typing import Any

import ml_collections
from absl import flags

from vpt_jax import atomic, cli
from vpt_jax.data import parse_dataset
from vpt_jax.data.vtab import VTAB_TASKS
from vpt_jax.errors import UserError
from vpt_jax.paper.parts import part_studies, pool_dir, study_dir
from vpt_jax.paper.published import value as published
from vpt_jax.study import figures, protocol
from vpt_jax.study.pool import pooled_store
from vpt_jax.train import records

log = logging.getLogger("vpt_jax")
NATURAL_SPECIALIZED, STRUCTURED = ("natural", "specialized"), ("structured",)
STRATEGY_NAMES = {"full": "FT", "vpt_deep": "VPT", "mixed": "Mixed", "ft_then_pt": "FT-then-PT",
                  "linear": "Linear", "mlp": "MLP", "lora": "LoRA"}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class TableSpec:
    """One of the paper's tables: where its numbers come from and how it is laid out."""

    label: str  # as numbered in the paper ("" for a table the paper only describes)
    caption: str
    part: str
    study: str
    groups: tuple[str, ...]
    methods: tuple[str, ...]
    sized: bool = False  # one block per training size, columns "<method>@<size>" in the paper
    fid: bool = False  # an FID row (the study's quadrant section)
    tasks: tuple[str, ...] = ()  # only these tasks (Table 20: CIFAR-100)


FT_VPT = ("full", "vpt_deep")
TABLES = (
    TableSpec("Table 1", "VTAB-1k Natural and Specialized, ViT-B/16 (ImageNet-21k)", "tables1_2",
              "vtab", NATURAL_SPECIALIZED, ("full", "vpt_deep", "mixed", "ft_then_pt")),
    TableSpec("Table 2", "VTAB-1k Structured, ViT-B/16 (ImageNet-21k)", "tables1_2", "vtab",
              STRUCTURED, ("full", "vpt_deep", "mixed", "ft_then_pt")),
    TableSpec("Table 3", "One-shot, VTAB-1k Natural and Specialized", "one_shot", "one_shot",
              NATURAL_SPECIALIZED, FT_VPT),
    TableSpec("Table 4", "One-shot, VTAB-1k Structured", "one_shot", "one_shot", STRUCTURED,
              FT_VPT),
    TableSpec("Table 5", "Training sizes, VTAB-1k Natural and Specialized (train:val 4:1)",
              "tables5_6", "scaling", NATURAL_SPECIALIZED, FT_VPT, sized=True),
    TableSpec("Table 6", "Training sizes, VTAB-1k Structured (train:val 4:1)", "tables5_6",
              "scaling", STRUCTURED, FT_VPT, sized=True),
    *(
        TableSpec(f"Table {7 + 3 * b + g}", f"VTAB-1k {group.capitalize()}, {title}",
                  "backbones", backbone, (group,), FT_VPT)
        for b, (backbone, title) in enumerate(
            (("swin", "Swin-B (ImageNet-21k)"), ("mae", "ViT-B/16 MAE"),
             ("moco_v3", "ViT-B/16 MoCo v3"))
        )
        for g, group in enumerate(("natural", "specialized", "structured"))
    ),
    TableSpec("Table 19", "FGVC, ViT-B/16 (ImageNet-21k), with each dataset's FID", "fgvc",
              "fgvc", ("fgvc",), FT_VPT, fid=True),
    TableSpec("Table 20", "FT vs LoRA on CIFAR-100 by training size", "lora", "lora",
              ("natural", "specialized", "structured"), ("full", "lora"), sized=True,
              tasks=("cifar100",)),
    TableSpec("", "Section 5.3: linear and MLP probes against FT and VPT-deep", "probes", "probes",
              ("natural", "specialized", "structured"), ("full", "vpt_deep", "linear", "mlp")),
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class FigureSpec:
    label: str
    caption: str
    part: str


FIGURES = (
    FigureSpec("Figure 3", "FID to ImageNet of each task against the winner (FT or VPT-deep)",
               "fid"),
    FigureSpec("Figure 4", "FT (solid) vs VPT-deep (dotted) as the training set grows", "figure4"),
    FigureSpec("Figure 5", "Training / test loss curves of two tasks per group", "loss_curves"),
    FigureSpec("Figure 6", "Loss curves of the overfitting tasks enlarged to 5000-1250 and "
               "10000-2500", "loss_curves"),
    FigureSpec("Figures 9-13", "Training / test loss curves of every task", "loss_curves"),
    FigureSpec("Figures 8, 17, 18", "GradCAM and Integrated Gradients of FT vs VPT-deep on the "
               "test images exactly one of them classifies correctly, per quadrant",
               "attribution"),
)  # fmt: skip


def write_paper_report(
    c: ml_collections.ConfigDict,
    workdir: str,
    reports: dict[tuple[str, str], dict[str, Any]],
    drawn: dict[str, dict[str, Any]],
) -> dict[str, Any]:
    """Writes report/paper.md, paper.csv, paper.json and the figure PNGs; returns what it wrote.

    `reports`: each study's `write_report` result, by (part, study); `drawn`: the attribution
    figures' summaries by task."""
    out_dir = os.path.join(workdir, "report")
    os.makedirs(out_dir, exist_ok=True)
    studies = {(part, name): study for part, name, study in part_studies(c)}
    cells: list[dict[str, Any]] = []
    lines = [
        "# Facing the Elephant in the Room: Visual Prompt Tuning or Full Finetuning? (reproduced)",
        "",
        "Test top-1 (%): ours as mean ± std over seeds, then ‹the paper's printed value, our "
        "difference›. Group means: (wins against FT), ours then the paper's. `missing`: not "
        "measured yet. The paper prints no standard deviations.",
        "",
    ]
    missing_total = sum(len(r["missing"]) for r in reports.values())
    waiting = any(r["waiting"] for r in reports.values())
    if missing_total or waiting:
        lines += [
            f"**Incomplete:** {missing_total} known runs missing"
            + (" (and final runs whose grids are unfinished)" if waiting else "")
            + "; each part's study report lists them (parts/<part>/<study>/report/results.md).",
            "",
        ]
    for spec in TABLES:
        if (spec.part, spec.study) not in reports:
            continue
        study = studies[(spec.part, spec.study)]
        rows = reports[(spec.part, spec.study)]["rows"]
        fids = _fids(study_dir(workdir, spec.part, spec.study)) if spec.fid else {}
        lines += _table(spec, study, rows, fids, cells)
    written = []
    for fig in FIGURES:
        if fig.part not in c.paper.parts:
            continue
        files = _figure(fig, c, workdir, studies, out_dir, drawn)
        lines += [f"## {fig.label}: {fig.caption}", ""]
        if files:
            lines += [f"![{fig.label}]({os.path.relpath(f, out_dir)})" for f in files] + [""]
            written += files
        else:
            lines += ["not drawn yet (its runs are missing)", ""]
        if fig.part == "attribution":
            lines += _attribution_lines(drawn)
    atomic.write_text(os.path.join(out_dir, "paper.md"), "\n".join(lines) + "\n")
    atomic.write_text(os.path.join(out_dir, "paper.csv"), _csv(cells))
    records.write_json(os.path.join(out_dir, "paper.json"), {"cells": cells, "figures": written})
    log.info("paper report written to %s (%d cells, %d figures)", out_dir, len(cells), len(written))
    return {"cells": cells, "figures": written, "missing": missing_total, "waiting": waiting}


def _table(spec: TableSpec, study, rows, fids: dict[str, float], cells: list) -> list[str]:
    """Markdown of one table (a block per training size where it is sized)."""
    standard = protocol.standard_size(study.study)
    mine = [r for r in rows if not spec.tasks or r["task"] in spec.tasks]
    sizes = sorted({r["size"] or standard for r in mine}) if spec.sized else [None]
    tasks = _tasks(study, spec)
    title = f"{spec.label}: {spec.caption}" if spec.label else spec.caption
    out = [f"## {title}", ""]
    if not tasks:
        return out + ["no tasks of these groups in this study", ""]
    for size in sizes:
        point = [r for r in mine if size is None or (r["size"] or standard) == size]
        if spec.sized:
            out += [f"### training size {size}", ""]
        by = {(r["strategy"], r["task"]): r for r in point}
        groups = [g for g in spec.groups if any(gg == g for gg, _ in tasks)]
        header = [t for _, t in tasks] + [f"{g} mean (wins)" for g in groups]
        out += ["| method | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
        for method in spec.methods:
            column = f"{method}@{size}" if spec.sized else method
            cells_md = []
            for _, task in tasks:
                r = by.get((method, task))
                paper = published(spec.label, task, column)
                std = r["std"] if r and r["seeds"] > 1 else None  # one seed: no spread
                cells_md.append(_cell(r["mean"] if r else None, std, paper))
                cells.append(_record(spec, task, column, r, paper))
            for g in groups:
                members = [t for gg, t in tasks if gg == g]
                ours, wins = _group(by, method, members)
                paper = paper_wins = None
                if _whole_group(g, members):  # the paper's mean is over the whole group
                    paper = _first(published(spec.label, f"mean_{g}", column),
                                   published(spec.label, "mean", column))  # fmt: skip
                    paper_wins = _first(published(spec.label, f"wins_{g}", column),
                                        published(spec.label, "wins", column))  # fmt: skip
                text = _cell(ours, None, paper)
                if method != "full":
                    theirs = "" if paper_wins is None else f"; paper {_count(paper_wins)}"
                    text += f" ({_count(wins)}{theirs})"
                cells_md.append(text)
                cells.append(_record(spec, f"mean_{g}", column, {"mean": ours}, paper))
            out.append(f"| {STRATEGY_NAMES.get(method, method)} | " + " | ".join(cells_md) + " |")
        out += _tuned_row(spec, by, tasks, groups)
        if spec.fid:
            fid_cells = []
            for _, task in tasks:
                paper = published(spec.label, task, "fid")
                fid_cells.append(_cell(fids.get(task), None, paper, digits=1))
                cells.append(_record(spec, task, "fid", {"mean": fids.get(task)}, paper))
            out.append("| FID | " + " | ".join(fid_cells + ["—"] * len(groups)) + " |")
        out.append("")
    return out


def _tasks(study, spec: TableSpec) -> list[tuple[str, str]]:
    """(group, task) of the study's datasets in the table's groups, in the task table's order."""
    names = [parse_dataset(d) for d in dict.fromkeys(study.study.datasets)]
    order = {t: i for i, t in enumerate(VTAB_TASKS)}
    chosen = [
        (n.group, n.short)
        for n in names
        if n.group in spec.groups and (not spec.tasks or n.short in spec.tasks)
    ]
    return sorted(chosen, key=lambda gt: (spec.groups.index(gt[0]), order.get(gt[1], 99)))


def _whole_group(group: str, tasks: list[str]) -> bool:
    """Whether `tasks` are all of a VTAB group's (or FGVC's) tasks, as the paper's means are."""
    from vpt_jax.data.fgvc import FGVC_TASKS

    names = (
        FGVC_TASKS if group == "fgvc" else [t for t, s in VTAB_TASKS.items() if s.group == group]
    )
    return set(tasks) == set(names)


def _first(*values):
    return next((v for v in values if v is not None), None)


def _group(by: dict, method: str, tasks: list[str]) -> tuple[float | None, int | None]:
    """A method's mean over a group's tasks (None unless every task is measured) and its wins
    against FT."""
    means = [by[(method, t)]["mean"] for t in tasks if (method, t) in by]
    if len(means) < len(tasks) or any(math.isnan(m) for m in means):
        return None, None
    wins = sum(
        by[(method, t)]["mean"] > by[("full", t)]["mean"] for t in tasks if ("full", t) in by
    )
    return statistics.fmean(means), wins


def _tuned_row(spec: TableSpec, by: dict, tasks, groups) -> list[str]:
    """The paper's "Tuned / Total (%)" row, for its prompt method."""
    method = "vpt_deep" if "vpt_deep" in spec.methods else None
    if method is None or spec.sized:
        return []
    values = []
    for _, task in tasks:
        r = by.get((method, task))
        ours = r.get("tuned_percent") if r else None
        values.append(_cell(ours, None, published(spec.label, task, "tuned_percent"), digits=2))
    return ["| - tuned / total % | " + " | ".join(values + ["—"] * len(groups)) + " |"]


def _cell(ours, std, paper, digits: int = 1) -> str:
    if ours is None or (isinstance(ours, float) and math.isnan(ours)):
        text = "missing"
    else:
        text = f"{ours:.{digits}f}" + (f" ± {std:.1f}" if std is not None else "")
    if paper is None:
        return text
    if text == "missing":
        return f"missing ‹{paper:g}›"
    return f"{text} ‹{paper:g}, {ours - paper:+.{digits}f}›"


def _count(n) -> str:
    return "—" if n is None else f"{int(n)}"


def _record(spec: TableSpec, row: str, column: str, r, paper) -> dict[str, Any]:
    ours = None if r is None else r.get("mean")
    ours = None if ours is None or (isinstance(ours, float) and math.isnan(ours)) else ours
    return {
        "table": spec.label or spec.caption,
        "row": row,
        "column": column,
        "ours": ours,
        "std": None if r is None else r.get("std"),
        "seeds": None if r is None else r.get("seeds"),
        "paper": paper,
        "difference": None if ours is None or paper is None else ours - paper,
    }


def _csv(cells: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    fields = ["table", "row", "column", "ours", "std", "seeds", "paper", "difference"]
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(cells)
    return buffer.getvalue()


def _fids(directory: str) -> dict[str, float]:
    """Task -> FID from a study's quadrant section (report/fid.csv), if it has one."""
    from vpt_jax.analysis.fid.table import read_distances_csv

    path = os.path.join(directory, "report", "fid.csv")
    if not os.path.exists(path):
        return {}
    return {parse_dataset(d.dataset).short: d.fid for d in read_distances_csv(path)}


def _figure(fig: FigureSpec, c, workdir: str, studies, out_dir: str, drawn) -> list[str]:
    """The PNGs of one figure under report/ (copied from its study's report or drawn here)."""
    slug = fig.label.lower().replace("figures ", "figure_").replace("figure ", "figure_")
    slug = slug.replace(", ", "_").replace(" ", "")
    if fig.part == "attribution":
        found = [f for s in drawn.values() for f in sorted(s.get("figures", {}).values())]
        return [f for f in found if os.path.exists(f)]
    (name, study), *_ = [(n, s) for (p, n), s in studies.items() if p == fig.part]
    source = os.path.join(study_dir(workdir, fig.part, name), "report")
    if fig.label == "Figure 3":
        return _copy(os.path.join(source, "quadrants.png"), os.path.join(out_dir, f"{slug}.png"))
    if fig.label == "Figure 4":
        return _copy(os.path.join(source, "scaling.png"), os.path.join(out_dir, f"{slug}.png"))
    from vpt_jax.study.report import collect

    finals = collect(study, pooled_store(study, study_dir(workdir, fig.part, name),
                                         pool_dir(workdir)))  # fmt: skip
    split = study.study.final.eval_split
    if fig.label == "Figures 9-13":
        standard = {k: v for k, v in finals.items() if not k[2]}
        drawn_path = figures.loss_curves(standard, split, os.path.join(out_dir, f"{slug}.png"))
        return [drawn_path] if drawn_path else []
    if fig.label == "Figure 5":  # two tasks per group, the first of each in the task table
        tasks = {}
        for dataset, *_ in finals:
            tasks.setdefault(parse_dataset(dataset).group, [])
            if dataset not in tasks[parse_dataset(dataset).group]:
                tasks[parse_dataset(dataset).group].append(dataset)
        order = {f"vtab/{t}": i for i, t in enumerate(VTAB_TASKS)}
        keep = {d for ds in tasks.values() for d in sorted(ds, key=lambda d: order.get(d, 99))[:2]}
        subset = {k: v for k, v in finals.items() if not k[2] and k[0] in keep}
        drawn_path = figures.loss_curves(subset, split, os.path.join(out_dir, f"{slug}.png"))
        return [drawn_path] if drawn_path else []
    out = []  # Figure 6: one panel set per enlarged size
    for size in sorted({k[2] for k in finals if k[2]}):
        subset = {k: v for k, v in finals.items() if k[2] == size}
        drawn_path = figures.loss_curves(subset, split, os.path.join(out_dir, f"{slug}_{size}.png"))
        out += [drawn_path] if drawn_path else []
    return out


def _copy(source: str, target: str) -> list[str]:
    if not os.path.exists(source):
        return []
    shutil.copyfile(source, target + ".tmp")
    os.replace(target + ".tmp", target)
    return [target]


def _attribution_lines(drawn: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["| task | images | FT right, VPT wrong | VPT right, FT wrong | rows drawn |",
             "|---|---:|---:|---:|---:|"]  # fmt: skip
    for task, s in drawn.items():
        if "error" in s:
            lines.append(f"| {parse_dataset(task).short} | not drawn: {s['error']} | | | |")
        else:
            lines.append(
                f"| {parse_dataset(task).short} | {s['examples']} | {len(s['ft_right_vpt_wrong'])} "
                f"| {len(s['vpt_right_ft_wrong'])} | {len(s['rows'])} |"
            )
    return [*lines, ""]


def _define(values: flags.FlagValues) -> None:
    flags.DEFINE_string("workdir", None, "the paper's directory", flag_values=values, required=True)


def _report(values: flags.FlagValues, rest: list[str]) -> dict[str, Any]:
    from vpt_jax.paper.runner import PAPER_CONFIG, write_all

    cli.no_arguments(rest)
    path = os.path.join(values.workdir, PAPER_CONFIG)
    if not os.path.exists(path):
        raise UserError(f"{values.workdir} is not a paper directory (no {PAPER_CONFIG})")
    config = ml_collections.ConfigDict(records.read_json(path))
    result = write_all(config, values.workdir)
    with open(os.path.join(values.workdir, "report", "paper.md")) as f:
        print(f.read())
    return result


def main(argv: list[str] | None = None) -> None:
    """Command line: writes a paper's report from its records and prints it."""
    cli.run(__doc__, _define, _report, argv, prog="python -m vpt_jax.paper.report")


if __name__ == "__main__":
    main()


__all__ = ["FIGURES", "TABLES", "write_paper_report"]

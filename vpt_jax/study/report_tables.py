"""The report's tables in the paper's layout: per task, group means, wins against FT (with the
significant ones marked), tuned/total %."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any

from vpt_jax.data import GROUPS

GROUP_ORDER = (*GROUPS, "other")  # tables list tasks by group; datasets without one come last


def paper_table(rows: list[dict[str, Any]], ft: str) -> str:
    """Markdown in the paper's layout: tasks by group, group means, wins against FT, tuned/total."""
    out = []
    for (size, shots), point_rows in _by_point(rows).items():
        title = "VTAB-1k splits" if not size else f"training size {size}"
        if shots:
            title += f", {shots}-shot"
        tasks = sorted({(r["group"], r["task"]) for r in point_rows}, key=_group_key)
        groups = [g for g in GROUP_ORDER if any(t[0] == g for t in tasks)]
        header = (
            [t for _, t in tasks]
            + [f"{g} mean" for g in groups]
            + ["mean", f"wins vs {ft}", "tuned/total %"]
        )
        out.append(f"### {title}\n")
        out.append("| strategy | " + " | ".join(header) + " |")
        out.append("|---" * (len(header) + 1) + "|")
        cell = {(r["strategy"], r["task"]): r for r in point_rows}
        for strategy in dict.fromkeys(r["strategy"] for r in point_rows):
            values = _table_row(cell, strategy, tasks, groups, ft)
            out.append(f"| {strategy} | " + " | ".join(values) + " |")
        out.append("")
    return "\n".join(out)


def group_tables(rows: list[dict[str, Any]], ft: str, backbone: str) -> str:
    """One table per task group, as the paper's per-backbone appendix tables (Tables 7-15): per
    task, the group mean, wins against `ft` within the group and tuned/total %."""
    out = []
    for (size, shots), point_rows in _by_point(rows).items():
        point = "" if not size else f", training size {size}"
        point += f", {shots}-shot" if shots else ""
        for group in GROUP_ORDER:
            tasks = sorted({(r["group"], r["task"]) for r in point_rows if r["group"] == group})
            if not tasks:
                continue
            header = [t for _, t in tasks] + [f"{group} mean", f"wins vs {ft}", "tuned/total %"]
            out.append(f"### {backbone}: {group}{point}\n")
            out.append("| strategy | " + " | ".join(header) + " |")
            out.append("|---" * (len(header) + 1) + "|")
            cell = {(r["strategy"], r["task"]): r for r in point_rows}
            for strategy in dict.fromkeys(r["strategy"] for r in point_rows):
                values = _table_row(cell, strategy, tasks, [group], ft)
                del values[len(tasks) + 1]  # the overall mean equals the group mean here
                out.append(f"| {strategy} | " + " | ".join(values) + " |")
            out.append("")
    return "\n".join(out)


def _table_row(cell: dict, strategy: str, tasks: list, groups: list, ft: str) -> list[str]:
    """One strategy's cells: per task, per group mean, mean, wins against `ft`, tuned/total."""
    mine = {t: cell[(strategy, t)] for _, t in tasks if (strategy, t) in cell}
    marks = {
        t: "" if strategy == ft else significance(r, cell.get((ft, t))) for t, r in mine.items()
    }
    values = [
        f"{mine[t]['mean']:.1f} ± {mine[t]['std']:.1f}{marks[t]}" if t in mine else "—"
        for _, t in tasks
    ]
    for g in groups:
        values.append(_fmt(_mean([mine[t]["mean"] for gg, t in tasks if gg == g and t in mine])))
    values.append(_fmt(_mean([r["mean"] for r in mine.values()])))
    wins = [r["mean"] > cell[(ft, t)]["mean"] for t, r in mine.items() if (ft, t) in cell]
    sig = "".join(
        f" {n}{m}" for m in (BETTER, WORSE) if (n := sum(v == f" {m}" for v in marks.values()))
    )
    values.append(
        "—" if strategy == ft else f"{sum(wins)}/{len(wins)}" + (f" ({sig.strip()})" if sig else "")
    )
    values.append(_fmt(_mean([r["tuned_percent"] for r in mine.values()]), 3))
    return values


BETTER, WORSE = "▲", "▼"


def significance(row: dict[str, Any], ft_row: dict[str, Any] | None) -> str:
    """` ▲` / ` ▼` where a strategy's mean differs from FT's by more than the pooled std of
    their seeds (both with at least 2 seeds), else `""`: a difference the seeds' spread explains
    is not marked."""
    if ft_row is None or min(row.get("seeds", 0), ft_row.get("seeds", 0)) < 2:
        return ""
    pooled = math.sqrt((row["std"] ** 2 + ft_row["std"] ** 2) / 2)
    diff = row["mean"] - ft_row["mean"]
    if math.isnan(diff) or abs(diff) <= pooled:
        return ""
    return f" {BETTER}" if diff > 0 else f" {WORSE}"


def _by_point(rows):
    points: dict[tuple, list] = defaultdict(list)
    for r in rows:
        points[(r["size"], r["shots"])].append(r)
    return dict(sorted(points.items()))


def _group_key(item):
    group, task = item
    return (GROUP_ORDER.index(group) if group in GROUP_ORDER else len(GROUP_ORDER), task)


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return statistics.fmean(values) if values else math.nan


def _fmt(value: float, digits: int = 1) -> str:
    return "—" if math.isnan(value) else f"{value:.{digits}f}"

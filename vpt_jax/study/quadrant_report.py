"""The report's quadrant section: where each task lies, who won there, and what the advisor says.

With `study.quadrants.reference` set (the pretraining data, e.g. `procedural:pretrain` or
`tfds:imagenet2012`), the report measures each task's FID to it (`vpt_jax.analysis.fid`: the run's
backbone's own features, or the FID Inception), places the tasks in the paper's quadrants (task
disparity x distribution similarity, `vpt_jax.analysis.quadrants`), and writes beside each one the
measured FT-vs-VPT winner with its margin and the seeds' pooled std, and the advisor's verdict
(`vpt_jax.analysis.findings.recommend`) for the study's training size. Files: `fid.csv`,
`quadrants.md` / `.csv` / `.png`. Statistics are cached under `<workdir>/statistics`, so a report
written again embeds nothing.
"""

from __future__ import annotations

import math
import os
from typing import Any

import ml_collections

from vpt_jax import atomic
from vpt_jax.analysis import findings, quadrants
from vpt_jax.errors import UserError
from vpt_jax.study import protocol
from vpt_jax.study.report_tables import significance


def enabled(study: ml_collections.ConfigDict) -> bool:
    """Whether the study asks for the quadrant section."""
    q = study.get("quadrants")
    return bool(q is not None and q.reference)


def extractor_for(config: ml_collections.ConfigDict):
    """The feature space of the section: the backbone checkpoint's (`vit`) or the Inception's."""
    from vpt_jax.analysis.fid import extractors

    q = config.study.quadrants
    if q.features == "inception":
        if not q.inception:
            raise UserError(
                "study.quadrants.features='inception' needs study.quadrants.inception (the FID "
                "Inception weights .npz); or use features='vit' (the backbone's own features)"
            )
        return extractors.inception_extractor(os.path.expanduser(q.inception))
    if q.features != "vit":
        raise UserError(f"study.quadrants.features must be vit or inception, got {q.features!r}")
    return extractors.vit_extractor(os.path.expanduser(config.run.model.checkpoint))


def check(config: ml_collections.ConfigDict) -> None:
    """One-line errors for the section's settings, before any run starts."""
    if not enabled(config.study):
        return
    q = config.study.quadrants
    if q.num_images < 2:
        raise UserError(f"study.quadrants.num_images must be >= 2, got {q.num_images}")
    if q.fid_threshold < 0:
        raise UserError(
            f"study.quadrants.fid_threshold must be >= 0 (0: median), got {q.fid_threshold}"
        )
    extractor_for(config)


def write_section(
    config: ml_collections.ConfigDict, workdir: str, rows: list[dict[str, Any]], out_dir: str
) -> tuple[list[str], list[str]]:
    """Measures the FIDs and writes the quadrant files; returns (Markdown lines, files written)."""
    from vpt_jax.analysis.fid import distance
    from vpt_jax.analysis.fid.table import write_distances_csv

    study = config.study
    q = study.quadrants
    standard = [r for r in rows if not r["size"] and not r["shots"]]
    datasets = list(dict.fromkeys(r["dataset"] for r in standard))
    if not datasets:
        return [], []
    extractor = extractor_for(config)
    cache = os.path.join(workdir, "statistics")
    data_dir = config.run.data.get("data_dir")
    reference = distance.reference_statistics(
        q.reference, extractor, split=q.reference_split or None, num_images=q.num_images,
        data_dir=data_dir, cache_dir=cache,
    )  # fmt: skip
    distances = distance.dataset_distances(
        datasets, reference, extractor, reference_name=q.reference,
        num_images=q.num_images, data_dir=data_dir, cache_dir=cache,
    )  # fmt: skip
    fid_csv = os.path.join(out_dir, "fid.csv")
    write_distances_csv(fid_csv, distances)
    ft, vpt = study.ft_strategy, study.vpt_strategy
    results: dict[str, dict[str, float]] = {}
    for r in standard:
        results.setdefault(r["dataset"], {})[r["strategy"]] = r["mean"]
    table = quadrants.quadrant_table(
        distances, results, ft=ft, vpt=vpt, fid_threshold=q.fid_threshold or None
    )
    png = os.path.join(out_dir, "quadrants.png")
    quadrants.plot_quadrants(table, png, xlabel=f"FID to {q.reference} ({extractor.name} features)")
    atomic.write_text(os.path.join(out_dir, "quadrants.md"), table.markdown())
    atomic.write_text(os.path.join(out_dir, "quadrants.csv"), table.csv_text())
    lines = [
        "## Quadrants: where each task lies, who won, what the advisor says",
        "",
        f"FID to `{q.reference}` in the `{extractor.name}` feature space ({q.num_images} images "
        f"per set); threshold {table.fid_threshold:.2f} ({table.threshold_source}).",
        "",
        verdicts(table, standard, ft, vpt, protocol.standard_size(study)),
    ]
    return lines, [fid_csv, png]


def verdicts(
    table: quadrants.QuadrantTable, rows: list[dict[str, Any]], ft: str, vpt: str, train_size: int
) -> str:
    """Per task, by FID: its quadrant, the paper's and the advisor's choice, and the measurement."""
    cell = {(r["dataset"], r["strategy"]): r for r in rows}
    out = [
        f"| task | FID | disparity | distributions | paper prefers | advisor | measured winner "
        f"| {vpt} − {ft} (points) | pooled std | significant |",
        "|---|---:|---|---|---|---|---|---:|---:|---|",
    ]
    agree = decided = 0
    for row in sorted(table.rows, key=lambda r: r.fid):
        name = next((d for d, _ in cell if quadrants.canonical_task(d) == row.task), row.task)
        advice = "—"
        if row.disparity:
            advice = findings.recommend(
                fid=row.fid,
                fid_threshold=table.fid_threshold,
                disparity=row.disparity,
                train_size=max(train_size, 1),
            ).method
        mine, base = cell.get((name, vpt)), cell.get((name, ft))
        margin = pooled = math.nan
        mark = ""
        if mine and base:
            margin = mine["mean"] - base["mean"]
            pooled = math.sqrt((mine["std"] ** 2 + base["std"] ** 2) / 2)
            mark = significance(mine, base).strip()
        if row.winner in ("FT", "VPT") and advice in ("FT", "VPT"):
            decided += 1
            agree += row.winner == advice
        out.append(
            f"| {row.task} | {row.fid:.1f} | {row.disparity or '?'} | {row.distributions} "
            f"| {row.paper or '—'} | {advice} | {row.winner} | {_signed(margin)} "
            f"| {_plain(pooled)} | {'yes ' + mark if mark else 'no'} |"
        )
    out += [
        "",
        f"The measured winner matches the advisor in {agree} of {decided} tasks (significant: the "
        "margin exceeds the pooled std of the two strategies' seeds).",
    ]
    return "\n".join(out)


def _signed(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:+.1f}"


def _plain(value: float) -> str:
    return "—" if math.isnan(value) else f"{value:.1f}"

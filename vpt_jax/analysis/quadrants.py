"""The study's quadrants: task disparity x distance to the pretraining data, and who won where.

Han et al. (ICLR 2024) place each VTAB-1k task on two axes, the disparity of its objective from the
pretraining objective (low: Natural and Specialized; high: Structured) and the FID of its images to
ImageNet's, and find VPT preferable in three of the four quadrants when downstream data is limited
(VTAB-1k: 800 + 200 images); FT is preferable with low disparity and a dissimilar distribution
(`PAPER_PREFERENCE`). This module draws that figure and table from an FID table and a study's results
and marks each task by the method that won in the study, next to what the paper's finding predicts.

Inputs:

* an FID table (`vpt_jax.analysis.fid.distance`; CSV with `dataset`, `fid`, and `disparity` where the
  name cannot tell it);
* results, `{task: {strategy_name: mean_test_accuracy}}` (a JSON file of exactly that mapping for
  the command). Task names are data-layer names or bare VTAB names (`cifar100` = `vtab/cifar100`);
  the FT strategy is `full` and the VPT one `vpt_deep` unless named otherwise; a task without both
  is shown as `unknown`.

Command line (writes the PNG, and the table beside it as `.md` and `.csv`):

    python -m vpt_jax.analysis.quadrants --fid fid.csv --results results.json --out quadrants.png

Distributions count as similar when a task's FID is at most the threshold: the median FID of the
table's tasks unless given (FID scales with the feature space, image count and reference, so a
threshold relative to the tasks measured in the same setting transfers where a constant would not).
"""

from __future__ import annotations

import csv
import dataclasses
import functools
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
from absl import flags

from vpt_jax import atomic, cli
from vpt_jax.analysis.fid.table import DatasetDistance, read_distances_csv
from vpt_jax.data import DISPARITIES, parse_dataset
from vpt_jax.errors import UserError

FT_STRATEGY = "full"
VPT_STRATEGY = "vpt_deep"
SIMILAR, DISSIMILAR = "similar", "dissimilar"
# The method the paper finds preferable in each (disparity, distribution) quadrant, with limited data.
PAPER_PREFERENCE = {
    ("high", SIMILAR): "VPT",
    ("high", DISSIMILAR): "VPT",
    ("low", SIMILAR): "VPT",
    ("low", DISSIMILAR): "FT",
}
_STYLE = {  # winner -> (marker, face colour, edge colour)
    "VPT": ("o", "#1f77b4", "#1f77b4"),
    "FT": ("s", "#d62728", "#d62728"),
    "tie": ("D", "#7f7f7f", "#7f7f7f"),
    "unknown": ("o", "white", "#7f7f7f"),
}


def median_threshold(fids: Iterable[float]) -> float:
    """The default FID threshold between similar and dissimilar: the median of the tasks' FIDs."""
    values = [float(f) for f in fids]
    if not values:
        raise UserError("no FIDs to derive a threshold from; pass an FID table with tasks")
    return float(np.median(values))


def similarity(fid: float, threshold: float) -> str:
    """`similar` when `fid <= threshold`, else `dissimilar`."""
    return SIMILAR if fid <= threshold else DISSIMILAR


def quadrant_name(disparity: str, distributions: str) -> str:
    """E.g. `low disparity, dissimilar distributions`."""
    return f"{disparity} disparity, {distributions} distributions"


def canonical_task(name: str) -> str:
    """The data-layer name of a task (`cifar100` -> `vtab/cifar100`); other names as given."""
    try:
        return str(parse_dataset(name, bare_vtab=True))
    except UserError:  # results may name tasks the data layer does not know
        return name.strip()


def task_label(task: str) -> str:
    """A short label for a figure: the task name (`cifar100`, `count`); other names as given."""
    try:
        return parse_dataset(task, bare_vtab=True).short
    except UserError:
        return task


def winner(
    accuracies: Mapping[str, float] | None, *, ft: str = FT_STRATEGY, vpt: str = VPT_STRATEGY
) -> str:
    """`FT`, `VPT` or `tie` by mean test accuracy; `unknown` when either strategy is missing."""
    if not accuracies or ft not in accuracies or vpt not in accuracies:
        return "unknown"
    if accuracies[ft] == accuracies[vpt]:
        return "tie"
    return "FT" if accuracies[ft] > accuracies[vpt] else "VPT"


def validate_results(results: object, source: str = "results") -> dict[str, dict[str, float]]:
    """Checks `{task: {strategy: mean_test_accuracy}}` and keys it by canonical task names.

    Raises:
      UserError: another structure, a non-numeric accuracy, or one task under two names.
    """
    shape = "{task: {strategy: mean_test_accuracy}}"
    if not isinstance(results, Mapping):
        raise UserError(f"{source} must be a mapping {shape}; got {type(results).__name__}")
    out: dict[str, dict[str, float]] = {}
    for task, accuracies in results.items():
        if not isinstance(accuracies, Mapping):
            raise UserError(f"{source}: entry {task!r} must map strategy -> mean test accuracy")
        for strategy, value in accuracies.items():
            if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
                raise UserError(f"{source}: {task!r}/{strategy!r} is {value!r}, not an accuracy")
        key = canonical_task(str(task))
        if key in out:
            raise UserError(f"{source} names task {key} twice (as {task!r} too); keep one")
        out[key] = {str(s): float(v) for s, v in accuracies.items()}
    return out


def load_results(path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Reads a results JSON file `{task: {strategy: mean_test_accuracy}}` (see `validate_results`)."""
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise UserError(f"results file not found: {path}; write {{task: {{strategy: accuracy}}}}")
    try:
        with open(path) as f:
            results = json.load(f)
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    return validate_results(results, source=path)


@dataclasses.dataclass(frozen=True)
class QuadrantRow:
    """One task: where it lies, what the paper predicts there, and who won in the study."""

    task: str
    group: str
    disparity: str  # low / high; '' when unknown (the task is then left out of the figure)
    fid: float
    distributions: str  # similar / dissimilar
    quadrant: str  # '' when the disparity is unknown
    paper: str  # FT / VPT: the paper's preference in this quadrant; '' when unknown
    ft_accuracy: float | None
    vpt_accuracy: float | None
    winner: str  # FT / VPT / tie / unknown


@dataclasses.dataclass(frozen=True)
class QuadrantTable:
    """The quadrant placement of every task of an FID table, with the threshold used."""

    rows: tuple[QuadrantRow, ...]
    fid_threshold: float
    threshold_source: str  # how the threshold was chosen, for the reader
    ft: str
    vpt: str
    unmatched: tuple[str, ...]  # result tasks absent from the FID table

    def markdown(self) -> str:
        """The table as Markdown, with the threshold and agreement with the paper below it."""
        fmt = lambda a: "-" if a is None else f"{a:.4g}"
        lines = [
            f"| task | group | disparity | FID | distributions | paper prefers | FT ({self.ft}) "
            f"| VPT ({self.vpt}) | winner |",
            "|---|---|---|---:|---|---|---:|---:|---|",
        ]
        for r in self.rows:
            lines.append(
                f"| {r.task} | {r.group or '-'} | {r.disparity or 'unknown'} | {r.fid:.2f} "
                f"| {r.distributions} | {r.paper or '-'} | {fmt(r.ft_accuracy)} "
                f"| {fmt(r.vpt_accuracy)} | {r.winner} |"
            )
        decided = [r for r in self.rows if r.paper and r.winner in ("FT", "VPT")]
        agree = sum(r.winner == r.paper for r in decided)
        lines += [
            "",
            f"FID threshold {self.fid_threshold:.2f} ({self.threshold_source}): similar "
            "distributions at or below it.",
            f"The study's winner matches the paper's quadrant preference in {agree} of "
            f"{len(decided)} tasks with both results.",
        ]
        if self.unmatched:
            lines.append(f"Results without an FID: {', '.join(self.unmatched)}.")
        return "\n".join(lines) + "\n"

    def csv_text(self) -> str:
        """The rows as CSV (accuracies empty where missing)."""
        text = io.StringIO()
        fields = [f.name for f in dataclasses.fields(QuadrantRow)]
        writer = csv.DictWriter(text, fields, lineterminator="\n")
        writer.writeheader()
        for row in self.rows:
            record = dataclasses.asdict(row)
            writer.writerow({k: "" if v is None else v for k, v in record.items()})
        return text.getvalue()


def quadrant_table(
    distances: Sequence[DatasetDistance],
    results: Mapping[str, Mapping[str, float]] | None = None,
    *,
    ft: str = FT_STRATEGY,
    vpt: str = VPT_STRATEGY,
    fid_threshold: float | None = None,
    disparities: Mapping[str, str] | None = None,
) -> QuadrantTable:
    """Places every task of an FID table in its quadrant and marks who won.

    Args:
      distances: FID table rows (`distance.dataset_distances` or `read_distances_csv`).
      results: `{task: {strategy: mean_test_accuracy}}`; None: every winner is `unknown`.
      ft: the strategy that counts as FT.
      vpt: the strategy that counts as VPT.
      fid_threshold: FID separating similar from dissimilar; None: the median of the table's FIDs.
      disparities: `{task: "low" | "high"}` for tasks whose disparity the table lacks (or to
        override it).

    Returns:
      The table, in the FID table's order.
    """
    if not distances:
        raise UserError(
            "the FID table has no rows; compute it with python -m vpt_jax.analysis.fid.distance"
        )
    results = validate_results(results or {})
    overrides = {canonical_task(k): v for k, v in (disparities or {}).items()}
    for task, value in overrides.items():
        if value not in DISPARITIES:
            raise UserError(f"disparity of {task} must be low or high; got {value!r}")
    if fid_threshold is None:
        threshold = median_threshold(d.fid for d in distances)
        source = f"median FID of the {len(distances)} tasks"
    else:
        threshold, source = float(fid_threshold), "given"
    rows = []
    for d in distances:
        task = canonical_task(d.dataset)
        disparity = overrides.get(task, d.disparity)
        distributions = similarity(d.fid, threshold)
        accuracies = results.get(task, {})
        rows.append(
            QuadrantRow(
                task=task,
                group=d.group,
                disparity=disparity,
                fid=d.fid,
                distributions=distributions,
                quadrant=quadrant_name(disparity, distributions) if disparity else "",
                paper=PAPER_PREFERENCE.get((disparity, distributions), ""),
                ft_accuracy=accuracies.get(ft),
                vpt_accuracy=accuracies.get(vpt),
                winner=winner(accuracies, ft=ft, vpt=vpt),
            )
        )
    known = {r.task for r in rows}
    unmatched = tuple(sorted(t for t in results if t not in known))
    return QuadrantTable(tuple(rows), threshold, source, ft, vpt, unmatched)


def plot_quadrants(
    table: QuadrantTable, path: str | os.PathLike, *, xlabel: str = "FID to the pretraining data"
) -> None:
    """Draws the quadrant figure as a PNG (atomically): FID across, disparity up, winner as marker.

    Tasks of unknown disparity are left out (they are in the table).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # no pyplot: no global state
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    rows = [r for r in table.rows if r.disparity]
    if not rows:
        raise UserError("no task has a known disparity; pass --disparity TASK=low|high for them")
    fig = Figure(figsize=(9, 5.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    xmax = max(max(r.fid for r in rows), table.fid_threshold) * 1.25 or 1.0
    ax.set_xlim(0, xmax)
    ax.set_ylim(-0.5, 1.5)
    # The paper's FT quadrant (low disparity, dissimilar distributions) is shaded.
    ax.fill_between([table.fid_threshold, xmax], -0.5, 0.5, color="#d62728", alpha=0.06, lw=0)
    ax.axvline(table.fid_threshold, color="black", ls="--", lw=1)
    ax.axhline(0.5, color="black", lw=1)
    for (disparity, distributions), method in PAPER_PREFERENCE.items():
        x = 0.01 * xmax if distributions == SIMILAR else 0.99 * xmax
        y = (1.45 if disparity == "high" else 0.45) - 0.02
        ax.text(
            x,
            y,
            f"{disparity} disparity, {distributions}: paper prefers {method}",
            ha="left" if distributions == SIMILAR else "right",
            va="top",
            fontsize=8,
            color="#555555",
        )
    for band, disparity in enumerate(DISPARITIES):
        members = sorted((r for r in rows if r.disparity == disparity), key=lambda r: r.fid)
        step = min(0.12, 0.7 / max(len(members) - 1, 1))
        for i, row in enumerate(members):  # spread the tasks of a band so their labels stay legible
            y = band + (i - (len(members) - 1) / 2) * step
            marker, face, edge = _STYLE[row.winner]
            ax.scatter([row.fid], [y], marker=marker, c=face, edgecolors=edge, s=45, zorder=3)
            ax.annotate(task_label(row.task), (row.fid, y), xytext=(5, -3),
                        textcoords="offset points", fontsize=7)  # fmt: skip
    ax.set_yticks([0, 1], ["low disparity\n(natural, specialized)", "high disparity\n(structured)"])
    ax.set_xlabel(f"{xlabel}  (threshold {table.fid_threshold:.2f}: {table.threshold_source})")
    ax.set_title(f"Who won: FT ({table.ft}) vs VPT ({table.vpt})")
    handles = [
        Line2D([], [], marker=m, ls="", markerfacecolor=f, markeredgecolor=e, label=label)
        for label, (m, f, e) in _STYLE.items()
    ]
    ax.legend(
        handles=handles, title="winner", loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic.write_bytes(path, buffer.getvalue())


def _parse_disparities(pairs: Sequence[str]) -> dict[str, str]:
    out = {}
    for pair in pairs:
        task, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--disparity takes TASK=low|high; got {pair!r}")
        out[task] = value
    return out


def _define(values: flags.FlagValues) -> None:
    define = functools.partial(flags.DEFINE_string, flag_values=values)
    define("fid", None, "FID table CSV (python -m ...fid.distance --out)", required=True)
    define("results", None, "JSON {task: {strategy: mean_test_accuracy}}")
    define("out", None, "PNG to write; .md and .csv go beside it", required=True)
    define("ft", FT_STRATEGY, "strategy that counts as FT")
    define("vpt", VPT_STRATEGY, "strategy that counts as VPT")
    flags.DEFINE_float(
        "fid_threshold", None, "default: median FID of the tasks", flag_values=values
    )
    flags.DEFINE_multi_string(
        "disparity", [], "TASK=low|high for tasks the table lacks", flag_values=values
    )


def _draw(values: flags.FlagValues, rest: list[str]) -> None:
    cli.no_arguments(rest)
    distances = read_distances_csv(values.fid)
    results = load_results(values.results) if values.results else None
    table = quadrant_table(
        distances,
        results,
        ft=values.ft,
        vpt=values.vpt,
        fid_threshold=values.fid_threshold,
        disparities=_parse_disparities(values.disparity),
    )
    reference = distances[0].reference or "the pretraining data"
    plot_quadrants(table, values.out, xlabel=f"FID to {reference}")
    stem = os.path.splitext(values.out)[0]
    atomic.write_text(f"{stem}.md", table.markdown())
    atomic.write_text(f"{stem}.csv", table.csv_text())
    print(table.markdown(), end="")
    print(f"wrote {values.out}, {stem}.md, {stem}.csv")


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: the quadrant figure (PNG) and table (Markdown, CSV) from an FID table.

    Args:
      argv: the flags, without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _draw, argv)


if __name__ == "__main__":
    main()

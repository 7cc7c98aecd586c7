"""The study's figures (matplotlib, PNG, written atomically).

* `loss_curves.png`: train (solid) and test (dashed) loss per epoch of the final runs, mean over
  seeds, one panel per task, one colour per strategy, log loss axis, one legend outside the
  panels (the paper's Figure 5).
* `scaling.png`: test top-1 (mean ± std over seeds) against training-set size on a log axis, FT
  solid, VPT dotted, other strategies dashed (Figure 4); written when the study has data-scaling
  sizes (`study.train_sizes` or a `study.scaling` sweep, whose standard-split point is drawn at
  the standard training size).
* `wins.png`: each strategy's mean test top-1 minus FT's, per task (green: better than FT).
"""

from __future__ import annotations

import io
import math
import os
from collections import defaultdict
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from vpt_jax import atomic
from vpt_jax.data import parse_dataset
from vpt_jax.study import protocol
from vpt_jax.train import records


def _save(fig, path: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic.write_bytes(path, buffer.getvalue())
    return path


def _colors(strategies):
    cmap = plt.get_cmap("tab10")
    return {s: cmap(i % 10) for i, s in enumerate(strategies)}


def _test_loss(row: dict[str, Any], eval_split: str) -> float:
    """The test loss of an epoch's record: its curve evaluation (a fixed subset of the split,
    `train.curve_every_epochs`) where there is one, else the full split's, else NaN (not evaluated)."""
    for key in (f"{eval_split}_curve_loss", f"{eval_split}_loss"):
        if key in row:
            return row[key]
    return math.nan


def loss_curves(finals: dict[tuple, dict[str, Any]], eval_split: str, path: str) -> str | None:
    curves: dict[str, dict[str, tuple]] = defaultdict(dict)
    # The standard splits; a study of one enlarged training size (the overfitting study) draws that.
    sizes = {size for (_, _, size, shots) in finals if not shots}
    drawn = next(iter(sizes)) if len(sizes) == 1 else 0
    for (dataset, strategy, size, shots), entry in sorted(finals.items()):
        if size != drawn or shots or not entry["runs"]:
            continue
        per_seed = [
            records.read_metrics(os.path.join(run, records.METRICS)) for run in entry["runs"]
        ]
        final_stage = max(r["stage"] for r in per_seed[0])
        per_seed = [[r for r in rows if r["stage"] == final_stage] for rows in per_seed]
        length = min(len(rows) for rows in per_seed)
        if not length:
            continue
        epochs = [r["epoch"] for r in per_seed[0][:length]]
        train = np.mean([[r["train_loss"] for r in rows[:length]] for rows in per_seed], axis=0)
        test = np.mean([[_test_loss(r, eval_split) for r in rows[:length]] for rows in per_seed], 0)
        task = parse_dataset(dataset).short + (f" (n={size})" if size else "")
        curves[task][strategy] = (epochs, train, test)
    if not curves:
        return None
    strategies = sorted({s for c in curves.values() for s in c})
    colors = _colors(strategies)
    n = len(curves)
    cols = min(n, 3)
    rows = -(-n // cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(5.0 * cols + 2.2, 3.9 * rows), squeeze=False, layout="constrained"
    )
    for ax, (task, by_strategy) in zip(axes.flat, sorted(curves.items()), strict=False):
        for strategy, (epochs, train, test) in sorted(by_strategy.items()):
            ax.plot(epochs, train, "-", color=colors[strategy], lw=1.6)
            seen = np.isfinite(test)  # test curves are evaluated every curve_every_epochs
            ax.plot(np.asarray(epochs)[seen], test[seen], "--", marker=".", color=colors[strategy])
        ax.set_yscale("log")  # one strategy's spike does not flatten the others
        ax.set_title(task, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss (log)")
        ax.grid(alpha=0.3, which="both")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    handles = [Line2D([], [], color=colors[s], lw=2, label=s) for s in strategies] + [
        Line2D([], [], color="black", ls="-", label="train"),
        Line2D([], [], color="black", ls="--", label="test"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle("Train (solid) and test (dashed) loss per epoch, mean over seeds", fontsize=12)
    return _save(fig, path)


def scaling(
    rows: list[dict[str, Any]], ft: str, vpt: str, path: str, standard: int = 0
) -> str | None:
    """Accuracy against training size with the std over seeds as error bars; the standard splits'
    results are drawn at `standard` (their training size) for the tasks and strategies of the
    sweep (0: only the sweep's sizes)."""
    swept = {(r["task"], r["strategy"]) for r in rows if r["size"] and not r["shots"]}
    points = [
        r if r["size"] else {**r, "size": standard}
        for r in rows
        if not r["shots"] and (r["size"] or (standard and (r["task"], r["strategy"]) in swept))
    ]
    if not swept:
        return None
    tasks = sorted({r["task"] for r in points})
    strategies = sorted({r["strategy"] for r in points})
    colors = _colors(strategies)
    cols = min(len(tasks), 4)
    nrows = -(-len(tasks) // cols)
    fig, axes = plt.subplots(
        nrows, cols, figsize=(4.6 * cols + 1.8, 3.6 * nrows), squeeze=False, layout="constrained"
    )
    for ax, task in zip(axes.flat, tasks, strict=False):
        for strategy in strategies:
            series = sorted(
                (r["size"], r["mean"], r["std"])
                for r in points
                if r["task"] == task and r["strategy"] == strategy
            )
            if not series:
                continue
            style = "-" if strategy == ft else (":" if strategy == vpt else "--")
            sizes, means, stds = zip(*series, strict=True)
            ax.errorbar(sizes, means, yerr=stds, fmt=style, marker="o", capsize=3,
                        color=colors[strategy], label=strategy)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(task, fontsize=11)
        ax.set_xlabel("training examples")
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    handles = [Line2D([], [], color=colors[s], marker="o", label=s) for s in strategies]
    fig.legend(handles=handles, loc="outside right upper", fontsize=9)
    fig.suptitle(f"Accuracy vs training size, mean ± std over seeds ({ft} solid, {vpt} dotted)")
    return _save(fig, path)


def wins(rows: list[dict[str, Any]], ft: str, path: str) -> str | None:
    standard = [r for r in rows if not r["size"] and not r["shots"]]
    tasks = sorted({r["task"] for r in standard})
    strategies = [s for s in dict.fromkeys(r["strategy"] for r in standard) if s != ft]
    base = {r["task"]: r["mean"] for r in standard if r["strategy"] == ft}
    if not tasks or not strategies or not base:
        return None
    cell = {(r["strategy"], r["task"]): r["mean"] for r in standard}
    delta = np.array(
        [[cell.get((s, t), math.nan) - base.get(t, math.nan) for t in tasks] for s in strategies]
    )
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 1.0 + 0.5 * len(strategies)))
    limit = np.nanmax(np.abs(delta)) if np.isfinite(delta).any() else 1.0
    image = ax.imshow(delta, cmap="RdYlGn", vmin=-limit, vmax=limit, aspect="auto")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right")
    ax.set_yticks(range(len(strategies)), strategies)
    for i in range(len(strategies)):
        for j in range(len(tasks)):
            if np.isfinite(delta[i, j]):
                ax.text(j, i, f"{delta[i, j]:+.1f}", ha="center", va="center", fontsize=8)
    fig.colorbar(image, ax=ax, label=f"test top-1 minus {ft} (points)")
    ax.set_title(f"Wins and losses against {ft}")
    return _save(fig, path)


def write_figures(config, store, rows, finals, out_dir: str) -> list[str]:
    study = config.study
    written = [
        loss_curves(finals, study.final.eval_split, os.path.join(out_dir, "loss_curves.png")),
        scaling(
            rows,
            study.ft_strategy,
            study.vpt_strategy,
            os.path.join(out_dir, "scaling.png"),
            protocol.standard_size(study),
        ),
        wins(rows, study.ft_strategy, os.path.join(out_dir, "wins.png")),
    ]
    return [w for w in written if w]

"""The paper's published numbers, typed in from the paper with their table, row and column.

`vpt_jax/assets/paper_published.csv`: `table,row,column,value,std,note`. Rows are VTAB / FGVC task
names (`cifar100`, `cub`), group rows (`mean_natural`, `wins_structured`, `mean`, `wins`); columns
are strategies (`full`, `vpt_deep`, `mixed`, `ft_then_pt`, `lora`), a strategy at a training size
(`full@400`), `tuned_percent` or `fid`. The paper prints no standard deviations. Where the paper's
own numbers disagree (a printed mean that is not the mean of its row, a win count), the file keeps
what is printed and says so in `note`.
"""

from __future__ import annotations

import csv
import functools
import os

PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets",
                    "paper_published.csv")  # fmt: skip


@functools.cache
def published() -> dict[tuple[str, str, str], float]:
    """(table, row, column) -> the printed value."""
    with open(PATH, newline="") as f:
        return {(r["table"], r["row"], r["column"]): float(r["value"]) for r in csv.DictReader(f)}


def value(table: str, row: str, column: str) -> float | None:
    return published().get((table, row, column))


__all__ = ["PATH", "published", "value"]

"""FID tables: one row per dataset split with its distance to the reference, as CSV and text.

The CSV (`CSV_FIELDS`) is what `python -m vpt_jax.analysis.fid.distance --out fid.csv` writes and
what the quadrant figure and the advisor read back.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import os
from collections.abc import Sequence

from vpt_jax import atomic
from vpt_jax.data import parse_dataset
from vpt_jax.errors import UserError

CSV_FIELDS = (
    "dataset",
    "split",
    "group",
    "disparity",
    "fid",
    "num_images",
    "features",
    "reference",
)


@dataclasses.dataclass(frozen=True)
class DatasetDistance:
    """One row of an FID table: a dataset split's distance to the reference."""

    dataset: str  # canonical name, e.g. vtab/cifar100
    split: str
    group: str  # natural / specialized / structured (VTAB, procedural); '' if unknown
    disparity: str  # high / low from the group; '' if the name cannot tell
    fid: float
    num_images: int  # images the dataset's statistics came from
    features: str  # the feature space's name
    reference: str  # what the distance is measured to


def write_distances_csv(path: str | os.PathLike, rows: Sequence[DatasetDistance]) -> None:
    """Writes an FID table as CSV (columns `CSV_FIELDS`), atomically."""
    text = io.StringIO()
    writer = csv.DictWriter(text, CSV_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**dataclasses.asdict(row), "fid": repr(row.fid)})
    atomic.write_bytes(path, text.getvalue().encode())


def read_distances_csv(path: str | os.PathLike) -> list[DatasetDistance]:
    """Reads an FID table written by `write_distances_csv` (only `dataset` and `fid` are required).

    Raises:
      UserError: a missing file, missing columns or a non-numeric FID.
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.isfile(path):
        raise UserError(
            f"FID table not found: {path}; write one with python -m vpt_jax.analysis.fid.distance"
        )
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"dataset", "fid"} - set(reader.fieldnames or ())
        if missing:
            raise UserError(
                f"{path} has no {' and '.join(sorted(missing))} column; it is not an FID table"
            )
        rows = []
        for line, record in enumerate(reader, start=2):
            try:
                fid = float(record["fid"])
                num_images = int(record.get("num_images") or 0)
            except (TypeError, ValueError):
                raise UserError(
                    f"{path} line {line}: fid {record['fid']!r} or num_images "
                    f"{record.get('num_images')!r} is not a number; fix or rewrite the table"
                ) from None
            dataset = record["dataset"]
            group, disparity = _known_group_and_disparity(dataset)
            rows.append(
                DatasetDistance(
                    dataset=dataset,
                    split=record.get("split") or "",
                    group=record.get("group") or group,
                    disparity=record.get("disparity") or disparity,
                    fid=fid,
                    num_images=num_images,
                    features=record.get("features") or "",
                    reference=record.get("reference") or "",
                )
            )
    return rows


def _known_group_and_disparity(dataset: str) -> tuple[str, str]:
    """What a dataset's name tells of its group and disparity (`''` each where it cannot tell)."""
    try:
        name = parse_dataset(dataset, bare_vtab=True)
    except UserError:  # a table may hold any name: its group and disparity are then unknown
        return "", ""
    return name.group, name.disparity or ""


def format_distances(rows: Sequence[DatasetDistance]) -> str:
    """An FID table as aligned text."""
    header = ("dataset", "split", "group", "disparity", "FID", "images")
    lines = [header] + [
        (r.dataset, r.split, r.group or "-", r.disparity or "-", f"{r.fid:.2f}", str(r.num_images))
        for r in rows
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )

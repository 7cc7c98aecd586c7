"""VPT or FT for my dataset? The study's findings applied to a dataset's distance, objective and size.

`advise` measures the dataset's FID to the reference, derives the similarity threshold, and applies
the paper's findings (`vpt_jax.analysis.findings.recommend`: high task disparity -> VPT; low
disparity -> VPT for similar distributions, FT for dissimilar ones; FT catches up with much data).

The FID threshold separating similar from dissimilar is, by default, the median FID of anchor tasks
measured in the same setting (reference, feature space, image count): the VTAB tasks (procedural
ones offline). FID scales with all three, so a fixed constant would not transfer; the median splits
the benchmark's tasks into its more and less pretraining-like halves. Pass `--fid_threshold` or an
FID table (`--fid_table`, its median) to fix it.

    python -m vpt_jax.analysis.advisor --dataset folder:/data/birds --train_size 800 \\
        --reference imagenet_stats.npz --inception inception_fid.npz --disparity low \\
        --fid_table fid.csv
    python -m vpt_jax.analysis.advisor --dataset procedural:count --train_size 800 \\
        --reference procedural:pretrain --features vit --checkpoint vit_tiny.npz      # offline
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence

from absl import flags

from vpt_jax import cli
from vpt_jax.analysis.fid import distance
from vpt_jax.analysis.fid.extractors import FeatureExtractor, extractor_from_flags
from vpt_jax.analysis.fid.frechet import frechet_distance
from vpt_jax.analysis.fid.statistics import FeatureStatistics
from vpt_jax.analysis.fid.table import read_distances_csv
from vpt_jax.analysis.findings import (
    FINDINGS,
    LARGE_DATA,
    PAPER,
    PAPER_TITLE,
    Recommendation,
    recommend,
)
from vpt_jax.analysis.quadrants import median_threshold
from vpt_jax.data import DISPARITIES, DatasetName, parse_dataset, parse_dataset_list
from vpt_jax.errors import UserError


@dataclasses.dataclass(frozen=True)
class Advice:
    """The advisor's answer with every number it used."""

    dataset: str
    split: str
    num_images: int  # images the dataset's statistics came from
    train_size: int
    fid: float
    fid_threshold: float
    threshold_source: str
    disparity: str
    disparity_source: str
    features: str
    reference: str
    recommendation: Recommendation

    def to_dict(self) -> dict:
        """A JSON-ready dict (the recommendation's fields at the top level)."""
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "recommendation"}
        out.update(dataclasses.asdict(self.recommendation))
        out["finding_text"] = FINDINGS[self.recommendation.finding]
        out["source"] = f"{PAPER}: {PAPER_TITLE}"
        return out


def resolve_disparity(dataset: str | DatasetName, disparity: str | None) -> tuple[str, str]:
    """`(disparity, where it came from)`: the user's value, else the task's group.

    Raises:
      UserError: an unknown dataset, an invalid value, or none for a dataset whose name cannot
        tell it.
    """
    name = parse_dataset(dataset, bare_vtab=True)
    known = name.disparity
    if disparity is not None:
        if disparity not in DISPARITIES:
            raise UserError(f"--disparity must be low or high; got {disparity!r}")
        note = f" (its {name.group} group says {known})" if known and known != disparity else ""
        return disparity, f"given{note}"
    if known is None:
        raise UserError(
            f"the task disparity of {name} cannot be known from its name; pass --disparity high "
            "if its objective is far from classifying objects (counting, distances, positions, "
            "orientations, like VTAB's structured tasks), else --disparity low"
        )
    return known, f"{name.group} task"


def _threshold_from_table(path: str, extractor: FeatureExtractor) -> tuple[float, str]:
    rows = read_distances_csv(path)
    spaces = {r.features for r in rows if r.features}
    if spaces and spaces != {extractor.name}:
        raise UserError(
            f"{path} holds FIDs in the {', '.join(sorted(spaces))} feature space, not "
            f"{extractor.name}; FIDs of different feature spaces are not comparable"
        )
    return _median_of([r.fid for r in rows], f"tasks in {path}")


def _median_of(fids: list[float], tasks: str) -> tuple[float, str]:
    """The median FID as the threshold, and how it was found (`tasks` says which tasks)."""
    threshold = median_threshold(fids)
    return (
        threshold,
        f"median FID of the {len(fids)} {tasks}, range {min(fids):.2f}..{max(fids):.2f}",
    )


def _default_anchors(name: DatasetName) -> str:
    return "procedural" if name.kind == "procedural" else "vtab"


def _threshold_source(
    name: DatasetName,
    extractor: FeatureExtractor,
    fid_threshold: float | None,
    fid_table: str | None,
    anchors: str | None,
) -> tuple[tuple[float, str] | None, list[DatasetName]]:
    """`((threshold, where it came from), [])`, or `(None, anchor tasks to measure it on)`."""
    if sum(x is not None for x in (fid_threshold, fid_table, anchors)) > 1:
        raise UserError("pass at most one of fid_threshold, fid_table and anchors")
    if fid_threshold is not None:
        return (float(fid_threshold), "given"), []
    if fid_table is not None:
        return _threshold_from_table(fid_table, extractor), []
    return None, parse_dataset_list(anchors or _default_anchors(name))


def _open_anchors(anchors: list[DatasetName], extractor: FeatureExtractor, data_dir) -> None:
    for anchor in anchors:
        try:
            distance.open_dataset(anchor, extractor, data_dir=data_dir)
        except UserError as e:
            raise UserError(
                f"the FID threshold needs the anchor tasks' FIDs, but {e}; or pass --fid_threshold "
                "or --fid_table fid.csv"
            ) from None


def advise(
    dataset: str | DatasetName,
    train_size: int,
    extractor: FeatureExtractor,
    reference: str | FeatureStatistics,
    *,
    reference_name: str | None = None,
    disparity: str | None = None,
    fid_threshold: float | None = None,
    fid_table: str | None = None,
    anchors: str | None = None,
    split: str | None = None,
    reference_split: str | None = None,
    num_images: int | None = distance.DEFAULT_MAX_IMAGES,
    data_dir: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
    large_data: int = LARGE_DATA,
) -> Advice:
    """Measures a dataset's distance to the pretraining data and recommends VPT or FT.

    Every input is checked (dataset, disparity, threshold source, anchor tasks) before any image is
    embedded.

    Args:
      dataset: `vtab/<task>` (or a bare VTAB name), `tfds:...`, `folder:...` or `procedural:...`.
      train_size: training images the user will adapt on.
      extractor: the feature space (`extractors.inception_extractor` for FID).
      reference: statistics of the pretraining data, or what `distance.reference_statistics` takes.
      reference_name: how the reference is reported; default: `reference` if it is a string.
      disparity: `low` or `high`; required where the name cannot tell (TFDS, image folders).
      fid_threshold: the similar/dissimilar threshold; default: median FID of `anchors`.
      fid_table: an FID table CSV whose median FID is the threshold (instead of `anchors`).
      anchors: tasks whose median FID is the threshold: `vtab`, `procedural` or names; default
        `procedural` for procedural datasets, else `vtab`.
      split: the dataset's split (default: its `default_split`).
      reference_split: the reference dataset's split.
      num_images: images per dataset's statistics (the first of the split); None: all.
      data_dir: TFDS data directory.
      cache_dir: statistics cache; None computes without caching.
      batch_size: images per extractor call.
      large_data: training size from which the data-scaling finding applies.

    Returns:
      The advice, with the numbers used.
    """
    if train_size < 1:
        raise UserError(f"--train_size must be a positive number of images; got {train_size}")
    name = parse_dataset(dataset, bare_vtab=True)
    disparity, disparity_source = resolve_disparity(name, disparity)
    if isinstance(reference, FeatureStatistics) and reference.dim != extractor.dim:
        raise UserError(
            f"the reference statistics are {reference.dim}-d but the {extractor.name} features are "
            f"{extractor.dim}-d; compute them with the same extractor"
        )
    given, anchor_names = _threshold_source(name, extractor, fid_threshold, fid_table, anchors)
    kw = dict(data_dir=data_dir)
    opened = distance.open_dataset(name, extractor, split=split, **kw)
    _open_anchors(anchor_names, extractor, data_dir)  # before anything is computed
    common = dict(num_images=num_images, cache_dir=cache_dir, batch_size=batch_size)
    if isinstance(reference, str):
        reference_name = reference_name or reference
        reference = distance.reference_statistics(
            reference, extractor, split=reference_split, **kw, **common
        )
    stats = distance.split_statistics(opened, extractor, **common)
    fid = frechet_distance(stats, reference)
    if given is None:
        rows = distance.dataset_distances(anchor_names, reference, extractor, **kw, **common)
        given = _median_of([r.fid for r in rows], f"{anchors or _default_anchors(name)} tasks")
    threshold, threshold_source = given
    return Advice(
        dataset=str(name),
        split=opened.split,
        num_images=int(stats.num_samples or 0),
        train_size=train_size,
        fid=fid,
        fid_threshold=threshold,
        threshold_source=threshold_source,
        disparity=disparity,
        disparity_source=disparity_source,
        features=extractor.name,
        reference=reference_name or "reference statistics",
        recommendation=recommend(
            fid=fid,
            fid_threshold=threshold,
            disparity=disparity,
            train_size=train_size,
            large_data=large_data,
        ),
    )


def format_advice(advice: Advice) -> str:
    """A few lines a practitioner can act on."""
    r = advice.recommendation
    fields = (
        ("dataset", f"{advice.dataset} ({advice.split}, {advice.num_images} images measured)"),
        ("FID", f"{advice.fid:.2f} to {advice.reference} ({advice.features} features)"),
        ("threshold", f"{advice.fid_threshold:.2f} ({advice.threshold_source})"),
        ("disparity", f"{advice.disparity} ({advice.disparity_source})"),
        ("quadrant", f"{r.quadrant} (train size {advice.train_size})"),
        ("recommend", r.method),
        ("reason", r.reason),
        ("finding", f"{FINDINGS[r.finding]} [{PAPER}]"),
        ("caveat", r.caveat),
    )
    return "\n".join(f"{name:<10} {text}" for name, text in fields)


def _define(values: flags.FlagValues) -> None:
    define = functools.partial(flags.DEFINE_string, flag_values=values)
    define("dataset", None, "vtab/<task>, tfds:, folder:, procedural:", required=True)
    flags.DEFINE_integer(
        "train_size", None, "training images you have", flag_values=values, required=True
    )
    flags.DEFINE_enum(
        "disparity", None, DISPARITIES, "required for non-VTAB datasets", flag_values=values
    )
    define("split", None, "split to measure (default: train800val200 / train)")
    flags.DEFINE_float("fid_threshold", None, "similar iff FID <= this", flag_values=values)
    define("fid_table", None, "FID table CSV; threshold = its median FID")
    define("anchors", None, "vtab, procedural or names; threshold = median FID")
    flags.mark_flags_as_mutual_exclusive(
        ["fid_threshold", "fid_table", "anchors"], flag_values=values
    )
    flags.DEFINE_integer("large_data", LARGE_DATA, "FT catches up from here", flag_values=values)
    flags.DEFINE_boolean("json", False, "print the advice as JSON", flag_values=values)
    distance.define_data_flags(values)


def _advise(values: flags.FlagValues, rest: list[str]) -> None:
    cli.no_arguments(rest)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    resolve_disparity(values.dataset, values.disparity)  # before any weights load
    extractor = extractor_from_flags(values)
    advice = advise(
        values.dataset,
        values.train_size,
        extractor,
        values.reference,
        disparity=values.disparity,
        fid_threshold=values.fid_threshold,
        fid_table=values.fid_table,
        anchors=values.anchors,
        split=values.split,
        reference_split=values.reference_split,
        num_images=values.num_images or None,
        data_dir=values.data_dir,
        cache_dir=values.cache_dir or distance.default_cache_dir(),
        batch_size=values.batch_size,
        large_data=values.large_data,
    )
    print(json.dumps(advice.to_dict(), indent=2) if values.json else format_advice(advice))


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: recommend VPT or FT for a dataset.

    Args:
      argv: the flags, without the program name; None reads `sys.argv`.
    """
    cli.run(__doc__, _define, _advise, argv)


if __name__ == "__main__":
    main()

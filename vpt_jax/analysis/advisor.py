"""VPT or FT for my dataset? The study's findings applied to a dataset's distance, objective and size.

Han et al. (ICLR 2024) find, on the 19 VTAB-1k tasks with limited data (800 training images):

* VPT is preferable when the downstream objective is far from the pretraining objective (high task
  disparity: counting, distances, positions, orientations), whatever the data distribution;
* with a classification-like objective (low disparity), VPT is preferable when the data distribution
  is similar to the pretraining data (low FID), FT when it is dissimilar: VPT wins 3 of 4 quadrants;
* as the training set grows the FT-VPT gap narrows and FT often overtakes VPT (their data-scaling
  study: FT surpassed VPT in 9 of the 12 plotted cases).

`recommend` turns these into a rule (`FINDINGS` names the one that drives each answer); `advise`
measures the dataset's FID to the reference, derives the similarity threshold, and applies it.

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

import argparse
import dataclasses
import json
import logging
import os
from collections.abc import Sequence

from vpt_jax.analysis import distance
from vpt_jax.analysis.extractors import FeatureExtractor, extractor_from_args
from vpt_jax.analysis.fid_table import read_distances_csv
from vpt_jax.analysis.frechet import frechet_distance
from vpt_jax.analysis.quadrants import (
    DISSIMILAR,
    SIMILAR,
    median_threshold,
    quadrant_name,
    similarity,
)
from vpt_jax.analysis.statistics import FeatureStatistics
from vpt_jax.analysis.tasks import (
    DISPARITIES,
    known_disparity,
    resolve_dataset_name,
    task_group,
    task_set,
)
from vpt_jax.errors import UserError

LARGE_DATA = 10_000  # training images from which FT is expected to catch up: ~10x VTAB-1k's 800
NEAR_THRESHOLD = 0.1  # an FID within 10% of the threshold makes the similarity call uncertain
FINDINGS = {
    "disparity": "VPT is preferable when the downstream objective differs substantially from the "
    "pretraining objective (high task disparity, e.g. classification to counting)",
    "similar": "with a classification-like objective, VPT is preferable when the data distribution "
    "is similar to the pretraining data (e.g. both natural images)",
    "dissimilar": "with a classification-like objective and a dissimilar data distribution, FT is "
    "preferable: the one quadrant of four where VPT is not",
    "scaling": "as the training set grows the FT-VPT gap narrows and FT often overtakes VPT (9 of "
    "the 12 cases in the paper's data-scaling study)",
}
PAPER = "Han et al., ICLR 2024"
PAPER_TITLE = "Facing the Elephant in the Room: Visual Prompt Tuning or Full Finetuning?"


@dataclasses.dataclass(frozen=True)
class Recommendation:
    """What to use and why, from the quadrant and the training size."""

    method: str  # VPT or FT
    quadrant: str
    distributions: str  # similar / dissimilar
    finding: str  # the key of the driving finding in FINDINGS
    reason: str
    caveat: str


def recommend(
    *,
    fid: float,
    fid_threshold: float,
    disparity: str,
    train_size: int,
    large_data: int = LARGE_DATA,
) -> Recommendation:
    """The paper's findings as a rule.

    Args:
      fid: the dataset's FID to the pretraining data.
      fid_threshold: FIDs at or below it count as similar distributions.
      disparity: `high` (objective far from pretraining classification) or `low`.
      train_size: training images the user has.
      large_data: from this many training images on, the data-scaling finding applies.

    Returns:
      VPT with high disparity (any size: the strongest finding; a caveat says FT may catch up with
      much data); with low disparity, VPT for similar distributions unless the data is large (then
      FT), FT for dissimilar distributions.
    """
    if disparity not in DISPARITIES:
        raise UserError(f"disparity must be low or high; got {disparity!r}")
    if train_size < 1:
        raise UserError(f"train_size must be a positive number of images; got {train_size}")
    distributions = similarity(fid, fid_threshold)
    quadrant = quadrant_name(disparity, distributions)
    large = train_size >= large_data
    measured = (
        "the quadrant findings were measured with limited data (VTAB-1k: 800 training images)"
    )
    compared = (
        f"FID {fid:.2f} {'<=' if distributions == SIMILAR else '>'} threshold {fid_threshold:.2f}"
    )
    if disparity == "high":
        method, finding = "VPT", "disparity"
        reason = "high task disparity: the objective is far from the classification pretraining"
        caveat = (
            f"with {train_size} training images FT may catch up even here: if you can afford "
            "both, compare them on a validation split"
            if large
            else f"{measured}; with much more data (~{large_data}+ images) FT may catch up"
        )
    elif distributions == DISSIMILAR:
        method, finding = "FT", "dissimilar"
        reason = f"low task disparity and {compared}: dissimilar distributions"
        caveat = (
            "FT's lead is expected to hold or grow with this much data"
            if large
            else f"{measured}; FT's lead is expected to grow with more data"
        )
    elif large:
        method, finding = "FT", "scaling"
        reason = (
            f"low task disparity and {compared} favour VPT with limited data, but "
            f"{train_size} training images >= {large_data}"
        )
        caveat = (
            "VPT stays close and stores only prompts and a head per task: prefer it if that matters"
        )
    else:
        method, finding = "VPT", "similar"
        reason = f"low task disparity and {compared}: similar distributions"
        caveat = f"{measured}; from about {large_data} training images FT catches up and often overtakes VPT"
    if disparity == "low" and abs(fid - fid_threshold) <= NEAR_THRESHOLD * fid_threshold:
        caveat += (
            f"; the FID is within {NEAR_THRESHOLD:.0%} of the threshold, so the similar/dissimilar "
            "call, and with it this recommendation, is uncertain"
        )
    return Recommendation(method, quadrant, distributions, finding, reason, caveat)


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


def resolve_disparity(dataset: str, disparity: str | None) -> tuple[str, str]:
    """`(disparity, where it came from)`: the user's value, else the task's group.

    Raises:
      UserError: an invalid value, or none for a dataset whose name cannot tell it.
    """
    known = known_disparity(dataset)
    if disparity is not None:
        if disparity not in DISPARITIES:
            raise UserError(f"--disparity must be low or high; got {disparity!r}")
        note = (
            f" (its {task_group(dataset)} group says {known})"
            if known and known != disparity
            else ""
        )
        return disparity, f"given{note}"
    if known is None:
        raise UserError(
            f"the task disparity of {dataset} cannot be known from its name; pass --disparity high "
            "if its objective is far from classifying objects (counting, distances, positions, "
            "orientations, like VTAB's structured tasks), else --disparity low"
        )
    return known, f"{task_group(dataset)} task"


def _threshold_from_table(path: str, extractor: FeatureExtractor) -> tuple[float, str]:
    rows = read_distances_csv(path)
    spaces = {r.features for r in rows if r.features}
    if spaces and spaces != {extractor.name}:
        raise UserError(
            f"{path} holds FIDs in the {', '.join(sorted(spaces))} feature space, not "
            f"{extractor.name}; FIDs of different feature spaces are not comparable"
        )
    fids = [r.fid for r in rows]
    threshold = median_threshold(fids)
    return (
        threshold,
        f"median FID of the {len(fids)} tasks in {path}, range {min(fids):.2f}..{max(fids):.2f}",
    )


def advise(
    dataset: str,
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
      split: the dataset's split (default `distance.default_split`).
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
    if sum(x is not None for x in (fid_threshold, fid_table, anchors)) > 1:
        raise UserError("pass at most one of fid_threshold, fid_table and anchors")
    dataset = resolve_dataset_name(dataset)
    disparity, disparity_source = resolve_disparity(dataset, disparity)
    if isinstance(reference, FeatureStatistics) and reference.dim != extractor.dim:
        raise UserError(
            f"the reference statistics are {reference.dim}-d but the {extractor.name} features are "
            f"{extractor.dim}-d; compute them with the same extractor"
        )
    anchor_names: list[str] = []
    if fid_threshold is not None:
        threshold, threshold_source = float(fid_threshold), "given"
    elif fid_table is not None:
        threshold, threshold_source = _threshold_from_table(fid_table, extractor)
    else:
        anchors = anchors or ("procedural" if dataset.startswith("procedural:") else "vtab")
        anchor_names = task_set(anchors)
    kw = dict(data_dir=data_dir)
    opened = distance.open_dataset(dataset, extractor, split=split, **kw)
    for name in anchor_names:  # anchors must open before anything is computed
        try:
            distance.open_dataset(name, extractor, **kw)
        except UserError as e:
            raise UserError(
                f"the FID threshold needs the anchor tasks' FIDs, but {e}; or pass --fid_threshold "
                "or --fid_table fid.csv"
            ) from None
    common = dict(num_images=num_images, cache_dir=cache_dir, batch_size=batch_size)
    if isinstance(reference, str):
        reference_name = reference_name or reference
        reference = distance.reference_statistics(
            reference, extractor, split=reference_split, **kw, **common
        )
    stats = distance.split_statistics(opened, extractor, **common)
    fid = frechet_distance(stats, reference)
    if anchor_names:
        rows = distance.dataset_distances(anchor_names, reference, extractor, **kw, **common)
        fids = [r.fid for r in rows]
        threshold = median_threshold(fids)
        threshold_source = (
            f"median FID of the {len(fids)} {anchors} tasks, range {min(fids):.2f}..{max(fids):.2f}"
        )
    return Advice(
        dataset=dataset,
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


def main(argv: Sequence[str] | None = None) -> None:
    """Command line: recommend VPT or FT for a dataset."""
    parser = argparse.ArgumentParser(
        prog="python -m vpt_jax.analysis.advisor",
        description="Recommend visual prompt tuning (VPT) or full finetuning (FT) for a dataset.",
    )
    parser.add_argument("--dataset", required=True, help="vtab/<task>, tfds:, folder:, procedural:")
    parser.add_argument("--train_size", type=int, required=True, help="training images you have")
    parser.add_argument("--disparity", choices=DISPARITIES, help="required for non-VTAB datasets")
    parser.add_argument("--split", help="split to measure (default: train800val200 / train)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--fid_threshold", type=float, help="similar iff FID <= this")
    threshold.add_argument("--fid_table", help="FID table CSV; threshold = its median FID")
    threshold.add_argument("--anchors", help="vtab, procedural or names; threshold = median FID")
    parser.add_argument(
        "--large_data", type=int, default=LARGE_DATA, help="FT catches up from here"
    )
    parser.add_argument("--json", action="store_true", help="print the advice as JSON")
    distance.add_data_arguments(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        resolve_disparity(resolve_dataset_name(args.dataset), args.disparity)  # before weights load
        extractor = extractor_from_args(args)
        advice = advise(
            args.dataset,
            args.train_size,
            extractor,
            args.reference,
            disparity=args.disparity,
            fid_threshold=args.fid_threshold,
            fid_table=args.fid_table,
            anchors=args.anchors,
            split=args.split,
            reference_split=args.reference_split,
            num_images=args.num_images or None,
            data_dir=args.data_dir,
            cache_dir=args.cache_dir or distance.default_cache_dir(),
            batch_size=args.batch_size,
            large_data=args.large_data,
        )
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    print(json.dumps(advice.to_dict(), indent=2) if args.json else format_advice(advice))


if __name__ == "__main__":
    main()

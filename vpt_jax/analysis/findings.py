"""The paper's findings as a rule: VPT or FT from task disparity, FID and training size.

Han et al. (ICLR 2024) find, on the 19 VTAB-1k tasks with limited data (800 training images):

* VPT is preferable when the downstream objective is far from the pretraining objective (high task
  disparity: counting, distances, positions, orientations), whatever the data distribution;
* with a classification-like objective (low disparity), VPT is preferable when the data distribution
  is similar to the pretraining data (low FID), FT when it is dissimilar: VPT wins 3 of 4 quadrants;
* as the training set grows the FT-VPT gap narrows and FT often overtakes VPT (their data-scaling
  study: FT surpassed VPT in 9 of the 12 plotted cases).

`recommend` turns these into a rule; `FINDINGS` names the one that drives each answer. Measuring a
dataset's FID and applying the rule to it is `vpt_jax.analysis.advisor`.
"""

from __future__ import annotations

import dataclasses

from vpt_jax.analysis.quadrants import DISSIMILAR, SIMILAR, quadrant_name, similarity
from vpt_jax.data import DISPARITIES
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

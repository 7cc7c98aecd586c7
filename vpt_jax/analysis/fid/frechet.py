"""The Fréchet distance between two Gaussians fitted to features (FID with Inception features).

    d^2 = |mu_1 - mu_2|^2 + Tr(sigma_1 + sigma_2 - 2 sqrt(sigma_1 sigma_2))

computed on the host in float64 with SciPy, with pytorch-fid's numerical handling so the numbers
agree with published FIDs: if `sqrtm(sigma_1 @ sigma_2)` is not finite (a singular product), `eps`
is added to both diagonals and it is retried; a complex result is accepted (its real part) only when
the imaginary parts of its diagonal are at most 1e-3.

Typical use (FID between two datasets, each an iterable of NHWC uint8 or [0, 1] image batches):

    fn = features.inception_features_fn("inception_fid.npz")
    fid = frechet_distance(dataset_statistics(fn, batches_a), dataset_statistics(fn, batches_b))

`jax.scipy.linalg.sqrtm` runs on CPU only and is imprecise in float32, hence SciPy in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.linalg

from vpt_jax.analysis.fid.features import FeaturesFn
from vpt_jax.analysis.fid.statistics import FeatureStatistics, StatisticsError, dataset_statistics

log = logging.getLogger(__name__)

IMAG_TOLERANCE = 1e-3  # largest |imaginary part| on the diagonal of sqrtm that counts as round-off


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics, *, eps: float = 1e-6) -> float:
    """The Fréchet distance between two feature statistics.

    Args:
      a: statistics of one dataset.
      b: statistics of the other, from the same feature extractor.
      eps: added to both covariance diagonals when their product is too singular for `sqrtm`.

    Returns:
      The squared Fréchet distance (what is reported as FID), a non-negative float up to round-off.

    Raises:
      StatisticsError: statistics of different widths or with non-finite entries, or a product of
        covariances whose square root is far from real (typically: too few samples for the width).
    """
    if a.dim != b.dim:
        raise StatisticsError(
            f"statistics of different feature widths ({a.dim} vs {b.dim}); compute both with the "
            "same feature extractor"
        )
    for name, stats in (("first", a), ("second", b)):
        if not (np.isfinite(stats.mu).all() and np.isfinite(stats.sigma).all()):
            raise StatisticsError(
                f"the {name} statistics hold NaN or infinite values; recompute them"
            )
    diff = a.mu - b.mu
    covmean = scipy.linalg.sqrtm(a.sigma @ b.sigma)
    if not np.isfinite(covmean).all():
        log.warning("singular product of covariances; adding %g to their diagonals", eps)
        offset = np.eye(a.dim) * eps
        covmean = scipy.linalg.sqrtm((a.sigma + offset) @ (b.sigma + offset))
        if not np.isfinite(covmean).all():
            raise StatisticsError(
                f"sqrtm of the covariance product is not finite even with eps={eps}; use more "
                "images"
            )
    if np.iscomplexobj(covmean):
        imag = float(np.max(np.abs(np.diagonal(covmean).imag)))
        if imag > IMAG_TOLERANCE:
            known = a.num_samples is not None and b.num_samples is not None
            counts = f" (from {a.num_samples} and {b.num_samples} images)" if known else ""
            raise StatisticsError(
                f"sqrtm of the covariance product has imaginary parts up to {imag:.3g} on its "
                f"diagonal{counts}; the covariances are too ill-conditioned: use more images than "
                f"the feature width {a.dim}"
            )
        covmean = covmean.real
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * np.trace(covmean))


def dataset_frechet_distance(
    features_fn: FeaturesFn,
    batches_a: Iterable[Any],
    batches_b: Iterable[Any],
    *,
    batch_size: int = 50,
    image_key: str = "image",
) -> float:
    """The Fréchet distance between two datasets in the feature space of `features_fn`.

    Args:
      features_fn: `features.inception_features_fn(path)` for FID, or
        `features.vit_features_fn(model, params)` for a ViT's own (pre-logits) features.
      batches_a: one dataset as NHWC image batches (or mappings with `image_key`, `mask`).
      batches_b: the other dataset, in the same form.
      batch_size: images per extractor call.
      image_key: the images' key in mapping batches.
    """
    a, b = (
        dataset_statistics(features_fn, batches, batch_size=batch_size, image_key=image_key)
        for batches in (batches_a, batches_b)
    )
    return frechet_distance(a, b)

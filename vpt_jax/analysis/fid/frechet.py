"""The Fréchet distance between two Gaussians fitted to features (FID with Inception features).

    d^2 = |mu_1 - mu_2|^2 + Tr(sigma_1 + sigma_2 - 2 sqrt(sigma_1 sigma_2))

computed on the host in float64. Two methods give the same number up to round-off:

* `symmetric` (the default, about a second at 2048-d): Tr sqrt(S1 S2) is the sum of the square
  roots of the eigenvalues of S1^1/2 S2 S1^1/2, a symmetric positive semidefinite matrix. With
  factors S1 = F1 F1^T and S2 = F2 F2^T (pivoted Cholesky, which reveals their ranks) that matrix
  has the eigenvalues of the Gram matrix of G = F1^T F2, so the trace is a sum of `eigvalsh`
  square roots: no `sqrtm` of a non-symmetric product, no `eps`, and rank-deficient covariances
  (fewer images than features) are exact, not a special case.
* `sqrtm`: pytorch-fid's `calculate_frechet_distance`, step for step (10 s at 2048-d on 2 cores):
  `scipy.linalg.sqrtm(sigma_1 @ sigma_2)`; if that is not finite (a singular product), `eps` is
  added to both diagonals and it is retried; a complex result is accepted (its real part) only
  when the imaginary parts of its diagonal are at most 1e-3. Kept as the reference the tests and
  `benchmarks/frechet.py` compare against.

Round-off against a genuinely wrong input (`symmetric`, see `psd_factor`): a covariance must be
symmetric to 1e-6 of its largest entry (it is then symmetrised) and positive semidefinite (PSD).
Pivoted Cholesky stops at LAPACK's pivot tolerance D * eps * max(diag); what it leaves must be
round-off of that size (a sample covariance's null space in float64). Otherwise (an indefinite
null space, as after rounding a singular covariance to float32, or a matrix that is not PSD) the
factor comes from `eigh`: eigenvalues below D * eps * max|eigenvalue| are zeros, negative ones
down to -1e-6 of the largest (`NEGATIVE_TOLERANCE`: pytorch-fid's 1e-3 on imaginary parts of
square roots, squared, relative to the scale; float32 files reach ~1e-8) are round-off and
dropped, as pytorch-fid drops small imaginary parts; anything more negative raises a
`StatisticsError` naming the covariance. The Gram matrix is PSD by construction, so its negative
round-off eigenvalues are clipped to 0.

Where the two methods differ: for rank-deficient covariances `sqrtm` of the singular product sums
square roots of its ~1e-16 round-off eigenvalues (~1e-8 each), which makes pytorch-fid's distance
smaller than the exact one by about 1e-7 to 1e-6 relative (2048-d from 300 images: 4e-7); the
symmetric method matches the exact value (the nuclear norm of the centred data's cross product)
to ~1e-14. pytorch-fid's `eps` retry, where it fires, returns the distance between covariances
with `eps` added to their diagonals, i.e. smaller than the exact one by sqrt(eps)-sized terms:
about 1e-4 relative at full rank and 1e-3 to 1e-2 with a rank-deficient covariance
(`benchmarks/frechet.py` prints it). With SciPy 1.17 `sqrtm` was finite on every real-looking
pair tried (32-2048-d, 8-10000 images, dead features), so the retry never fired and the methods
agreed within 1e-6 (within 5e-6 on float32-rounded rank-deficient covariances, where both lose
~1e-4 against the float64 ones).
pytorch-fid's 1e-3 on imaginary parts is absolute, so it depends on the features' scale: the
same rank-deficient pair with features multiplied by 1000 makes `sqrtm` raise (imaginary parts
1.4e-3), while the symmetric method's tolerances are relative and its answer scales exactly.

Typical use (FID between two datasets, each an iterable of NHWC uint8 or [0, 1] image batches):

    fn = features.inception_features_fn("inception_fid.npz")
    fid = frechet_distance(dataset_statistics(fn, batches_a), dataset_statistics(fn, batches_b))

`jax.scipy.linalg.sqrtm` runs on CPU only and is imprecise in float32, hence NumPy/SciPy in float64.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import scipy.linalg
import scipy.linalg.lapack

from vpt_jax.analysis.fid.features import FeaturesFn
from vpt_jax.analysis.fid.statistics import FeatureStatistics, StatisticsError, dataset_statistics
from vpt_jax.errors import UserError

log = logging.getLogger(__name__)

METHODS = ("symmetric", "sqrtm")  # see the module docstring
IMAG_TOLERANCE = 1e-3  # sqrtm: largest |imaginary part| on its diagonal that counts as round-off
# symmetric: the most negative eigenvalue of a covariance, relative to its largest, that counts as
# round-off (dropped): pytorch-fid's IMAG_TOLERANCE on square roots, squared, relative to scale.
NEGATIVE_TOLERANCE = IMAG_TOLERANCE**2
SYMMETRY_TOLERANCE = 1e-6  # symmetric: largest |sigma - sigma.T| relative to the largest |sigma|
_EPS = float(np.finfo(np.float64).eps)


def frechet_distance(
    a: FeatureStatistics,
    b: FeatureStatistics,
    *,
    eps: float = 1e-6,
    method: str = "symmetric",
) -> float:
    """The Fréchet distance between two feature statistics.

    Args:
      a: statistics of one dataset.
      b: statistics of the other, from the same feature extractor.
      eps: `sqrtm` only: added to both covariance diagonals when their product is too singular
        for `scipy.linalg.sqrtm` (pytorch-fid's retry). `symmetric` needs no regularisation.
      method: `symmetric` (exact and fast) or `sqrtm` (pytorch-fid's computation, slow).

    Returns:
      The squared Fréchet distance (what is reported as FID), a non-negative float up to round-off.

    Raises:
      StatisticsError: statistics of different widths or with non-finite entries; `symmetric`: a
        covariance that is not symmetric or not positive semidefinite beyond round-off; `sqrtm`:
        a product of covariances whose square root is far from real.
    """
    if method not in METHODS:
        choices = ", ".join(METHODS)
        raise UserError(f"unknown Fréchet distance method {method!r}; choose one of: {choices}")
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
    if method == "symmetric":
        trace_covmean = trace_sqrt_product(a.sigma, b.sigma)
    else:
        trace_covmean = _trace_sqrtm(a, b, eps)
    diff = a.mu - b.mu
    return float(diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2.0 * trace_covmean)


def trace_sqrt_product(sigma_1: np.ndarray, sigma_2: np.ndarray) -> float:
    """Tr sqrt(sigma_1 sigma_2) for two covariances, exactly, via symmetric eigenvalues.

    Args:
      sigma_1: a (D, D) covariance, symmetric positive semidefinite up to round-off.
      sigma_2: another, of the same width.

    Returns:
      The sum of the square roots of the eigenvalues of sigma_1^1/2 sigma_2 sigma_1^1/2.

    Raises:
      StatisticsError: a covariance that is not symmetric or not positive semidefinite beyond
        round-off (see the module docstring).
    """
    f1 = psd_factor(sigma_1, "first")
    f2 = psd_factor(sigma_2, "second")
    cross = f1.T @ f2  # (r1, r2): S1 S2 has the nonzero eigenvalues of its Gram matrix
    gram = cross @ cross.T if cross.shape[0] <= cross.shape[1] else cross.T @ cross
    eigenvalues = np.linalg.eigvalsh(gram)
    return float(np.sqrt(np.clip(eigenvalues, 0.0, None)).sum())  # negatives: round-off


def psd_factor(sigma: np.ndarray, name: str = "first") -> np.ndarray:
    """A (D, r) factor F with F F^T = sigma up to round-off, r = the numerical rank of sigma.

    Pivoted Cholesky (LAPACK `dpstrf`, pivot tolerance D * eps * max(diag)) costs about D r^2, so
    the covariance of a few hundred images factors in a fraction of a full decomposition. When it
    stops early and leaves more than round-off (entries of D * eps * max(diag) each: a slightly
    indefinite null space, e.g. after a float32 file, makes its Schur complement grow), the
    factor comes from `eigh` instead: eigenvalues at most D * eps * max|eigenvalue| are zeros,
    negative ones down to -NEGATIVE_TOLERANCE * max|eigenvalue| are round-off (dropped), lower
    ones mean that sigma is not a covariance.

    Args:
      sigma: a (D, D) covariance.
      name: which covariance this is ("first", "second"), for errors.

    Raises:
      StatisticsError: `sigma` is not symmetric or not positive semidefinite beyond round-off.
    """
    sigma = np.asarray(sigma, np.float64)
    symmetric = sigma + sigma.T  # exactly symmetric: its transpose is a Fortran-order view
    symmetric *= 0.5
    largest = float(np.max(np.abs(symmetric), initial=0.0))
    asymmetry = 2.0 * float(np.max(np.abs(sigma - symmetric), initial=0.0))
    if asymmetry > SYMMETRY_TOLERANCE * largest:
        raise StatisticsError(
            f"the {name} covariance is not symmetric (|sigma - sigma.T| up to {asymmetry:.3g}, "
            f"entries up to {largest:.3g}); it is not a covariance matrix: recompute the statistics"
        )
    dim = sigma.shape[0]
    if largest == 0.0:  # constant features: a zero covariance has an empty factor
        return np.zeros((dim, 0))
    packed, pivots, rank, info = scipy.linalg.lapack.dpstrf(symmetric.T, lower=1)
    if info < 0:
        raise RuntimeError(f"LAPACK dpstrf rejected argument {-info}")
    lower = np.tril(packed[:, :rank])  # sigma[p][:, p] = L L^T + [0, 0; 0, Schur complement]
    factor = np.empty((dim, rank))
    factor[pivots - 1] = lower  # F = P L
    if rank == dim:  # a completed Cholesky factorisation: positive definite
        return factor
    rest, tail = pivots[rank:] - 1, lower[rank:]
    schur = symmetric[np.ix_(rest, rest)] - tail @ tail.T  # what pivoting left unfactored
    if np.linalg.norm(schur) <= dim * dim * _EPS * float(np.max(np.diagonal(symmetric))):
        return factor
    return _eigh_factor(symmetric, name)


def _eigh_factor(sigma: np.ndarray, name: str) -> np.ndarray:
    """`psd_factor` by a symmetric eigendecomposition, for the cases pivoted Cholesky leaves."""
    eigenvalues, vectors = np.linalg.eigh(sigma)
    scale = max(eigenvalues[-1], -eigenvalues[0])
    if eigenvalues[0] < -NEGATIVE_TOLERANCE * scale:
        raise StatisticsError(
            f"the {name} covariance is not positive semidefinite (eigenvalues from "
            f"{eigenvalues[0]:.3g} to {eigenvalues[-1]:.3g}); it is not a covariance matrix: "
            "recompute the statistics"
        )
    keep = eigenvalues > len(eigenvalues) * _EPS * scale
    return vectors[:, keep] * np.sqrt(eigenvalues[keep])


def _trace_sqrtm(a: FeatureStatistics, b: FeatureStatistics, eps: float) -> float:
    """pytorch-fid's Tr sqrtm(sigma_1 sigma_2): SciPy's `sqrtm`, an `eps` retry, real parts."""
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
                f"the feature width {a.dim}, or method='symmetric'"
            )
        covmean = covmean.real
    return float(np.trace(covmean))


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

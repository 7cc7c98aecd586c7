"""Feature statistics of a dataset (mean and covariance, float64) and their `.npz` files.

Files hold `mu` (D,) and `sigma` (D, D), the keys pytorch-fid and the TTUR reference statistics
use, so published statistics load too; vpt_jax adds `num_samples`. Moments are accumulated batch by
batch with Chan et al.'s pairwise update, so a dataset never has to fit in memory and the
covariance does not suffer the cancellation of the sum-of-squares formula.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import zipfile
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from vpt_jax.analysis.fid.features import FeaturesFn, iterate_features
from vpt_jax.errors import UserError
from vpt_jax.models.checkpoint import atomic_write_npz

log = logging.getLogger(__name__)


class StatisticsError(UserError):
    """A statistics file that cannot be read, or statistics that cannot be compared."""


@dataclasses.dataclass(frozen=True, eq=False)  # eq on arrays would be ambiguous
class FeatureStatistics:
    """Mean and covariance of a dataset's features."""

    mu: np.ndarray  # (D,) float64 mean
    sigma: np.ndarray  # (D, D) float64 covariance, unbiased (n - 1), as np.cov
    num_samples: int | None = None  # images the moments came from; None for foreign files

    def __post_init__(self) -> None:
        mu, sigma = np.asarray(self.mu, np.float64), np.asarray(self.sigma, np.float64)
        if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
            raise StatisticsError(
                f"statistics need mu (D,) and sigma (D, D); got {mu.shape} and {sigma.shape}"
            )
        object.__setattr__(self, "mu", mu)
        object.__setattr__(self, "sigma", sigma)

    @property
    def dim(self) -> int:
        return self.mu.size

    @classmethod
    def from_features(cls, features: np.ndarray) -> FeatureStatistics:
        """Statistics of an `(N, D)` feature array (N >= 2)."""
        moments = MomentAccumulator()
        moments.update(features)
        return moments.statistics()


class MomentAccumulator:
    """Running count, mean and centred scatter matrix of feature rows, in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None  # sum of outer products of centred rows

    def update(self, features: np.ndarray) -> None:
        """Adds a `(n, D)` batch of features."""
        x = np.asarray(features, np.float64)
        if x.ndim != 2:
            raise StatisticsError(f"features must be (n, D); got shape {x.shape}")
        if not len(x):
            return
        if self.mean is not None and x.shape[1] != self.mean.size:
            raise StatisticsError(f"feature width changed from {self.mean.size} to {x.shape[1]}")
        mean = x.mean(axis=0)
        centred = x - mean
        scatter = centred.T @ centred
        if self.mean is None:
            self.count, self.mean, self.scatter = len(x), mean, scatter
            return
        # Chan et al.: merge two sets' (count, mean, scatter) exactly.
        total = self.count + len(x)
        delta = mean - self.mean
        self.scatter = (
            self.scatter + scatter + np.outer(delta, delta) * (self.count * len(x) / total)
        )
        self.mean = self.mean + delta * (len(x) / total)
        self.count = total

    def statistics(self) -> FeatureStatistics:
        """The mean and unbiased covariance so far."""
        if self.count < 2:
            raise StatisticsError(
                f"statistics need at least 2 images; got {self.count}: check the dataset is not "
                "empty"
            )
        return FeatureStatistics(self.mean, self.scatter / (self.count - 1), self.count)


def dataset_statistics(
    features_fn: FeaturesFn,
    batches: Iterable[Any],
    *,
    batch_size: int = 50,
    image_key: str = "image",
) -> FeatureStatistics:
    """Feature statistics of a dataset given as an iterable of image batches.

    Args:
      features_fn: an extractor, e.g. `features.inception_features_fn(path)` for FID, or
        `features.vit_features_fn(model, params)` for a ViT's own feature space.
      batches: NHWC image arrays, or mappings with `image_key` and an optional boolean `mask`
        (False rows are padding and are left out), of any batch sizes.
      batch_size: images per extractor call (it compiles once for this size).
      image_key: the images' key in mapping batches.

    Returns:
      The statistics, with `num_samples` the number of images seen.
    """
    moments = MomentAccumulator()
    for features in iterate_features(
        features_fn, batches, batch_size=batch_size, image_key=image_key
    ):
        moments.update(features)
    return moments.statistics()


def save_statistics(path: str | os.PathLike, stats: FeatureStatistics) -> None:
    """Writes `mu`, `sigma` (and `num_samples`) to an `.npz`, atomically."""
    arrays = {"mu": stats.mu, "sigma": stats.sigma}
    if stats.num_samples is not None:
        arrays["num_samples"] = np.asarray(stats.num_samples, np.int64)
    atomic_write_npz(path, arrays)


def load_statistics(path: str | os.PathLike) -> FeatureStatistics:
    """Reads statistics from an `.npz` with `mu` and `sigma` (vpt_jax's or published files).

    Raises:
      StatisticsError: a missing or unreadable file, or one without `mu`/`sigma` of matching shapes.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise StatisticsError(f"statistics file not found: {path}; compute it or check the path")
    try:
        npz = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:
        raise StatisticsError(
            f"{path} is not a readable .npz of statistics ({type(e).__name__}); write it again"
        ) from None
    if not isinstance(npz, np.lib.npyio.NpzFile):
        raise StatisticsError(f"{path} holds a single array; statistics need mu and sigma")
    with npz:
        missing = [k for k in ("mu", "sigma") if k not in npz.files]
        if missing:
            raise StatisticsError(
                f"{path} has no {' and '.join(missing)} (keys: {', '.join(npz.files)}); "
                "statistics files need mu and sigma"
            )
        try:
            count = int(npz["num_samples"]) if "num_samples" in npz.files else None
            stats = FeatureStatistics(npz["mu"], npz["sigma"], count)
        except (zipfile.BadZipFile, ValueError, EOFError, OSError) as e:  # e.g. pickled arrays
            raise StatisticsError(
                f"{path} is not a readable .npz of statistics ({type(e).__name__}); write it again"
            ) from None
    return stats


def cached_statistics(
    path: str | os.PathLike, compute: Callable[[], FeatureStatistics]
) -> FeatureStatistics:
    """Loads statistics from `path` if it exists; otherwise computes, saves and returns them.

    Args:
      path: the cache file; delete it to recompute.
      compute: computes the statistics, e.g. `lambda: dataset_statistics(fn, batches)`.
    """
    if os.path.exists(path):
        log.info("using cached statistics %s", os.fspath(path))
        return load_statistics(path)
    stats = compute()
    save_statistics(path, stats)
    return stats

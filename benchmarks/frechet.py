"""Fréchet distance: the symmetric-eigenvalue method vs pytorch-fid's `sqrtm`, side by side.

    .venv/bin/python benchmarks/frechet.py                  # 768-d and 2048-d (Inception's width)
    .venv/bin/python benchmarks/frechet.py --dims 2048 --rounds 2
    .venv/bin/python benchmarks/frechet.py --smoke          # 32-d and 64-d, one round (tests)

For each width D, three real-looking pairs of feature statistics (pooled-ReLU-like features:
variances 1/k in a basis that the two datasets share up to a tilt, non-negative, different means):
both from 4D images (full rank); 300 images against 4D (one rank-deficient covariance: VTAB-1k
against a reference); 300 against 300 (both rank-deficient). In one process the two methods of
`vpt_jax.analysis.fid.frechet.frechet_distance` alternate for `--rounds` rounds and the fastest
time of each counts (other processes only add time). Printed: seconds of each, their ratio, the
relative difference, and each method's relative error against the exact value from the features
themselves (Tr sqrt(S1 S2) as the nuclear norm of the centred cross product, via QR: no product of
covariances is formed). `eps retry` is the error of what pytorch-fid returns when its retry fires
(the distance with `eps` = 1e-6 added to both diagonals, traces unshifted); `retried` says whether
it fired here.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np
import scipy

from vpt_jax.analysis.fid import frechet
from vpt_jax.analysis.fid.statistics import FeatureStatistics

EPS = 1e-6  # pytorch-fid's default


def realistic_features(n: int, basis: np.ndarray, seed: int, shift: float = 0.0) -> np.ndarray:
    """Pooled-ReLU-like features: variances 1/k in `basis` up to a tilt, non-negative."""
    dim = basis.shape[0]
    rng = np.random.default_rng(seed)
    tilted, _ = np.linalg.qr(basis + rng.normal(size=(dim, dim)) * 0.3 / np.sqrt(dim))
    latent = rng.normal(size=(n, dim)) / np.sqrt(1.0 + np.arange(dim))
    return np.maximum(latent @ tilted.T + 0.5, 0.0) + shift


def exact_trace_sqrt(x1: np.ndarray, x2: np.ndarray) -> float:
    """Tr sqrt(S1 S2) from the features: the nuclear norm of X1c X2c^T / sqrt((n1 - 1)(n2 - 1))."""
    r1 = np.linalg.qr(x1 - x1.mean(0), mode="r")  # X1c = Q1 R1, so X1c X2c^T ~ R1 R2^T
    r2 = np.linalg.qr(x2 - x2.mean(0), mode="r")
    return float(np.linalg.svd(r1 @ r2.T, compute_uv=False).sum()) / np.sqrt(
        (len(x1) - 1) * (len(x2) - 1)
    )


class _RetryWatch(logging.Handler):
    """Notices the sqrtm method's 'singular product' warning, i.e. that the eps retry fired."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.fired = False

    def emit(self, record: logging.LogRecord) -> None:
        self.fired |= "singular product" in record.getMessage()


def bench_pair(label: str, n1: int, n2: int, basis: np.ndarray, rounds: int) -> dict:
    x1 = realistic_features(n1, basis, seed=1)
    x2 = realistic_features(n2, basis, seed=2, shift=0.05)
    a, b = FeatureStatistics.from_features(x1), FeatureStatistics.from_features(x2)
    diff = a.mu - b.mu
    traces = diff @ diff + np.trace(a.sigma) + np.trace(b.sigma)
    exact = traces - 2.0 * exact_trace_sqrt(x1, x2)
    offset = np.eye(a.dim) * EPS
    retried_value = traces - 2.0 * frechet.trace_sqrt_product(a.sigma + offset, b.sigma + offset)
    watch = _RetryWatch()
    logging.getLogger(frechet.__name__).addHandler(watch)
    seconds = {method: [] for method in frechet.METHODS}
    values = {}
    try:
        for _ in range(rounds):
            for method in frechet.METHODS:
                start = time.perf_counter()
                values[method] = frechet.frechet_distance(a, b, eps=EPS, method=method)
                seconds[method].append(time.perf_counter() - start)
    finally:
        logging.getLogger(frechet.__name__).removeHandler(watch)
    fast, ref = values["symmetric"], values["sqrtm"]
    return dict(
        dim=a.dim,
        pair=label,
        samples=(n1, n2),
        ranks=tuple(frechet.psd_factor(s).shape[1] for s in (a.sigma, b.sigma)),
        fid=exact,
        seconds={method: min(times) for method, times in seconds.items()},
        all_seconds=seconds,
        ratio=min(seconds["sqrtm"]) / min(seconds["symmetric"]),
        rel_diff=abs(fast - ref) / abs(ref),
        sqrtm_err=(ref - exact) / exact,
        symmetric_err=(fast - exact) / exact,
        eps_retry_err=(retried_value - exact) / exact,
        retried=watch.fired,
    )


def pairs_for(dim: int, smoke: bool) -> list[tuple[str, int, int]]:
    few = dim // 4 if smoke else 300
    return [
        ("full rank", 4 * dim, 4 * dim),
        (f"{few} vs {4 * dim}", few, 4 * dim),
        (f"{few} vs {few}", few, few),
    ]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dims", default="768,2048", help="comma-separated feature widths")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the two methods")
    parser.add_argument("--smoke", action="store_true", help="32-d and 64-d, one round")
    parser.add_argument("--json", help="also write every row (all round times) to this file")
    args = parser.parse_args(argv)
    dims = [32, 64] if args.smoke else [int(d) for d in args.dims.split(",")]
    rounds = 1 if args.smoke else args.rounds
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, load {load}; "
        f"numpy {np.__version__}, scipy {scipy.__version__}; fastest of {rounds} round(s)"
    )
    header = (
        f"{'dim':>5} {'pair':>14} {'ranks':>11} {'FID':>8} {'sqrtm s':>8} {'symm. s':>8} "
        f"{'ratio':>6} {'rel diff':>8} {'sqrtm err':>9} {'symm. err':>9} {'eps retry':>9} retried"
    )
    print(header)
    rows = []
    for dim in dims:
        basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
        for label, n1, n2 in pairs_for(dim, args.smoke):
            row = bench_pair(label, n1, n2, basis, rounds)
            rows.append(row)
            ranks = "{}/{}".format(*row["ranks"])
            print(
                f"{dim:>5} {label:>14} {ranks:>11} {row['fid']:8.4f} "
                f"{row['seconds']['sqrtm']:8.3f} {row['seconds']['symmetric']:8.3f} "
                f"{row['ratio']:6.1f} {row['rel_diff']:8.1e} {row['sqrtm_err']:+9.1e} "
                f"{row['symmetric_err']:+9.1e} {row['eps_retry_err']:+9.1e} {row['retried']}",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()

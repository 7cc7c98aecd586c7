"""Fréchet distance, feature statistics and their files, and batched feature extraction."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg

from vpt_jax.analysis.fid import frechet
from vpt_jax.analysis.fid.features import (
    extract_features,
    fixed_size_batches,
    vit_features_fn,
    vit_inputs,
)
from vpt_jax.analysis.fid.frechet import dataset_frechet_distance, frechet_distance
from vpt_jax.analysis.fid.statistics import (
    FeatureStatistics,
    StatisticsError,
    cached_statistics,
    dataset_statistics,
    load_statistics,
    save_statistics,
)
from vpt_jax.data.preprocess import check_images
from vpt_jax.errors import UserError
from vpt_jax.models.vit import VisionTransformer, init_params


def random_statistics(n: int, dim: int, seed: int, scale: float = 1.0, shift: float = 0.0):
    rng = np.random.default_rng(seed)
    mixing = rng.normal(size=(dim, dim)) / np.sqrt(dim)  # correlated features
    features = rng.normal(size=(n, dim)) @ mixing * scale + shift
    return FeatureStatistics.from_features(features)


def realistic_features(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """Pooled-ReLU-like features: variances 1/k in a basis shared up to a tilt, non-negative."""
    basis, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(dim, dim)))
    rng = np.random.default_rng(seed)
    tilted, _ = np.linalg.qr(basis + rng.normal(size=(dim, dim)) * 0.3 / np.sqrt(dim))
    latent = rng.normal(size=(n, dim)) / np.sqrt(1.0 + np.arange(dim))
    return np.maximum(latent @ tilted.T + 0.5, 0.0) + shift


def exact_distance(x1: np.ndarray, x2: np.ndarray) -> float:
    """From the features: Tr sqrt(S1 S2) = nuclear norm of X1c X2c^T / sqrt((n1 - 1)(n2 - 1)).

    No product of covariances is formed, so this is exact to ~1e-15 even where they are singular.
    """
    c1, c2 = x1 - x1.mean(0), x2 - x2.mean(0)
    trace_covmean = np.linalg.svd(c1 @ c2.T, compute_uv=False).sum()
    trace_covmean /= np.sqrt((len(x1) - 1) * (len(x2) - 1))
    a, b = FeatureStatistics.from_features(x1), FeatureStatistics.from_features(x2)
    diff = a.mu - b.mu
    return diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * trace_covmean


def reference_distance(a: FeatureStatistics, b: FeatureStatistics) -> float:
    """Independent float64 formula: Tr sqrt(S1 S2) = sum sqrt(eig(S1^1/2 S2 S1^1/2)), all symmetric."""
    w, v = np.linalg.eigh(a.sigma)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    eig = np.clip(np.linalg.eigvalsh(root @ b.sigma @ root), 0, None)
    diff = a.mu - b.mu
    return diff @ diff + np.trace(a.sigma) + np.trace(b.sigma) - 2 * np.sqrt(eig).sum()


# (samples of each, width): full rank; one rank-deficient covariance (fewer samples than
# features) against a full-rank one, both ways; two rank-deficient ones.
@pytest.mark.parametrize(
    "n1, n2, dim", [(600, 400, 128), (40, 600, 128), (600, 40, 128), (30, 20, 128), (60, 90, 256)]
)
def test_symmetric_method_is_exact_and_matches_pytorch_fids_sqrtm(n1, n2, dim):
    x1, x2 = realistic_features(n1, dim, seed=1), realistic_features(n2, dim, seed=2, shift=0.05)
    a, b = FeatureStatistics.from_features(x1), FeatureStatistics.from_features(x2)
    exact = exact_distance(x1, x2)
    assert exact > 0.5
    fast = frechet_distance(a, b)
    assert fast == pytest.approx(exact, rel=1e-10)
    assert frechet_distance(b, a) == pytest.approx(fast, rel=1e-12)
    # pytorch-fid's computation: exact at full rank; with singular covariances it also sums
    # square roots of round-off eigenvalues, which costs it up to ~3e-7 here.
    assert frechet_distance(a, b, method="sqrtm") == pytest.approx(fast, rel=1e-6)


@pytest.mark.parametrize("n, dim", [(400, 48), (20, 64), (6, 128)])
def test_distance_matches_the_square_root_formula(n, dim):
    a = random_statistics(n, dim, seed=0)
    b = random_statistics(n, dim, seed=1, scale=1.3, shift=0.2)
    expected = reference_distance(a, b)
    assert expected > 1.0
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(b, a, method="sqrtm") == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("n, dim", [(600, 256), (6, 128)])
def test_distance_of_identical_statistics_is_zero(n, dim):
    a = random_statistics(n, dim, seed=2)
    assert abs(frechet_distance(a, a)) <= 1e-12 * np.trace(a.sigma)
    # sqrtm: rank-deficient covariances leave round-off eigenvalues (~1e-16) whose square roots
    # (~1e-8) add up, in pytorch-fid too: relative to the total variance still ~1e-7.
    assert abs(frechet_distance(a, a, method="sqrtm")) <= 1e-6 * max(1.0, np.trace(a.sigma))


def test_distance_matches_pytorch_fid():
    pytest.importorskip("tests.torch_reference")
    from pytorch_fid.fid_score import calculate_frechet_distance

    x1, x2 = realistic_features(30, 64, seed=3), realistic_features(30, 64, seed=4, shift=0.5)
    a, b = FeatureStatistics.from_features(x1), FeatureStatistics.from_features(x2)
    try:
        expected = calculate_frechet_distance(a.mu, a.sigma, b.mu, b.sigma)
    except TypeError:  # pytorch-fid 0.3 passes sqrtm(disp=False), which SciPy 1.18 removed
        pytest.skip("pytorch-fid's calculate_frechet_distance does not run with this SciPy")
    assert frechet_distance(a, b, method="sqrtm") == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-6)
    assert frechet_distance(a, b) == pytest.approx(exact_distance(x1, x2), rel=1e-10)


def test_symmetric_method_is_scale_invariant():
    # Its tolerances are relative; pytorch-fid's (1e-3 on imaginary parts) is absolute and rejects
    # this rank-deficient pair once features are ~1000x larger.
    x1, x2 = realistic_features(40, 96, seed=9), realistic_features(500, 96, seed=10, shift=0.1)
    x1[:, :5] = 0.3  # dead features, in both
    x2[:, 3:9] = 0.0
    for scale in (1e-6, 1e4):
        a = FeatureStatistics.from_features(x1 * scale)
        b = FeatureStatistics.from_features(x2 * scale)
        assert frechet_distance(a, b) == pytest.approx(exact_distance(x1, x2) * scale**2, rel=1e-10)


def test_psd_factor_reveals_the_rank():
    for n, rank in ((20, 19), (200, 64)):
        sigma = random_statistics(n, 64, seed=5).sigma
        factor = frechet.psd_factor(sigma)
        assert factor.shape == (64, rank)
        np.testing.assert_allclose(
            factor @ factor.T, sigma, rtol=0, atol=1e-12 * np.abs(sigma).max()
        )


def test_float32_rank_deficient_statistics_take_the_eigh_path(monkeypatch):
    # Rounding a singular covariance to float32 (as published .npz files store them) leaves an
    # indefinite null space (eigenvalues ~ -1e-8 relative) that pivoted Cholesky cannot factor.
    x1, x2 = realistic_features(30, 128, seed=6), realistic_features(400, 128, seed=7)
    a, b = FeatureStatistics.from_features(x1), FeatureStatistics.from_features(x2)
    rounded = FeatureStatistics(a.mu.astype(np.float32), a.sigma.astype(np.float32))
    assert np.linalg.eigvalsh(rounded.sigma)[0] < -1e-10
    calls = []
    eigh_factor = frechet._eigh_factor
    monkeypatch.setattr(
        frechet, "_eigh_factor", lambda *args: calls.append(1) or eigh_factor(*args)
    )
    factor = frechet.psd_factor(rounded.sigma)
    np.testing.assert_allclose(factor @ factor.T, rounded.sigma, rtol=0, atol=1e-7)
    fast = frechet_distance(rounded, b)
    assert calls == [1, 1]  # the float64 covariance b factors by pivoted Cholesky alone
    assert fast == pytest.approx(frechet_distance(rounded, b, method="sqrtm"), rel=1e-5)
    assert fast == pytest.approx(exact_distance(x1, x2), rel=1e-3)  # float32 costs both ~1e-4


def test_singular_product_retries_with_eps(monkeypatch):
    a = random_statistics(50, 8, seed=5)
    b = random_statistics(50, 8, seed=6, shift=1.0)
    calls = []
    real_sqrtm = scipy.linalg.sqrtm

    def sqrtm(m):  # the first call fails as it does for a singular product
        calls.append(m)
        return np.full_like(m, np.inf) if len(calls) == 1 else real_sqrtm(m)

    monkeypatch.setattr(frechet.scipy.linalg, "sqrtm", sqrtm)
    distance = frechet_distance(a, b, eps=1e-3, method="sqrtm")
    offset = np.eye(8) * 1e-3
    np.testing.assert_allclose(calls[1], (a.sigma + offset) @ (b.sigma + offset))
    shifted_a = FeatureStatistics(a.mu, a.sigma + offset)
    shifted_b = FeatureStatistics(b.mu, b.sigma + offset)
    # Same square root as with shifted covariances, but the traces of the unshifted ones.
    expected = reference_distance(shifted_a, shifted_b) - 2 * 8 * 1e-3
    assert distance == pytest.approx(expected, rel=1e-9)
    assert len(calls) == 2
    frechet_distance(a, b, eps=1e-3)  # the symmetric method never calls sqrtm
    assert len(calls) == 2


@pytest.mark.parametrize("method", frechet.METHODS)
def test_small_negative_eigenvalues_are_round_off(method):
    # sqrtm(diag(1, -1e-8)) has imaginary part 1e-4 on the diagonal: round-off, accepted; the
    # symmetric method drops the eigenvalue -1e-8 (1e-8 of the largest) for the same answer.
    a = FeatureStatistics(np.zeros(2), np.eye(2))
    b = FeatureStatistics(np.zeros(2), np.diag([1.0, -1e-8]))
    assert frechet_distance(a, b, method=method) == pytest.approx(1.0 - 1e-8, abs=1e-12)
    assert frechet_distance(b, a, method=method) == pytest.approx(1.0 - 1e-8, abs=1e-12)


def test_covariances_that_are_not_psd_raise():
    a = FeatureStatistics(np.zeros(2), np.eye(2), num_samples=3)
    b = FeatureStatistics(np.zeros(2), np.diag([1.0, -1.0]), num_samples=3)
    with pytest.raises(StatisticsError, match=r"imaginary parts up to 1 .*from 3 and 3 images"):
        frechet_distance(a, b, method="sqrtm")
    with pytest.raises(
        StatisticsError,
        match=r"^the second covariance is not positive semidefinite \(eigenvalues from -1 to 1\)",
    ):
        frechet_distance(a, b)
    with pytest.raises(StatisticsError, match="^the first covariance is not positive semidef"):
        frechet_distance(b, a)


def test_covariances_that_are_not_symmetric_raise():
    a = FeatureStatistics(np.zeros(3), np.eye(3))
    skewed = np.eye(3)
    skewed[0, 2] = 0.5
    with pytest.raises(StatisticsError, match=r"second covariance is not symmetric \(\|sigma"):
        frechet_distance(a, FeatureStatistics(np.zeros(3), skewed))
    nearly = np.eye(3) + 1e-9 * (skewed - np.eye(3))  # round-off: symmetrised
    assert frechet_distance(FeatureStatistics(np.zeros(3), nearly), a) == pytest.approx(
        0, abs=1e-15
    )


@pytest.mark.filterwarnings("ignore:Matrix is singular")  # sqrtm's, as in pytorch-fid
def test_zero_covariance_of_constant_features():
    a = FeatureStatistics(np.ones(4), np.zeros((4, 4)))
    b = random_statistics(20, 4, seed=8)
    expected = np.sum((1 - b.mu) ** 2) + np.trace(b.sigma)
    for method in frechet.METHODS:
        assert frechet_distance(a, b, method=method) == pytest.approx(expected, rel=1e-12)


def test_distance_rejects_mismatched_or_broken_statistics():
    a = random_statistics(20, 4, seed=7)
    with pytest.raises(StatisticsError, match=r"different feature widths \(4 vs 5\)"):
        frechet_distance(a, random_statistics(20, 5, seed=7))
    broken = FeatureStatistics(np.array([np.nan, 0, 0, 0]), np.eye(4))
    with pytest.raises(StatisticsError, match="second statistics hold NaN"):
        frechet_distance(a, broken)
    with pytest.raises(StatisticsError, match=r"mu \(D,\) and sigma \(D, D\)"):
        FeatureStatistics(np.zeros(3), np.eye(4))
    with pytest.raises(
        UserError, match=r"unknown Fréchet distance method .fast.; choose one of: symmetric, sqrtm$"
    ):
        frechet_distance(a, a, method="fast")


def test_accumulated_moments_match_numpy():
    rng = np.random.default_rng(8)
    features = rng.normal(size=(97, 12)) * 0.5 + 1e4  # a large offset tests numerical stability
    stats = FeatureStatistics.from_features(features)
    np.testing.assert_allclose(stats.mu, features.mean(0), rtol=1e-14)
    np.testing.assert_allclose(stats.sigma, np.cov(features, rowvar=False), rtol=1e-9, atol=1e-12)
    assert stats.num_samples == 97

    def batches_of(sizes):
        start = 0
        for size in sizes:
            yield features[start : start + size].reshape(size, 2, 2, 3).astype(np.float64)
            start += size

    flatten = lambda images: images.reshape(len(images), -1)
    for batch_size, sizes in ((50, [97]), (7, [1, 30, 2, 64]), (97, [40, 57])):
        chunked = dataset_statistics(flatten, batches_of(sizes), batch_size=batch_size)
        assert chunked.num_samples == 97
        np.testing.assert_allclose(chunked.mu, stats.mu, rtol=1e-14)
        np.testing.assert_allclose(chunked.sigma, stats.sigma, rtol=1e-9, atol=1e-12)


def test_statistics_need_two_samples():
    with pytest.raises(StatisticsError, match="at least 2 images; got 1"):
        FeatureStatistics.from_features(np.ones((1, 3)))


def test_statistics_file_round_trip(tmp_path):
    stats = random_statistics(30, 16, seed=9)
    path = tmp_path / "sub" / "stats.npz"
    save_statistics(path, stats)
    loaded = load_statistics(path)
    np.testing.assert_array_equal(loaded.mu, stats.mu)
    np.testing.assert_array_equal(loaded.sigma, stats.sigma)
    assert loaded.mu.dtype == np.float64 and loaded.num_samples == 30
    assert [p.name for p in path.parent.iterdir()] == ["stats.npz"]  # no temporary files left


def test_published_statistics_files_load(tmp_path):
    # pytorch-fid / TTUR reference files: float32 mu and sigma, no sample count, maybe other keys.
    path = tmp_path / "fid_stats_cifar10_train.npz"
    np.savez(path, mu=np.ones(4, np.float32), sigma=np.eye(4, dtype=np.float32), extra=np.zeros(2))
    loaded = load_statistics(path)
    assert loaded.num_samples is None and loaded.sigma.dtype == np.float64
    assert frechet_distance(loaded, loaded) == pytest.approx(0.0, abs=1e-12)


def test_bad_statistics_files_raise(tmp_path):
    with pytest.raises(StatisticsError, match="statistics file not found: .*missing.npz"):
        load_statistics(tmp_path / "missing.npz")
    np.savez(tmp_path / "no_sigma.npz", mu=np.zeros(3), cov=np.eye(3))
    with pytest.raises(StatisticsError, match=r"has no sigma \(keys: mu, cov\)"):
        load_statistics(tmp_path / "no_sigma.npz")
    np.savez(tmp_path / "empty.npz")
    with pytest.raises(StatisticsError, match="has no mu and sigma"):
        load_statistics(tmp_path / "empty.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(StatisticsError, match=r"got \(3,\) and \(4, 4\)"):
        load_statistics(tmp_path / "shapes.npz")
    np.save(tmp_path / "single.npy", np.zeros(3))
    with pytest.raises(StatisticsError, match="holds a single array"):
        load_statistics(tmp_path / "single.npy")
    (tmp_path / "text.npz").write_text("not an npz")
    with pytest.raises(StatisticsError, match="is not a readable .npz of statistics"):
        load_statistics(tmp_path / "text.npz")
    np.savez(tmp_path / "pickled.npz", mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(1))
    with pytest.raises(StatisticsError, match="is not a readable .npz of statistics"):
        load_statistics(tmp_path / "pickled.npz")


def test_cached_statistics_compute_once(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return random_statistics(10, 3, seed=10)

    path = tmp_path / "cache.npz"
    first = cached_statistics(path, compute)
    second = cached_statistics(path, compute)
    assert len(calls) == 1
    np.testing.assert_array_equal(first.sigma, second.sigma)


def test_fixed_size_batches_pad_only_the_end_and_honour_masks():
    images = np.arange(7 * 2 * 2 * 3, dtype=np.uint8).reshape(7, 2, 2, 3)
    masked = {
        "image": np.concatenate([images[5:], np.zeros_like(images[:2])]),
        "mask": [1, 1, 0, 0],
    }
    batches = [images[:2], {"image": images[2:5]}, masked]
    out = list(fixed_size_batches(batches, 3))
    assert [valid for _, valid in out] == [3, 3, 1]
    assert all(chunk.shape == (3, 2, 2, 3) for chunk, _ in out)
    np.testing.assert_array_equal(np.concatenate([c[:v] for c, v in out]), images)
    assert not out[-1][0][1:].any()  # zero padding


def test_fixed_size_batches_errors():
    with pytest.raises(UserError, match="batch has no 'image' entry"):
        list(fixed_size_batches([{"pixels": np.zeros((1, 2, 2, 3))}], 2))
    mixed = [np.zeros((1, 2, 2, 3)), np.zeros((1, 4, 4, 3))]
    with pytest.raises(UserError, match="batches mix image shapes"):
        list(fixed_size_batches(mixed, 2))
    with pytest.raises(UserError, match="batch_size must be positive"):
        list(fixed_size_batches([], 0))


def test_extraction_compiles_once_and_drops_padding():
    import jax

    traces = []

    @jax.jit
    def features_fn(images):
        traces.append(images.shape)
        return images.reshape(images.shape[0], -1)[:, :5] * 2.0

    images = np.random.default_rng(11).random((7, 4, 4, 3)).astype(np.float32)
    features = extract_features(features_fn, images, batch_size=3)
    assert traces == [(3, 4, 4, 3)]
    np.testing.assert_allclose(features, images.reshape(7, -1)[:, :5] * 2.0)
    with pytest.raises(
        UserError, match=r"must return \(batch, dim\) features; got shape \(3, 4, 3\)"
    ):
        extract_features(lambda x: x[:, 0], images, batch_size=3)


def test_check_images_explains_wrong_inputs():
    rng = np.random.default_rng(12)
    with pytest.raises(UserError, match=r"in \[-1, 1\], pass \(images \+ 1\) / 2"):
        check_images(rng.uniform(-1, 1, (2, 8, 8, 3)).astype(np.float32))
    with pytest.raises(UserError, match="divide 0..255 values by 255 or pass uint8"):
        check_images(rng.uniform(0, 255, (2, 8, 8, 3)).astype(np.float32))
    with pytest.raises(UserError, match=r"NHWC with 3 channels; got shape \(2, 3, 8, 8\) \(NCHW"):
        check_images(np.zeros((2, 3, 8, 8), np.uint8))
    check_images(rng.uniform(-1, 1, (2, 8, 8, 3)), unit_range=False)  # models fed [-1, 1]


def test_vit_feature_distance(tiny_config):
    model = VisionTransformer(tiny_config, num_classes=None)
    params = init_params(model, 0)
    fn = vit_features_fn(model, params)
    rng = np.random.default_rng(13)
    images = rng.integers(0, 256, (10, 20, 20, 3), dtype=np.uint8)  # resized to 16x16 inside
    _, out = model.apply({"params": params}, vit_inputs(images, tiny_config.image_size))
    # Batches of 4 against one of 10: XLA:CPU blocks the matmuls by batch size, which moves
    # float32 features of size ~1 by up to ~1e-6 on some CPUs (measured: 1.19e-6).
    np.testing.assert_allclose(
        extract_features(fn, images, batch_size=4), out["pre_logits"], rtol=1e-5, atol=5e-6
    )
    same = dataset_frechet_distance(fn, [images[:6], images[6:]], [images], batch_size=4)
    other = dataset_frechet_distance(fn, [images], [255 - images], batch_size=4)
    assert abs(same) < 1e-6 < other
    with pytest.raises(UserError, match="no output 'tokens'"):
        extract_features(vit_features_fn(model, params, feature="tokens"), images, batch_size=4)

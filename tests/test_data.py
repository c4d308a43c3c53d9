"""Tests of sdeflow.data: toy generators and preprocessing, the CIFAR-10 loader, the digits."""

from __future__ import annotations

import io
import math
import os
import pickle
import tarfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdeflow import bits_per_dim
from sdeflow.data import (
    CIFAR10,
    TOY_DATASETS,
    Digits,
    ToyPreprocessor,
    load_cifar10,
    load_toy,
    sample_toy,
    write_tiny_cifar10_archive,
)
from sdeflow.data import cifar10 as cifar10_module
from sdeflow.data.toy import _OLYMPIC_CENTERS, _SIERPINSKI_LEVEL, _tree_segments

N = 2000

# ----------------------------------------------------------------------------- toy generators


@pytest.mark.parametrize("name", TOY_DATASETS)
def test_toy_shape_dtype_and_determinism(name):
    x = sample_toy(name, 101, seed=3)
    assert x.shape == (101, 2) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert torch.equal(x, sample_toy(name, 101, seed=3))
    assert not torch.equal(x, sample_toy(name, 101, seed=4))
    g = torch.Generator().manual_seed(3)
    assert torch.equal(x, sample_toy(name, 101, generator=g))
    assert sample_toy(name, 7, seed=0, dtype=torch.float64).dtype == torch.float64
    assert sample_toy(name, 0, seed=0).shape == (0, 2)


def test_toy_argument_errors():
    with pytest.raises(ValueError, match="name must be one of checkerboard, 2spirals"):
        sample_toy("spiral", 10)
    with pytest.raises(ValueError, match="seed and generator"):
        sample_toy("moons", 10, seed=0, generator=torch.Generator())
    with pytest.raises(ValueError, match="noise must be None for 'checkerboard'"):
        sample_toy("checkerboard", 10, noise=0.1)
    with pytest.raises(ValueError, match="n must be non-negative"):
        sample_toy("moons", -1)
    with pytest.raises(TypeError, match="n must be an int"):
        sample_toy("moons", 2.5)
    with pytest.raises(TypeError, match="dtype"):
        sample_toy("moons", 3, dtype=torch.int64)


def test_checkerboard_in_black_squares():
    x = sample_toy("checkerboard", N, seed=0, dtype=torch.float64)
    assert x.abs().max() <= 4
    cells = torch.floor(x / 2)
    assert torch.all(cells.sum(1) % 2 == 0)
    # all 8 black squares are populated, evenly
    counts = torch.unique(cells, dim=0, return_counts=True)[1]
    assert len(counts) == 8 and counts.min() > N / 8 * 0.7


def test_sierpinski_avoids_removed_squares():
    x = sample_toy("sierpinski", N, seed=0, dtype=torch.float64)
    u = (x + 1) / 2
    assert u.min() >= 0 and u.max() < 1
    for level in range(1, _SIERPINSKI_LEVEL + 1):
        digits = torch.floor(u * 3**level) % 3
        assert not torch.any((digits == 1).all(dim=1)), level


def _distance_to_segments(x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
    a, b = seg[:, :2], seg[:, 2:4]
    ab = b - a
    s = ((x[:, None] - a) * ab).sum(-1) / ab.square().sum(-1)
    closest = a + s.clamp(0, 1)[..., None] * ab
    return (x[:, None] - closest).norm(dim=-1)


def test_tree_points_lie_on_branches():
    x = sample_toy("tree", N, seed=0, dtype=torch.float64)
    seg = _tree_segments()
    inside = _distance_to_segments(x, seg) <= seg[:, 4] / 2 + 1e-12
    assert inside.any(dim=1).all()
    assert len(seg) == 2**8 - 1


def test_olympic_rings():
    x = sample_toy("olympic", N, seed=0, dtype=torch.float64, noise=0.0)
    centers = torch.tensor(_OLYMPIC_CENTERS, dtype=torch.float64)
    distances = (x[:, None] - centers).norm(dim=-1)
    assert (distances - 1).abs().min(dim=1).values.max() < 1e-12
    noisy = sample_toy("olympic", N, seed=0, dtype=torch.float64)
    distances = (noisy[:, None] - centers).norm(dim=-1)
    assert (distances - 1).abs().min(dim=1).values.max() < 0.05


def test_circles_moons_swissroll_eight_gaussians_exact_without_noise():
    r = sample_toy("circles", N, seed=0, dtype=torch.float64, noise=0.0).norm(dim=1)
    assert torch.all(((r - 1).abs() < 1e-12) | ((r - 0.5).abs() < 1e-12))

    m = sample_toy("moons", N, seed=0, dtype=torch.float64, noise=0.0)
    outer = (m.norm(dim=1) - 1).abs() < 1e-12
    inner = ((m - torch.tensor([1.0, 0.5], dtype=torch.float64)).norm(dim=1) - 1).abs() < 1e-12
    assert torch.all(outer | inner)
    assert torch.all(m[outer, 1] >= 0) and torch.all(m[inner & ~outer, 1] <= 0.5)

    s = sample_toy("swissroll", N, seed=0, dtype=torch.float64, noise=0.0)
    t = s.norm(dim=1)
    assert t.min() >= 1.5 * math.pi - 1e-9 and t.max() <= 4.5 * math.pi + 1e-9
    curve = torch.stack([t * t.cos(), t * t.sin()], dim=1)
    torch.testing.assert_close(s, curve)

    g = sample_toy("8gaussians", N, seed=0, dtype=torch.float64, noise=0.0) * 1.414
    angles = torch.atan2(g[:, 1], g[:, 0]) / (math.pi / 4)
    torch.testing.assert_close(g.norm(dim=1), torch.full((N,), 4.0, dtype=torch.float64))
    torch.testing.assert_close(angles, angles.round())


def test_two_spirals_and_pinwheel_are_point_symmetric_in_law():
    for name in ("2spirals", "pinwheel"):
        x = sample_toy(name, 4 * N, seed=0, dtype=torch.float64)
        assert x.mean(0).abs().max() < 0.15, name
        assert x.abs().max() < 6, name


# ----------------------------------------------------------------------------- preprocessing


def test_preprocessor_properties():
    x = sample_toy("swissroll", N, seed=1, dtype=torch.float64)
    pre = ToyPreprocessor.fit(x)
    torch.testing.assert_close((x * pre.scale).abs().max(), torch.tensor(0.85).double())
    y = pre(x)
    torch.testing.assert_close(y.mean(0), torch.zeros(2).double(), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.std(0, unbiased=False), torch.ones(2).double())
    torch.testing.assert_close(pre.inverse(y), x)
    assert pre.forward(x).equal(y)
    assert pre.log_abs_det_jacobian(x).shape == (N,)


@settings(max_examples=20, deadline=None)
@given(
    st.lists(st.floats(0.1, 10.0), min_size=2, max_size=2),
    st.lists(st.floats(-5.0, 5.0), min_size=2, max_size=2),
    st.integers(0, 2**16),
)
def test_preprocessor_log_abs_det_against_jacobian(scales, shifts, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(50, 2, generator=g, dtype=torch.float64)
    x = x * torch.tensor(scales).double() + torch.tensor(shifts).double()
    pre = ToyPreprocessor.fit(x)
    jac = torch.func.jacrev(pre.forward)(x[0])
    torch.testing.assert_close(pre.log_abs_det, torch.linalg.slogdet(jac).logabsdet)
    torch.testing.assert_close(pre.inverse(pre(x)), x)


def test_preprocessor_change_of_variables():
    # y = T(x) ~ N(0, I) makes x Gaussian: log p_x(x) = log p_y(T(x)) + log|det dT/dx|
    x = sample_toy("moons", 500, seed=2, dtype=torch.float64)
    pre = ToyPreprocessor.fit(x)
    a = pre.scale / pre.std
    p_x = torch.distributions.MultivariateNormal(pre.mean / pre.scale, torch.diag(1 / a.square()))
    p_y = torch.distributions.MultivariateNormal(torch.zeros(2).double(), torch.eye(2).double())
    torch.testing.assert_close(p_x.log_prob(x), p_y.log_prob(pre(x)) + pre.log_abs_det)


def test_preprocessor_state_dict_and_pickle_round_trip():
    pre = ToyPreprocessor.fit(sample_toy("8gaussians", 300, seed=0, dtype=torch.float64))
    x = sample_toy("8gaussians", 10, seed=1, dtype=torch.float64)
    clone = ToyPreprocessor.from_state_dict(pre.state_dict())
    assert clone(x).equal(pre(x))
    assert pickle.loads(pickle.dumps(pre))(x).equal(pre(x))
    buffer = io.BytesIO()
    torch.save(pre.state_dict(), buffer)
    buffer.seek(0)
    loaded = ToyPreprocessor.from_state_dict(torch.load(buffer, weights_only=True))
    assert loaded(x).equal(pre(x))
    assert pre.to(torch.float32).mean.dtype == torch.float32
    with pytest.raises(ValueError, match="missing"):
        ToyPreprocessor.from_state_dict({"scale": pre.scale})
    with pytest.raises(ValueError, match="x must be a tensor of shape"):
        ToyPreprocessor.fit(torch.zeros(5))
    with pytest.raises(ValueError, match="x must vary"):
        ToyPreprocessor.fit(torch.ones(5, 2))


def test_load_toy():
    train, test, pre = load_toy("checkerboard", 500, 200, seed=5)
    assert train.shape == (500, 2) and test.shape == (200, 2) and train.dtype == torch.float32
    torch.testing.assert_close(train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(train.std(0, unbiased=False), torch.ones(2), atol=1e-5, rtol=0)
    raw_train = pre.inverse(train.double())
    assert torch.all(torch.floor(raw_train / 2 + 1e-6).sum(1) % 2 == 0)  # still checkerboard
    again = load_toy("checkerboard", 500, 200, seed=5)
    assert torch.equal(again[0], train) and torch.equal(again[1], test)
    assert not torch.equal(load_toy("checkerboard", 500, 200, seed=6)[0], train)
    # the test sample is a different draw, not a slice of the training stream
    longer = load_toy("checkerboard", 600, 200, seed=5)
    raw_test = pre.inverse(test.double())
    torch.testing.assert_close(longer[2].inverse(longer[1].double()), raw_test, atol=1e-5, rtol=0)


# ----------------------------------------------------------------------------- CIFAR-10


@pytest.fixture
def tiny_dir(tmp_path):
    write_tiny_cifar10_archive(tmp_path, n_train=12, n_test=4, seed=0)
    return tmp_path


def test_tiny_archive_is_in_the_real_format(tiny_dir):
    archive = tiny_dir / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "r:gz") as tar:
        names = set(tar.getnames())
        expected = {f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6)}
        expected |= {"cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"}
        assert expected <= names
        raw = tar.extractfile("cifar-10-batches-py/data_batch_1").read()
        meta = pickle.load(tar.extractfile("cifar-10-batches-py/batches.meta"), encoding="bytes")
    assert raw[:2] == b"\x80\x02"  # protocol 2, like the original
    batch = pickle.loads(raw, encoding="bytes")
    assert batch[b"data"].dtype == np.uint8 and batch[b"data"].shape == (3, 3072)
    assert len(batch[b"labels"]) == 3
    assert meta[b"label_names"][0] == b"airplane"


def test_cifar_layout_is_row_major_chw(tmp_path):
    def image_fn(rng, n):
        return np.tile((np.arange(3072) % 251).astype(np.uint8), (n, 1))

    write_tiny_cifar10_archive(tmp_path, n_train=5, n_test=1, image_fn=image_fn)
    data, targets = load_cifar10(tmp_path, train=True, verify=False)
    assert data.shape == (5, 3, 32, 32) and data.dtype == torch.uint8
    assert targets.dtype == torch.int64 and targets.shape == (5,)
    c, h, w = 2, 5, 7
    assert int(data[0, c, h, w]) == (c * 1024 + h * 32 + w) % 251


def test_cifar_dataset_values_and_dequantization(tiny_dir):
    train = CIFAR10(tiny_dir, train=True, verify=False, flip=False)
    test = CIFAR10(tiny_dir, train=False, verify=False)
    assert len(train) == 12 and len(test) == 4 and test.flip is False
    for i in range(len(train)):
        x, label = train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32
        assert x.min() >= -1 and x.max() <= 1
        offset = (x.double() + 1) / 2 * 256 - train.data[i].double()
        assert offset.min() >= -1e-4 and offset.max() < 1 + 1e-4
        assert label == int(train.targets[i]) and 0 <= label <= 9
    centre = CIFAR10(tiny_dir, verify=False, dequantize=False, flip=False)[0][0]
    torch.testing.assert_close(centre, (train.data[0].float() + 0.5) / 128 - 1)


def test_cifar_flip_probability(tiny_dir):
    data = CIFAR10(tiny_dir, train=True, verify=False, dequantize=False)
    assert data.flip is True
    plain = (data.data[0].float() + 0.5) / 128 - 1
    torch.manual_seed(0)
    flips = 0
    for _ in range(400):
        x = data[0][0]
        if torch.equal(x, plain.flip(-1)):
            flips += 1
        else:
            assert torch.equal(x, plain)
    assert 160 < flips < 240  # Binomial(400, 1/2): 8 standard deviations


def test_cifar_extracted_folder(tiny_dir, tmp_path_factory):
    folder_dir = tmp_path_factory.mktemp("extracted")
    with tarfile.open(tiny_dir / "cifar-10-python.tar.gz", "r:gz") as tar:
        tar.extractall(folder_dir, filter="data")
    from_folder = load_cifar10(folder_dir, train=True, verify=False)
    from_archive = load_cifar10(tiny_dir, train=True, verify=False)
    assert torch.equal(from_folder[0], from_archive[0])
    assert torch.equal(from_folder[1], from_archive[1])
    with pytest.raises(RuntimeError, match=r"data_batch_1 fails its MD5 check"):
        load_cifar10(folder_dir, train=True)
    os.remove(folder_dir / "cifar-10-batches-py" / "test_batch")
    with pytest.raises(FileNotFoundError, match="test_batch is missing"):
        load_cifar10(folder_dir, train=False, verify=False)


def test_cifar_md5_failure_names_the_archive(tiny_dir):
    archive = tiny_dir / "cifar-10-python.tar.gz"
    with pytest.raises(RuntimeError, match="MD5") as info:
        CIFAR10(tiny_dir)  # verify is on by default
    assert str(archive) in str(info.value) and "c58f30108f718f92721af3b95e74349a" in str(info.value)


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_archive_names_the_file(tiny_dir, keep):
    archive = tiny_dir / "cifar-10-python.tar.gz"
    raw = archive.read_bytes()
    archive.write_bytes(raw[: int(len(raw) * keep)])
    with pytest.raises(RuntimeError, match="truncated or corrupt") as info:
        load_cifar10(tiny_dir, train=False, verify=False)
    assert str(archive) in str(info.value)


def _write_archive(path, members: dict[str, bytes]) -> None:
    with tarfile.open(path / "cifar-10-python.tar.gz", "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))


def _batch(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2)


def test_corrupt_members_name_the_member(tmp_path):
    good = _batch(np.zeros((2, 3072), np.uint8), [0, 1])
    cases = {
        "lacks the member cifar-10-batches-py/test_batch": {"batches.meta": good},
        "test_batch is not a valid CIFAR-10 pickle": {"test_batch": b"\x80\x02garbage"},
        "test_batch: b'data' must have 3072 columns": {
            "test_batch": _batch(np.zeros((2, 100), np.uint8), [0, 1])
        },
        "test_batch: b'labels' must hold 2 ints": {
            "test_batch": _batch(np.zeros((2, 3072), np.uint8), [0])
        },
        "test_batch lacks b'data'": {"test_batch": pickle.dumps({b"x": 1}, protocol=2)},
        # a pickle that would call a function is refused, not executed
        "global posix.getcwd is not allowed|global os.getcwd is not allowed": {
            "test_batch": pickle.dumps({b"data": os.getcwd}, protocol=2)
        },
    }
    for message, members in cases.items():
        _write_archive(tmp_path, members)
        with pytest.raises(RuntimeError, match=message) as info:
            load_cifar10(tmp_path, train=False, verify=False)
        assert "cifar-10-python.tar.gz" in str(info.value)


def test_missing_data_dir_is_named(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match="data_dir .*nowhere does not exist"):
        CIFAR10(missing)


def test_absent_data_without_download_says_where_to_put_it(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10(tmp_path, download=False)
    assert str(tmp_path / "cifar-10-python.tar.gz") in str(info.value)


def test_offline_download_failure_says_where_to_put_it(tmp_path, monkeypatch):
    calls = []

    def offline(url, dest, timeout):
        calls.append((url, dest, timeout))
        raise OSError("Network is unreachable")

    monkeypatch.setattr(cifar10_module, "_download", offline)
    with pytest.raises(FileNotFoundError) as info:
        CIFAR10(tmp_path)
    message = str(info.value)
    assert str(tmp_path / "cifar-10-python.tar.gz") in message
    assert "Network is unreachable" in message and cifar10_module.CIFAR10_URL in message
    assert calls and calls[0][0] == "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    assert calls[0][2] <= 30  # a short timeout


def test_download_then_load(tmp_path, monkeypatch):
    def fake(url, dest, timeout):
        write_tiny_cifar10_archive(dest, n_train=5, n_test=2)

    monkeypatch.setattr(cifar10_module, "_download", fake)
    with pytest.raises(RuntimeError, match="MD5"):  # the fake archive is not the real one
        CIFAR10(tmp_path, train=False)
    assert len(CIFAR10(tmp_path, train=False, verify=False)) == 2


# ----------------------------------------------------------------------------- digits


def test_digits():
    train, test = Digits(train=True, seed=0), Digits(train=False, seed=0)
    assert len(train) + len(test) == 1797 and len(test) == 359
    assert train.data.shape == (len(train), 1, 8, 8) and train.data.dtype == torch.uint8
    assert int(train.data.max()) == 16 and int(train.data.min()) == 0
    x, label = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and 0 <= label <= 9
    offset = (x.double() + 1) / 2 * 17 - train.data[0].double()
    assert offset.min() >= -1e-5 and offset.max() < 1 + 1e-5
    assert torch.equal(Digits(train=True, seed=0).data, train.data)
    assert not torch.equal(Digits(train=True, seed=1).data, train.data)
    # train and test are disjoint parts of the 1797 images
    seen = {bytes(d.numpy()) for d in train.data}
    overlap = sum(bytes(d.numpy()) in seen for d in test.data)
    assert overlap < 10  # only genuinely duplicated images can coincide


def test_bits_per_dim_of_a_histogram_density_is_exact():
    # For a density constant on each level's interval, p_x = P(k) / (2/L), the dequantization
    # bound of sdeflow.bits_per_dim is tight: bpd = -log2 P(k) per dimension.
    levels = 17
    probs = torch.softmax(torch.randn(levels, dtype=torch.float64), 0)
    k = torch.arange(levels)
    nll_continuous = -(probs[k] / (2 / levels)).log()
    torch.testing.assert_close(bits_per_dim(nll_continuous, 1, levels=levels), -probs.log2())

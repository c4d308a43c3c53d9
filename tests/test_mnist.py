"""The MNIST loader on generated files in the real IDX format (no network)."""

from __future__ import annotations

import gzip
import hashlib
import socket
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from sdeflow.data import MNIST_MD5, load_mnist, write_tiny_mnist_archives
from sdeflow.data import mnist as mnist_module
from sdeflow.data.mnist import _pil_bilinear_weights, _resize_bilinear_like_pil

NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
         "t10k-labels-idx1-ubyte")


def pattern(rng: np.random.Generator, n: int) -> np.ndarray:
    """Digit i has pixel (r, c) = (7 i + 3 r + c) mod 256: every pixel is known."""
    i, r, c = np.meshgrid(np.arange(n), np.arange(28), np.arange(28), indexing="ij")
    return ((7 * i + 3 * r + c) % 256).astype(np.uint8)


def labels_in(path) -> list[int]:
    """The labels of an IDX label file, read by hand: magic, count, then one byte each."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    magic, n = struct.unpack(">II", raw[:8])
    assert magic == 0x801 and len(raw) == 8 + n
    return list(raw[8:])


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the MNIST loader must not touch the network")

    monkeypatch.setattr(socket, "socket", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_round_trip(tmp_path, compress):
    folder = write_tiny_mnist_archives(tmp_path, n_train=7, n_test=4, seed=3, compress=compress,
                                       image_fn=pattern)
    suffix = ".gz" if compress else ""
    assert sorted(p.name for p in folder.iterdir()) == sorted(n + suffix for n in NAMES)
    for train, n, prefix in ((True, 7, "train"), (False, 4, "t10k")):
        images, labels = load_mnist(folder, train=train, verify=False, resize="none")
        assert images.shape == (n, 1, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        np.testing.assert_array_equal(images[:, 0].numpy(), pattern(None, n))
        assert labels.tolist() == labels_in(folder / f"{prefix}-labels-idx1-ubyte{suffix}")
        assert 0 <= labels.min() and labels.max() <= 9


def test_gz_and_raw_hold_the_same_data(tmp_path):
    gz = write_tiny_mnist_archives(tmp_path / "gz", n_train=9, n_test=2, seed=5)
    raw = write_tiny_mnist_archives(tmp_path / "raw", n_train=9, n_test=2, seed=5,
                                    compress=False)
    for train in (True, False):
        a, b = load_mnist(gz, train, verify=False), load_mnist(raw, train, verify=False)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for name in NAMES:  # the .gz files are the raw files compressed
        assert gzip.decompress((gz / f"{name}.gz").read_bytes()) == (raw / name).read_bytes()


def test_padding(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=6, n_test=1, seed=1)
    padded, labels = load_mnist(tmp_path, verify=False)
    plain, labels_plain = load_mnist(tmp_path, verify=False, resize="none")
    assert padded.shape == (6, 1, 32, 32)
    assert torch.equal(padded[:, :, 2:30, 2:30], plain)
    border = torch.ones(32, 32, dtype=torch.bool)
    border[2:30, 2:30] = False
    assert int(padded[:, :, border].max()) == 0
    assert torch.equal(padded, F.pad(plain, (2, 2, 2, 2)))
    assert torch.equal(labels, labels_plain)


def test_deterministic_files(tmp_path):
    write_tiny_mnist_archives(tmp_path / "a", n_train=4, n_test=2, seed=7)
    write_tiny_mnist_archives(tmp_path / "b", n_train=4, n_test=2, seed=7)
    write_tiny_mnist_archives(tmp_path / "c", n_train=4, n_test=2, seed=8)
    name = "train-images-idx3-ubyte.gz"
    assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()


def test_torchvision_layout_and_gz_preferred(tmp_path):
    raw_dir = tmp_path / "MNIST" / "raw"
    write_tiny_mnist_archives(raw_dir, n_train=3, n_test=2, seed=0, compress=False)
    images, _ = load_mnist(tmp_path, train=False, verify=False)
    assert images.shape == (2, 1, 32, 32)
    # a .gz beside the uncompressed file wins
    write_tiny_mnist_archives(raw_dir, n_train=3, n_test=5, seed=0)
    images, _ = load_mnist(tmp_path, train=False, verify=False)
    assert images.shape == (5, 1, 32, 32)


def test_md5_mismatch_names_the_file(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=3, n_test=2)
    with pytest.raises(RuntimeError, match="train-images-idx3-ubyte.gz fails its MD5 check"):
        load_mnist(tmp_path)
    write_tiny_mnist_archives(tmp_path / "raw", n_train=3, n_test=2, compress=False)
    with pytest.raises(RuntimeError, match=r"t10k-images-idx3-ubyte fails its MD5 check.*"
                                           r"expected 2646ac647ad5339dbf082846283269ea"):
        load_mnist(tmp_path / "raw", train=False)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_verify_accepts_matching_checksums(tmp_path, monkeypatch, compress):
    folder = write_tiny_mnist_archives(tmp_path, n_train=3, n_test=2, compress=compress)
    for path in folder.iterdir():
        monkeypatch.setitem(MNIST_MD5, path.name, hashlib.md5(path.read_bytes()).hexdigest())
    images, labels = load_mnist(folder, train=True, verify=True)
    assert images.shape == (3, 1, 32, 32) and labels.shape == (3,)


def test_published_checksums():
    assert set(MNIST_MD5) == set(NAMES) | {f"{n}.gz" for n in NAMES}
    assert MNIST_MD5["train-images-idx3-ubyte.gz"] == "f68b3c2dcbeaaa9fbdd348bbdeb94873"
    assert all(len(v) == 32 and int(v, 16) >= 0 for v in MNIST_MD5.values())


def rewrite(path, data: bytes) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if path.suffix == ".gz" else data)


def content(path) -> bytes:
    return gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_bad_magic(tmp_path, compress):
    write_tiny_mnist_archives(tmp_path, n_train=3, n_test=2, compress=compress)
    suffix = ".gz" if compress else ""
    images = tmp_path / f"train-images-idx3-ubyte{suffix}"
    data = content(images)
    rewrite(images, struct.pack(">I", 0x00000804) + data[4:])
    with pytest.raises(RuntimeError, match=r"train-images-idx3-ubyte.* has the magic number "
                                           r"0x00000804, expected 0x00000803"):
        load_mnist(tmp_path, verify=False)
    # the images and labels files swapped
    labels = tmp_path / f"t10k-labels-idx1-ubyte{suffix}"
    rewrite(labels, content(tmp_path / f"t10k-images-idx3-ubyte{suffix}"))
    with pytest.raises(RuntimeError, match=r"t10k-labels-idx1-ubyte.* has the magic number "
                                           r"0x00000803, expected 0x00000801"):
        load_mnist(tmp_path, train=False, verify=False)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_truncated_data_and_trailing_bytes(tmp_path, compress):
    write_tiny_mnist_archives(tmp_path, n_train=3, n_test=2, compress=compress)
    suffix = ".gz" if compress else ""
    images = tmp_path / f"train-images-idx3-ubyte{suffix}"
    data = content(images)
    rewrite(images, data[:-10])
    with pytest.raises(RuntimeError, match=r"train-images-idx3-ubyte.* is truncated: .*"
                                           r"\(3, 28, 28\) \(2352 bytes.* holds 2342 bytes"):
        load_mnist(tmp_path, verify=False)
    rewrite(images, data[:10])
    with pytest.raises(RuntimeError, match="shorter than its 16-byte IDX header"):
        load_mnist(tmp_path, verify=False)
    rewrite(images, data + b"\x00")
    with pytest.raises(RuntimeError, match="has trailing bytes"):
        load_mnist(tmp_path, verify=False)


def test_truncated_gzip(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=20, n_test=2)
    labels = tmp_path / "train-labels-idx1-ubyte.gz"
    labels.write_bytes(labels.read_bytes()[:-12])
    with pytest.raises(RuntimeError, match="train-labels-idx1-ubyte.gz is not a readable gzip"):
        load_mnist(tmp_path, verify=False)
    labels.write_bytes(b"not gzip at all")
    with pytest.raises(RuntimeError, match="train-labels-idx1-ubyte.gz is not a readable gzip"):
        load_mnist(tmp_path, verify=False)


def test_counts_shapes_and_label_range_are_checked(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=5, n_test=3, compress=False)
    # three test labels for five training images
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(
        (tmp_path / "t10k-labels-idx1-ubyte").read_bytes())
    with pytest.raises(RuntimeError, match="holds 3 labels but .* holds 5 images"):
        load_mnist(tmp_path, verify=False)
    bad_labels = struct.pack(">II", 0x801, 3) + bytes([1, 10, 2])
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(bad_labels)
    with pytest.raises(RuntimeError, match="labels must lie in 0..9, got 10"):
        load_mnist(tmp_path, train=False, verify=False)
    small = np.zeros((3, 27, 27), dtype=np.uint8)
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(
        struct.pack(">IIII", 0x803, 3, 27, 27) + small.tobytes())
    with pytest.raises(RuntimeError, match=r"images of shape \(27, 27\), expected \(28, 28\)"):
        load_mnist(tmp_path, train=False, verify=False)


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist or is not a directory"):
        load_mnist(tmp_path / "nowhere")
    write_tiny_mnist_archives(tmp_path, n_train=2, n_test=2)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    assert load_mnist(tmp_path, verify=False)[0].shape[0] == 2  # the training split is whole
    with pytest.raises(FileNotFoundError, match=r"t10k-labels-idx1-ubyte.gz \(or the "
                                                r"uncompressed t10k-labels-idx1-ubyte\) is not "
                                                r"in .*put it at .*t10k-labels-idx1-ubyte.gz"):
        load_mnist(tmp_path, train=False, verify=False)


def test_writer_bad_arguments(tmp_path):
    for kwargs in ({"n_train": -1}, {"n_test": True}, {"n_train": 2.0}):
        with pytest.raises(ValueError, match="must be a non-negative int"):
            write_tiny_mnist_archives(tmp_path, **kwargs)
    with pytest.raises(ValueError, match=r"image_fn must return an array of shape \(2, 28, 28\)"):
        write_tiny_mnist_archives(tmp_path, n_train=2,
                                  image_fn=lambda rng, n: np.zeros((n, 32, 32), np.uint8))
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is not a directory"):
        write_tiny_mnist_archives(tmp_path / "file")


def test_empty_split(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=0, n_test=1)
    images, labels = load_mnist(tmp_path, verify=False)
    assert images.shape == (0, 1, 32, 32) and labels.shape == (0,)


def test_module_exports():
    assert set(mnist_module.__all__) == {"MNIST_MD5", "MNIST_URL", "load_mnist",
                                         "write_tiny_mnist_archives"}


# -- the official 32x32: Pillow's bilinear resize ----------------------------------------------


def pillow_bilinear(images: np.ndarray, size: int = 32) -> np.ndarray:
    """What the official ``transforms.Resize(32)`` does to each digit (a PIL "L" image)."""
    image_module = pytest.importorskip("PIL.Image")
    return np.stack([np.asarray(image_module.fromarray(a, mode="L").resize(
        (size, size), image_module.BILINEAR)) for a in images]).reshape(-1, size, size)


def random_digits(seed: int, n: int) -> np.ndarray:
    """Uniform pixels, mostly-black digits with saturated strokes, and constant images."""
    rng = np.random.default_rng(seed)
    uniform = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    sparse = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    sparse[rng.random(sparse.shape) < 0.8] = 0
    sparse[rng.random(sparse.shape) < 0.05] = 255
    constant = np.stack([np.full((28, 28), v, np.uint8) for v in (0, 1, 127, 128, 254, 255)])
    return np.concatenate([uniform, sparse, constant])


def test_bilinear_is_pillows_bit_for_bit():
    images = random_digits(0, 100)
    ours = _resize_bilinear_like_pil(images, 32)
    assert ours.dtype == np.uint8 and ours.shape == (len(images), 32, 32)
    np.testing.assert_array_equal(ours, pillow_bilinear(images))
    # in chunks as a whole
    np.testing.assert_array_equal(_resize_bilinear_like_pil(images, 32, chunk=7), ours)


@pytest.mark.parametrize("shape, size", [((5, 7), 9), ((20, 28), 32), ((3, 3), 64), ((28, 28), 28)])
def test_bilinear_other_upsampling_sizes(shape, size):
    images = np.random.default_rng(1).integers(0, 256, size=(20, *shape), dtype=np.uint8)
    np.testing.assert_array_equal(_resize_bilinear_like_pil(images, size),
                                  pillow_bilinear(images, size))


def test_bilinear_is_rounded_float_bilinear_up_to_one():
    """Without Pillow: within 1 of torch's bilinear interpolation (align_corners=False): each
    pass rounds by at most 1/2 and the second pass averages the first one's errors with convex
    weights; and not equal to it after one rounding (the two passes each round to uint8)."""
    images = random_digits(2, 100)
    ours = torch.from_numpy(_resize_bilinear_like_pil(images, 32)).double()
    exact = F.interpolate(torch.from_numpy(images)[:, None].double(), size=(32, 32),
                          mode="bilinear", align_corners=False)[:, 0]
    assert float((ours - exact).abs().max()) <= 1
    assert not torch.equal(ours, exact.round())
    assert not torch.equal(ours, torch.floor(exact + 0.5))
    constant = torch.from_numpy(images[-6:]).double()
    assert torch.equal(ours[-6:], constant[:, :1, :1].expand(-1, 32, 32))


def test_pillow_weights():
    w = _pil_bilinear_weights(28, 32)
    assert w.shape == (32, 28)
    assert (w.sum(1) == 2**22).all()  # the bilinear weights of a 28 -> 32 pass are 1/16ths
    assert torch.equal(w, torch.round(w)) and (w >= 0).all()
    assert torch.equal(w[0, :2], torch.tensor([2.0**22, 0.0], dtype=torch.float64))  # edge
    assert torch.equal(_pil_bilinear_weights(4, 4), 2.0**22 * torch.eye(4, dtype=torch.float64))
    with pytest.raises(ValueError, match="only upsampling"):
        _pil_bilinear_weights(32, 28)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_load_bilinear_like_the_official_pipeline(tmp_path, compress):
    digits = random_digits(3, 4)
    folder = write_tiny_mnist_archives(
        tmp_path, n_train=len(digits), n_test=5, seed=2, compress=compress,
        image_fn=lambda rng, n: digits if n == len(digits) else pattern(rng, n))
    for train, source in ((True, digits), (False, pattern(None, 5))):
        images, labels = load_mnist(folder, train=train, verify=False, resize="bilinear")
        assert images.shape == (len(source), 1, 32, 32) and images.dtype == torch.uint8
        np.testing.assert_array_equal(images[:, 0].numpy(), pillow_bilinear(source))
        plain, labels_plain = load_mnist(folder, train=train, verify=False, resize="none")
        assert torch.equal(labels, labels_plain)
        np.testing.assert_array_equal(images[:, 0].numpy(),
                                      _resize_bilinear_like_pil(plain[:, 0].numpy(), 32))


def test_resize_choices_and_the_older_pad(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=3, n_test=2, seed=4)
    default, _ = load_mnist(tmp_path, verify=False)
    assert torch.equal(default, load_mnist(tmp_path, verify=False, resize="pad")[0])
    assert torch.equal(default, load_mnist(tmp_path, verify=False, pad=True)[0])
    plain, _ = load_mnist(tmp_path, verify=False, resize="none")
    assert plain.shape == (3, 1, 28, 28)
    assert torch.equal(plain, load_mnist(tmp_path, verify=False, pad=False)[0])
    bilinear, _ = load_mnist(tmp_path, verify=False, resize="bilinear")
    assert bilinear.shape == default.shape and not torch.equal(bilinear, default)
    with pytest.raises(ValueError, match=r"resize must be one of \('pad', 'bilinear', 'none'\)"):
        load_mnist(tmp_path, verify=False, resize="nearest")
    with pytest.raises(ValueError, match="pass resize='bilinear' or the older pad=False"):
        load_mnist(tmp_path, verify=False, resize="bilinear", pad=False)
    with pytest.raises(TypeError, match="pad must be a bool"):
        load_mnist(tmp_path, verify=False, pad="yes")


def test_empty_split_bilinear(tmp_path):
    write_tiny_mnist_archives(tmp_path, n_train=0, n_test=1)
    images, labels = load_mnist(tmp_path, verify=False, resize="bilinear")
    assert images.shape == (0, 1, 32, 32) and labels.shape == (0,)

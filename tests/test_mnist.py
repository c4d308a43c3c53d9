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
        images, labels = load_mnist(folder, train=train, verify=False, pad=False)
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
    plain, labels_plain = load_mnist(tmp_path, verify=False, pad=False)
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

r"""CIFAR-10 from the standard python-format archive ``cifar-10-python.tar.gz``.

The archive (https://www.cs.toronto.edu/~kriz/cifar.html, MD5
``c58f30108f718f92721af3b95e74349a``) holds ``cifar-10-batches-py/data_batch_1`` ... ``_5``,
``test_batch`` and ``batches.meta``; each is a pickled dict whose ``b'data'`` is a ``uint8``
array ``(N, 3072)`` (row-major ``C x H x W`` per image) and ``b'labels'`` a list of ``N`` ints.
The loader reads the members straight from the archive (or from the extracted folder), with a
restricted unpickler that builds nothing but numpy arrays, lists, numbers and bytes.
"""

from __future__ import annotations

import importlib
import io
import os
import pickle
import tarfile
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from sdeflow.data._files import md5

from .digits import dequantize as _dequantize

__all__ = [
    "CIFAR10",
    "CIFAR10_URL",
    "CIFAR10_MD5",
    "load_cifar10",
    "write_tiny_cifar10_archive",
]

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
_ARCHIVE = "cifar-10-python.tar.gz"
_FOLDER = "cifar-10-batches-py"
_TRAIN = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5")
_TEST = ("test_batch",)
_META = "batches.meta"
# published checksums of the extracted members (as used by torchvision)
_MEMBER_MD5 = {
    "data_batch_1": "c99cafc152244af753f735de768cd75f",
    "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "data_batch_4": "634d18415352ddfa80567beed471001a",
    "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "test_batch": "40351d587109b95175f43aff81a1287e",
    "batches.meta": "5ff9c542aee3614f3951f8cda6e48888",
}
_CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
_DOWNLOAD_TIMEOUT_S = 15.0


def _numpy_global(module: str, name: str) -> Any:
    # the original pickles name numpy.core.multiarray, numpy >= 2 names numpy._core.multiarray
    for candidate in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise pickle.UnpicklingError(f"cannot resolve {module}.{name}")


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, lists, numbers and bytes; refuses every other global."""

    _NUMPY = {"_reconstruct", "scalar"}

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in self._NUMPY:
            return _numpy_global(module, name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if (module, name) in {("_codecs", "encode"), ("builtins", "bytes")}:
            return {"encode": _latin1_encode, "bytes": bytes}[name]
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR-10 batch")


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # how protocol-2 pickles written by Python 3 store bytes
    if encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r}")
    return text.encode("latin1")


def _unpickle(raw: bytes, where: str) -> dict:
    try:
        obj = _ArrayUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any failure of a corrupt pickle: report the file
        raise RuntimeError(f"{where} is not a valid CIFAR-10 pickle ({err})") from err
    if not isinstance(obj, dict):
        raise RuntimeError(f"{where} must hold a dict, got {type(obj).__name__}")
    return obj


def _parse_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    batch = _unpickle(raw, where)
    if b"data" not in batch or b"labels" not in batch:
        raise RuntimeError(f"{where} lacks b'data' or b'labels' (keys: {sorted(batch)})")
    data, labels = batch[b"data"], np.asarray(batch[b"labels"])
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise RuntimeError(f"{where}: b'data' must be a uint8 array of shape (N, 3072)")
    if data.shape[1] != 3072:
        raise RuntimeError(f"{where}: b'data' must have 3072 columns, got shape {data.shape}")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise RuntimeError(
            f"{where}: b'labels' must hold {data.shape[0]} ints, got shape {labels.shape}"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise RuntimeError(f"{where}: labels must lie in 0..9")
    return data, labels.astype(np.int64)


def _missing_message(data_dir: Path, reason: str) -> str:
    return (
        f"CIFAR-10 is not in {data_dir}: {reason}. Put the archive {_ARCHIVE} (from "
        f"{CIFAR10_URL}, MD5 {CIFAR10_MD5}) at {data_dir / _ARCHIVE}, or its extracted folder "
        f"at {data_dir / _FOLDER}."
    )


def _download(url: str, dest: Path, timeout: float) -> None:
    """Downloads ``url`` to ``dest`` through a temporary file (replaced by tests)."""
    partial = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as f:
            for chunk in iter(lambda: response.read(1 << 20), b""):
                f.write(chunk)
        os.replace(partial, dest)
    finally:
        partial.unlink(missing_ok=True)


def _read_members(data_dir: Path, names: tuple[str, ...], verify: bool, download: bool) -> dict:
    """The raw bytes of ``names`` from the extracted folder or the archive."""
    if not data_dir.is_dir():
        raise FileNotFoundError(f"data_dir {data_dir} does not exist or is not a directory")
    folder, archive = data_dir / _FOLDER, data_dir / _ARCHIVE
    if folder.is_dir():
        out = {}
        for name in names:
            path = folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path} is missing from the extracted CIFAR-10 folder")
            if verify and md5(path) != _MEMBER_MD5[name]:
                raise RuntimeError(
                    f"{path} fails its MD5 check (expected {_MEMBER_MD5[name]}): the file is "
                    f"corrupt or not CIFAR-10; replace it (or pass verify=False for a test copy)"
                )
            out[name] = path.read_bytes()
        return out
    if not archive.is_file():
        if not download:
            raise FileNotFoundError(_missing_message(data_dir, "download=False"))
        try:
            _download(CIFAR10_URL, archive, _DOWNLOAD_TIMEOUT_S)
        except Exception as err:  # offline, refused, timed out, disk full: one clear message
            raise FileNotFoundError(
                _missing_message(data_dir, f"downloading it failed ({err})")
            ) from err
    if verify:
        digest = md5(archive)
        if digest != CIFAR10_MD5:
            raise RuntimeError(
                f"{archive} fails its MD5 check (got {digest}, expected {CIFAR10_MD5}): the "
                f"archive is truncated or corrupt; delete it and download it again from "
                f"{CIFAR10_URL} (or pass verify=False for a test archive)"
            )
    out = {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for name in names:
                try:
                    member = tar.getmember(f"{_FOLDER}/{name}")
                except KeyError:
                    raise RuntimeError(f"{archive} lacks the member {_FOLDER}/{name}") from None
                f = tar.extractfile(member)
                if f is None:
                    raise RuntimeError(f"{archive}: member {_FOLDER}/{name} is not a file")
                out[name] = f.read()
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise RuntimeError(
            f"{archive} is not a readable gzip-compressed tar archive ({err}); it is truncated "
            f"or corrupt: delete it and download it again from {CIFAR10_URL}"
        ) from err
    return out


def load_cifar10(
    data_dir: str | os.PathLike,
    train: bool = True,
    *,
    verify: bool = True,
    download: bool = True,
) -> tuple[Tensor, Tensor]:
    r"""Loads the raw CIFAR-10 training (50,000) or test (10,000) images.

    ``data_dir`` holds the extracted folder ``cifar-10-batches-py`` (used first) or the archive
    ``cifar-10-python.tar.gz``. With neither, the archive is downloaded from
    :data:`CIFAR10_URL` into ``data_dir`` (short timeout) when ``download`` is set; otherwise,
    or when that fails, a :class:`FileNotFoundError` says where to put the file.

    Arguments:
        data_dir: An existing directory.
        train: Whether to load the five training batches or the test batch.
        verify: Whether to check the published MD5 of the archive (or of each extracted
            member). Only tests of synthetic archives should turn it off.
        download: Whether to try downloading a missing archive.

    Returns:
        ``(data, targets)``: ``uint8`` images of shape ``(N, 3, 32, 32)`` and ``int64`` labels
        of shape ``(N,)``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_tiny_cifar10_archive(d, n_train=10, n_test=4)
        ...     data, targets = load_cifar10(d, train=False, verify=False)
        >>> data.shape, data.dtype, targets.shape
        (torch.Size([4, 3, 32, 32]), torch.uint8, torch.Size([4]))
    """
    data_dir = Path(data_dir)
    names = _TRAIN if train else _TEST
    raw = _read_members(data_dir, names, verify, download)
    where = data_dir / _FOLDER if (data_dir / _FOLDER).is_dir() else data_dir / _ARCHIVE
    parts = [_parse_batch(raw[name], f"{where}::{name}") for name in names]
    data = np.concatenate([p[0] for p in parts]).reshape(-1, 3, 32, 32)
    labels = np.concatenate([p[1] for p in parts])
    return torch.from_numpy(data), torch.from_numpy(labels)


class CIFAR10(Dataset):
    r"""CIFAR-10 as a :class:`~torch.utils.data.Dataset` of float images on ``[-1, 1]``.

    Item ``i`` is ``(x, label)`` with ``x`` of shape ``(3, 32, 32)``,

    .. math:: x = \frac{k + u}{256} \cdot 2 - 1, \qquad u \sim \mathcal{U}[0, 1)^{3 \times 32
        \times 32}

    (``u = 1/2`` without dequantization), mirrored left-right with probability 1/2 when
    ``flip``. Bits/dim: :func:`~sdeflow.bits_per_dim` with ``dim=3072``,
    ``levels=256``. Randomness comes from torch's global generator (seeded per DataLoader
    worker).

    Arguments:
        data_dir: As in :func:`load_cifar10`.
        train: The training (50,000) or test (10,000) images.
        verify: As in :func:`load_cifar10` (on by default).
        download: As in :func:`load_cifar10`.
        dequantize: Whether to add uniform dequantization noise.
        flip: Whether to flip horizontally at random (default: ``train``).

    Attributes:
        data: The raw images, ``uint8`` of shape ``(N, 3, 32, 32)``.
        targets: The labels, ``int64`` of shape ``(N,)``.
        classes: The class names.
        levels: ``256``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_tiny_cifar10_archive(d, n_train=10, n_test=4)
        ...     train = CIFAR10(d, train=True, verify=False)
        >>> x, label = train[0]
        >>> len(train), x.shape, bool(x.abs().max() <= 1)
        (10, torch.Size([3, 32, 32]), True)
    """

    levels = 256
    classes = _CLASSES

    def __init__(
        self,
        data_dir: str | os.PathLike,
        train: bool = True,
        *,
        verify: bool = True,
        download: bool = True,
        dequantize: bool = True,
        flip: bool | None = None,
    ) -> None:
        self.train = train
        self.dequantize = dequantize
        self.flip = train if flip is None else flip
        self.data, self.targets = load_cifar10(data_dir, train, verify=verify, download=download)

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = _dequantize(self.data[index], self.levels, noise=self.dequantize)
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return x, int(self.targets[index])


def write_tiny_cifar10_archive(
    path: str | os.PathLike,
    n_train: int = 50,
    n_test: int = 10,
    seed: int = 0,
    *,
    image_fn: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> Path:
    r"""Writes a small archive in the real CIFAR-10 python format, for tests and smoke runs.

    The archive has the real member names; each batch is a protocol-2 pickle of a dict with
    bytes keys (``b'batch_label'``, ``b'labels'``, ``b'data'``, ``b'filenames'``) loadable with
    ``pickle.load(f, encoding='bytes')``; ``n_train`` images are spread over the five training
    batches. Its MD5 is not the published one: load it with ``verify=False``.

    Arguments:
        path: A directory (the archive is written inside as ``cifar-10-python.tar.gz``) or the
            archive's file path.
        n_train: The number of training images.
        n_test: The number of test images.
        seed: The seed of the random pixels and labels.
        image_fn: Optional ``(rng, n) -> uint8 array (n, 3072)`` producing the pixels.

    Returns:
        The archive's path.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     archive = write_tiny_cifar10_archive(d, n_train=5, n_test=2)
        ...     archive.name
        'cifar-10-python.tar.gz'
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    path = Path(path)
    archive = path / _ARCHIVE if path.is_dir() else path
    rng = np.random.default_rng(seed)

    def batch(label: str, n: int) -> bytes:
        if image_fn is None:
            data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        else:
            data = np.ascontiguousarray(image_fn(rng, n), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, size=n)]
        content = {
            b"batch_label": label.encode(),
            b"labels": labels,
            b"data": data,
            b"filenames": [f"tiny_{label.split()[-1]}_{i}.png".encode() for i in range(n)],
        }
        return pickle.dumps(content, protocol=2)

    sizes = [n_train // 5 + (i < n_train % 5) for i in range(5)]
    members = {
        name: batch(f"training batch {i + 1} of 5", size)
        for i, (name, size) in enumerate(zip(_TRAIN, sizes, strict=True))
    }
    members["test_batch"] = batch("testing batch 1 of 1", n_test)
    meta = {
        b"num_cases_per_batch": max(sizes),
        b"label_names": [c.encode() for c in _CLASSES],
        b"num_vis": 3072,
    }
    members[_META] = pickle.dumps(meta, protocol=2)
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo(_FOLDER)
        info.type = tarfile.DIRTYPE
        info.mode = 0o755
        tar.addfile(info)
        for name in (_META, *_TRAIN, *_TEST):
            info = tarfile.TarInfo(f"{_FOLDER}/{name}")
            info.size = len(members[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(members[name]))
    return archive

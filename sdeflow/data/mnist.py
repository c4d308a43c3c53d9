r"""MNIST from the four standard IDX files, gzip-compressed or not.

The files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``
and ``t10k-labels-idx1-ubyte`` (each usually as ``.gz``) are read from a folder (or from the
``MNIST/raw`` folder inside it, where torchvision puts them) and checked against the published
MD5 checksums; nothing is downloaded. An IDX file is a big-endian header, the magic number
``0x00000803`` (unsigned bytes, 3 dimensions: images) or ``0x00000801`` (1 dimension: labels)
followed by one ``uint32`` per dimension, and then the bytes of the array in row-major order.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from sdeflow.data._files import md5

__all__ = ["MNIST_MD5", "MNIST_URL", "load_mnist", "write_tiny_mnist_archives"]

MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
# published checksums of the archives (torchvision's MNIST.resources) and of their contents
MNIST_MD5 = {
    "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}
_IMAGES_MAGIC, _LABELS_MAGIC = 0x00000803, 0x00000801
_SIDE, _PAD = 28, 2  # 28x28 digits, padded by 2 zero pixels to 32x32
_RESIZES = ("pad", "bilinear", "none")
_PIL_PRECISION_BITS = 22  # Pillow's fixed-point weights: 32 - 8 - 2 bits (Resample.c)


def _stems(train: bool) -> tuple[str, str]:
    split = "train" if train else "t10k"
    return f"{split}-images-idx3-ubyte", f"{split}-labels-idx1-ubyte"


def _find(root: Path, stem: str) -> Path:
    """``stem.gz`` (preferred) or ``stem`` in ``root`` or ``root/MNIST/raw``."""
    for folder in (root, root / "MNIST" / "raw"):
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
    raise FileNotFoundError(
        f"the MNIST file {stem}.gz (or the uncompressed {stem}) is not in {root}: put it at "
        f"{root / (stem + '.gz')} (download {MNIST_URL}{stem}.gz, MD5 "
        f"{MNIST_MD5[stem + '.gz']})"
    )


def _read(path: Path, verify: bool) -> bytes:
    if verify:
        digest, expected = md5(path), MNIST_MD5[path.name]
        if digest != expected:
            raise RuntimeError(
                f"{path} fails its MD5 check (got {digest}, expected {expected}): the file is "
                f"truncated, corrupt or not MNIST; replace it with {MNIST_URL}{path.stem}.gz "
                f"(or pass verify=False for a test file)"
            )
    if path.suffix != ".gz":
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except (OSError, EOFError, zlib.error) as err:
        raise RuntimeError(
            f"{path} is not a readable gzip file ({err}); it is truncated or corrupt: replace "
            f"it with {MNIST_URL}{path.name}"
        ) from err


def _parse_idx(raw: bytes, magic: int, where: Path) -> np.ndarray:
    """The ``uint8`` array of an IDX file whose magic number must be ``magic``."""
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise RuntimeError(
            f"{where} is truncated: {len(raw)} bytes, shorter than its {header}-byte IDX header"
        )
    (found,) = struct.unpack(">I", raw[:4])
    if found != magic:
        kind = "images" if magic == _IMAGES_MAGIC else "labels"
        raise RuntimeError(
            f"{where} has the magic number 0x{found:08X}, expected 0x{magic:08X} (IDX "
            f"unsigned bytes, {ndim} dimension{'s' * (ndim > 1)}: MNIST {kind})"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    size = math.prod(dims)
    if len(raw) - header != size:
        state = "is truncated" if len(raw) - header < size else "has trailing bytes"
        raise RuntimeError(
            f"{where} {state}: its header gives the shape {dims} ({size} bytes of data), but "
            f"it holds {len(raw) - header} bytes after the header"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def load_mnist(
    root: str | os.PathLike,
    train: bool = True,
    *,
    verify: bool = True,
    resize: str = "pad",
    pad: bool | None = None,
) -> tuple[Tensor, Tensor]:
    r"""Loads the raw MNIST training (60,000) or test (10,000) digits and labels.

    Each of the two files of the split is read from ``root`` (or ``root/MNIST/raw``) as
    ``<name>.gz`` or, failing that, the uncompressed ``<name>``; with neither, a
    :class:`FileNotFoundError` says which file to put where. The DiffFlow recipe (DESIGN
    §4) then maps a pixel :math:`k` to :math:`x = 2 k / 255 - 1 \in [-1, 1]` (no
    dequantization, no flip).

    ``resize`` says how the 28x28 digits become the 32x32 images the U-Nets take:

    - ``"pad"`` (DESIGN §4, "32x32 (padded)"): 2 zero pixels on each side,
      :math:`28 + 2 + 2 = 32`; the padding maps to -1, the background. The digits' pixels
      are unchanged.
    - ``"bilinear"``: the official pipeline (``datasets/image_dataset.py``:
      torchvision's ``transforms.Resize(32)`` on the PIL image, that is Pillow's
      ``Image.resize((32, 32), Image.BILINEAR)``), reproduced bit for bit without Pillow.
      Pillow upsamples in two passes, rows first, each rounding to ``uint8``: output pixel
      :math:`o` of a pass of scale :math:`s = 28 / 32` averages the input pixels :math:`j`
      with the weights :math:`w_{oj} \propto \max(0, 1 - |j + 1/2 - (o + 1/2) s|)` (summing
      to 1; the bilinear weights of ``interpolate(mode="bilinear", align_corners=False)``),
      held as integers :math:`W_{oj} = \lfloor 2^{22} w_{oj} + 1/2 \rfloor`, and rounds
      :math:`\lfloor (2^{21} + \sum_j W_{oj} k_j) / 2^{22} \rfloor`. The rounding between
      the passes is why one float bilinear interpolation rounded once differs from Pillow
      (by 1, on 8% of the pixels of mostly-black random images, 18% of uniform ones).
    - ``"none"``: the 28x28 digits as stored.

    Arguments:
        root: An existing directory.
        train: Whether to load the training or the test split.
        verify: Whether to check each file against its published MD5 (:data:`MNIST_MD5`; the
            checksum of the ``.gz`` file or of the uncompressed one). Only tests of synthetic
            files should turn it off.
        resize: ``"pad"``, ``"bilinear"`` or ``"none"``, as above.
        pad: The older spelling: ``pad=True`` is ``resize="pad"``, ``pad=False`` is
            ``resize="none"``; it cannot be combined with another ``resize``.

    Returns:
        ``(images, labels)``: ``uint8`` images of shape ``(N, 1, 32, 32)`` (``(N, 1, 28, 28)``
        with ``resize="none"``) and ``int64`` labels in ``0..9`` of shape ``(N,)``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_tiny_mnist_archives(d, n_train=6, n_test=3)
        ...     images, labels = load_mnist(d, train=False, verify=False)
        ...     official, _ = load_mnist(d, train=False, verify=False, resize="bilinear")
        >>> images.shape, images.dtype, labels.shape, labels.dtype
        (torch.Size([3, 1, 32, 32]), torch.uint8, torch.Size([3]), torch.int64)
        >>> int(images[:, :, :2].sum() + images[:, :, -2:].sum())  # zero border
        0
        >>> official.shape, official.dtype
        (torch.Size([3, 1, 32, 32]), torch.uint8)
    """
    if resize not in _RESIZES:
        raise ValueError(f"resize must be one of {_RESIZES}, got {resize!r}")
    if pad is not None:
        if not isinstance(pad, bool):
            raise TypeError(f"pad must be a bool or None, got {pad!r}")
        if resize != "pad":
            raise ValueError(
                f"pass resize={resize!r} or the older pad={pad}, not both (pad=False is "
                f"resize='none')"
            )
        resize = "pad" if pad else "none"
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"root {root} does not exist or is not a directory")
    image_stem, label_stem = _stems(train)
    image_path, label_path = _find(root, image_stem), _find(root, label_stem)
    images = _parse_idx(_read(image_path, verify), _IMAGES_MAGIC, image_path)
    labels = _parse_idx(_read(label_path, verify), _LABELS_MAGIC, label_path)
    if images.shape[1:] != (_SIDE, _SIDE):
        raise RuntimeError(
            f"{image_path} holds images of shape {images.shape[1:]}, expected "
            f"({_SIDE}, {_SIDE})"
        )
    if labels.shape[0] != images.shape[0]:
        raise RuntimeError(
            f"{label_path} holds {labels.shape[0]} labels but {image_path} holds "
            f"{images.shape[0]} images"
        )
    if labels.size and labels.max() > 9:
        raise RuntimeError(f"{label_path}: labels must lie in 0..9, got {int(labels.max())}")
    if resize == "pad":
        images = np.pad(images, ((0, 0), (_PAD, _PAD), (_PAD, _PAD)))
    elif resize == "bilinear":
        images = _resize_bilinear_like_pil(images, _SIDE + 2 * _PAD)
    images = torch.from_numpy(np.array(images))[:, None]
    return images, torch.from_numpy(labels.astype(np.int64))


def _pil_bilinear_weights(n_in: int, n_out: int) -> Tensor:
    r"""Pillow's fixed-point bilinear weights for upsampling ``n_in`` pixels to ``n_out``
    (``Resample.c``, ``precompute_coeffs`` and ``normalize_coeffs_8bpc``): the float64
    matrix of integers :math:`W_{oj} = \lfloor 2^{22} w_{oj} + 1/2 \rfloor`, shape
    ``(n_out, n_in)``. For upsampling the filter's support is one input pixel, so the
    window Pillow sums over holds every pixel of nonzero weight."""
    if n_out < n_in:
        raise ValueError(f"only upsampling is supported, got {n_in} -> {n_out} pixels")
    scale = n_in / n_out
    center = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    pixel = torch.arange(n_in, dtype=torch.float64) + 0.5
    w = (1 - (pixel[None, :] - center[:, None]).abs()).clamp(min=0)
    w = w / w.sum(1, keepdim=True)
    return torch.floor(w * (1 << _PIL_PRECISION_BITS) + 0.5)


def _pil_round(acc: Tensor) -> Tensor:
    """Pillow's ``clip8``: from the fixed-point sum to ``0..255``, halves rounded up."""
    half = 1 << (_PIL_PRECISION_BITS - 1)
    return torch.floor((acc + half) / (1 << _PIL_PRECISION_BITS)).clamp(0, 255)


def _resize_bilinear_like_pil(images: np.ndarray, size: int, chunk: int = 4096) -> np.ndarray:
    """``Image.fromarray(a, "L").resize((size, size), Image.BILINEAR)`` for each ``uint8``
    image ``a`` of ``images`` (shape ``(N, H, W)``, ``H, W <= size``): rows first, then
    columns, each pass rounded to ``uint8``. The products and sums are integers below
    :math:`2^{31}`, exact in float64."""
    n, height, width = images.shape
    rows, cols = _pil_bilinear_weights(width, size), _pil_bilinear_weights(height, size)
    out = np.empty((n, size, size), dtype=np.uint8)
    for start in range(0, n, chunk):
        x = torch.from_numpy(np.asarray(images[start:start + chunk], dtype=np.float64))
        horizontal = _pil_round(x @ rows.T)  # (n, H, size)
        out[start:start + chunk] = _pil_round(cols @ horizontal).to(torch.uint8).numpy()
    return out


def _idx_bytes(array: np.ndarray, magic: int) -> bytes:
    return struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes()


def write_tiny_mnist_archives(
    root: str | os.PathLike,
    n_train: int = 50,
    n_test: int = 10,
    seed: int = 0,
    *,
    compress: bool = True,
    image_fn: Callable[[np.random.Generator, int], np.ndarray] | None = None,
) -> Path:
    r"""Writes small files in the real MNIST IDX format, for tests and smoke runs.

    The four files get their real names (with ``.gz`` when ``compress``; the gzip header has
    no time stamp, so the files depend only on the arguments). Their MD5s are not the
    published ones: load them with ``verify=False``. :func:`load_mnist` prefers a ``.gz`` file
    to an uncompressed one of the same name.

    Arguments:
        root: A directory (created if missing).
        n_train: The number of training digits.
        n_test: The number of test digits.
        seed: The seed of the random pixels and labels.
        compress: Whether to gzip the files.
        image_fn: Optional ``(rng, n) -> uint8 array (n, 28, 28)`` producing the pixels.

    Returns:
        The directory.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     folder = write_tiny_mnist_archives(d, n_train=5, n_test=2)
        ...     sorted(p.name for p in folder.iterdir())[:2]
        ['t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz']
    """
    for name, n in (("n_train", n_train), ("n_test", n_test)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be a non-negative int, got {n!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"root {root} exists and is not a directory")
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for train, n in ((True, n_train), (False, n_test)):
        if image_fn is None:
            images = rng.integers(0, 256, size=(n, _SIDE, _SIDE), dtype=np.uint8)
        else:
            images = np.ascontiguousarray(image_fn(rng, n), dtype=np.uint8)
            if images.shape != (n, _SIDE, _SIDE):
                raise ValueError(
                    f"image_fn must return an array of shape ({n}, {_SIDE}, {_SIDE}), got "
                    f"{images.shape}"
                )
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        image_stem, label_stem = _stems(train)
        for stem, array, magic in ((image_stem, images, _IMAGES_MAGIC),
                                   (label_stem, labels, _LABELS_MAGIC)):
            data = _idx_bytes(array, magic)
            if compress:
                (root / f"{stem}.gz").write_bytes(gzip.compress(data, mtime=0))
            else:
                (root / stem).write_bytes(data)
    return root

r"""The image data sets of the recipes, as raw ``uint8`` images, and their scaling to the model.

Training data (:func:`scale_images`) follow the recipe's ``data.dequantize``: the official
recipes map a pixel :math:`k \in \{0, \dots, 255\}` to :math:`x = 2k/255 - 1` (no
dequantization); with ``dequantize = true`` (sdeflow's preset),
:math:`x = 2(k + u)/256 - 1` with :math:`u \sim U[0, 1)`. Bits/dim are always reported on
dequantized images (:func:`sdeflow.data.dequantize`, ``levels = 256``), the density whose
integral over each pixel's cube bounds the discrete likelihood. :func:`to_uint8` inverts the
scaling for samples (FID is computed on 8-bit images, as for the data).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["IMAGE_DATASETS", "load_images", "write_tiny_archives", "scale_images", "to_uint8"]

#: The image data sets a recipe may name in ``data.dataset``.
IMAGE_DATASETS: tuple[str, ...] = ("cifar10", "mnist")


def _check_dataset(dataset: str) -> None:
    if dataset not in IMAGE_DATASETS:
        raise ValueError(f"dataset must be one of {', '.join(IMAGE_DATASETS)}; got {dataset!r}")


def load_images(dataset: str, data_dir: str | os.PathLike, *, train: bool, verify: bool = True,
                download: bool = False, resize: str = "pad") -> Tensor:
    """The ``uint8`` images ``(N, C, H, W)`` of ``dataset``'s training or test split.

    Arguments:
        dataset: ``"cifar10"`` (``cifar-10-python.tar.gz`` or its folder in ``data_dir``) or
            ``"mnist"`` (the four IDX files in ``data_dir``).
        data_dir: The folder of the files.
        train: The training split (else the test split).
        verify: Check the published MD5 checksums.
        download: Download CIFAR-10 when it is missing (MNIST is never downloaded).
        resize: How MNIST's 28x28 digits become 32x32: ``"bilinear"`` (the official
            pipeline, equal to Pillow's resize), ``"pad"`` or ``"none"``; CIFAR-10 ignores it.
    """
    from sdeflow.data import load_cifar10, load_mnist

    _check_dataset(dataset)
    if dataset == "cifar10":
        return load_cifar10(data_dir, train=train, verify=verify, download=download)[0]
    return load_mnist(data_dir, train=train, verify=verify, resize=resize)[0]


def write_tiny_archives(dataset: str, folder: str | os.PathLike, *, n_train: int, n_test: int,
                        seed: int = 0) -> Path:
    """Write a tiny data set in ``dataset``'s real file format into ``folder`` (smoke runs and
    tests; load it with ``verify=False``); returns ``folder``.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_tiny_archives("mnist", d, n_train=4, n_test=2)
        ...     load_images("mnist", d, train=False, verify=False).shape
        torch.Size([2, 1, 32, 32])
    """
    from sdeflow.data import write_tiny_cifar10_archive, write_tiny_mnist_archives

    _check_dataset(dataset)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if dataset == "cifar10":
        write_tiny_cifar10_archive(folder, n_train=n_train, n_test=n_test, seed=seed)
    else:
        write_tiny_mnist_archives(folder, n_train=n_train, n_test=n_test, seed=seed)
    return folder


def scale_images(k: Tensor, *, dequantize: bool, generator: torch.Generator | None = None
                 ) -> Tensor:
    r"""``uint8`` images to the model's space: :math:`2k/255 - 1`, or with ``dequantize``
    :math:`2(k + u)/256 - 1`, :math:`u \sim U[0, 1)` from ``generator`` (default: torch's
    global generator).

    Example:
        >>> scale_images(torch.tensor([0, 255], dtype=torch.uint8), dequantize=False)
        tensor([-1.,  1.])
    """
    if k.dtype != torch.uint8:
        raise TypeError(f"k must be a uint8 tensor of pixels, got {k.dtype}")
    if dequantize:
        from sdeflow.data import dequantize as dequantize_levels

        return dequantize_levels(k, 256, generator=generator)
    return k.float() * (2.0 / 255.0) - 1.0


def to_uint8(x: Tensor, *, dequantized: bool = False) -> Tensor:
    r"""Model-space images back to ``uint8`` pixels: the nearest :math:`k` with
    :math:`x \approx 2k/255 - 1`, or with ``dequantized`` the cube
    :math:`\lfloor 256 (x + 1)/2 \rfloor` that :math:`x` lies in; clamped to ``0..255``.

    Example:
        >>> to_uint8(torch.tensor([-1.5, -1.0, 0.0, 1.0]))
        tensor([  0,   0, 128, 255], dtype=torch.uint8)
    """
    x = x.detach().float()
    k = torch.floor((x + 1) * 128.0) if dequantized else torch.round((x + 1) * 127.5)
    return k.nan_to_num(0.0).clamp(0, 255).to(torch.uint8)

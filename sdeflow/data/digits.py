r"""scikit-learn's bundled 8x8 digits as a small image data set, and the conversions between a
continuous NLL on the ``[-1, 1]`` scale and bits/dim of discrete (quantized) images.

Convention (used for the digits with ``L = 17`` levels and for CIFAR-10 with ``L = 256``): a
pixel value ``k`` in ``{0, ..., L-1}`` is dequantized and scaled as

.. math:: x = \frac{k + u}{L} \cdot 2 - 1, \qquad u \sim \mathcal{U}[0, 1)

so each level owns the interval ``[2k/L - 1, 2(k+1)/L - 1)`` of width ``2/L``. For a density
``p_x`` on ``[-1, 1]^D``, ``y = k + u = L (x + 1) / 2`` has density
``p_y(y) = p_x(x) (2/L)^D``, and since each discrete value owns a unit cube in ``y``, Jensen's
inequality gives the discrete model ``P(k) = \int p_y(k + u) du`` the bound

.. math:: -\log P(k) \le \mathbb{E}_u[-\log p_x(x)] + D \log(L/2).

So a continuous NLL (or negative ELBO) in nats per image converts to an upper bound on the
discrete data's bits/dim as

.. math:: \text{bpd} = \frac{\text{nll} + D \log(L/2)}{D \ln 2}.

For CIFAR-10 (``L = 256``) this is the usual ``(nll + D log 128) / (D ln 2)``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

__all__ = [
    "Digits",
    "dequantize",
]


def dequantize(
    k: Tensor,
    levels: int,
    *,
    noise: bool = True,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""Maps integer levels ``k`` in ``{0, ..., L-1}`` to ``[-1, 1)``: ``x = (k + u)/L * 2 - 1``.

    Arguments:
        k: An integer tensor of levels.
        levels: The number ``L`` of levels.
        noise: Whether ``u ~ U[0, 1)`` (uniform dequantization); otherwise ``u = 1/2``, the
            centre of the level's interval.
        generator: The generator of ``u``.
        dtype: The floating dtype of the result.

    Returns:
        A tensor of ``k``'s shape.

    Example:
        >>> dequantize(torch.tensor([0, 16]), 17, noise=False)
        tensor([-0.9412,  0.9412])
    """
    if k.is_floating_point() or k.is_complex():
        raise TypeError(f"k must be an integer tensor, got {k.dtype}")
    if noise:
        u = torch.rand(k.shape, generator=generator, dtype=dtype, device=k.device)
    else:
        u = torch.full(k.shape, 0.5, dtype=dtype, device=k.device)
    return (k.to(dtype) + u) * (2.0 / levels) - 1.0


def _load_digits() -> tuple[Tensor, Tensor]:
    # shared by every Digits instance, which only index them (indexing copies)
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.from_numpy(np.asarray(bunch.images, dtype=np.uint8))
    return images, torch.from_numpy(np.asarray(bunch.target, dtype=np.int64))


class Digits(Dataset):
    r"""The 1,797 8x8 digits of :func:`sklearn.datasets.load_digits` (values ``0..16``) as images
    of shape ``(1, 8, 8)`` on ``[-1, 1]``, split into train and test by a seeded permutation.

    Items are ``(x, label)`` with ``x = (k + u)/17 * 2 - 1`` and ``u ~ U[0, 1)`` drawn at each
    access (``dequantize=True``) or ``u = 1/2``; bits/dim of the 17-level data follow from
    :func:`sdeflow.bits_per_dim` with ``dim=64, levels=17`` (a uniform model scores
    ``log2(17) = 4.09`` bits/dim).

    Arguments:
        train: Whether to take the training or the test part.
        test_fraction: The fraction of the images held out for testing.
        seed: The seed of the split.
        dequantize: Whether items carry uniform dequantization noise.

    Attributes:
        data: The raw levels, a ``uint8`` tensor of shape ``(N, 1, 8, 8)``.
        targets: The labels, an ``int64`` tensor of shape ``(N,)``.
        levels: ``17``.

    Example:
        >>> train = Digits(train=True)
        >>> x, label = train[0]
        >>> x.shape, bool(x.abs().max() <= 1)
        (torch.Size([1, 8, 8]), True)
    """

    levels = 17

    def __init__(
        self,
        train: bool = True,
        *,
        test_fraction: float = 0.2,
        seed: int = 0,
        dequantize: bool = True,
    ) -> None:
        if not 0 < test_fraction < 1:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        images, labels = _load_digits()
        n = images.shape[0]
        n_test = int(round(test_fraction * n))
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
        index = perm[n_test:] if train else perm[:n_test]
        self.train = train
        self.dequantize = dequantize
        self.data = images[index].unsqueeze(1).contiguous()
        self.targets = labels[index]

    def __len__(self) -> int:
        return self.data.shape[0]

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        x = dequantize(self.data[index], self.levels, noise=self.dequantize)
        return x, int(self.targets[index])

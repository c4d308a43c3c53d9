r"""2D data with class labels, for conditional models (:mod:`sdeflow.conditioning`).

- :func:`two_gaussians`: the two-class mixture of the tests and the how-to,
  :math:`x \mid y \sim \mathcal{N}((2y - 1)\,(s/2, 0),\ \sigma^2 I)`, classes equally likely;
- :func:`load_toy_labeled`: a set of :data:`TOY_LABELS` with a natural partition into classes,
  each point labelled by its part, drawn and standardized as :func:`~sdeflow.data.load_toy` does
  (the same points for the same seed, with their labels):

==============  =======  ====================================================================
name            classes  label of a point :math:`(x_1, x_2)` in raw coordinates
==============  =======  ====================================================================
checkerboard    2        its half: 0 for :math:`x_1 < 0`, 1 for :math:`x_1 \ge 0`
8gaussians      8        its mode: the nearest of the angles :math:`k\pi/4`
olympic         5        its ring: the nearest ring centre
moons           2        its moon: 0 the upper (centre (0, 0)), 1 the lower (centre (1, 0.5))
==============  =======  ====================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from .toy import _OLYMPIC_CENTERS, ToyPreprocessor, load_toy

__all__ = ["TOY_LABELS", "toy_labels", "load_toy_labeled", "two_gaussians"]


def _halves(x: Tensor) -> Tensor:
    return (x[:, 0] >= 0).long()


def _modes(x: Tensor) -> Tensor:
    angle = torch.atan2(x[:, 1], x[:, 0])
    return torch.round(angle / (math.pi / 4)).long() % 8


def _rings(x: Tensor) -> Tensor:
    centers = torch.tensor(_OLYMPIC_CENTERS, dtype=x.dtype)
    return torch.cdist(x, centers).argmin(1)


def _moons(x: Tensor) -> Tensor:
    # each moon is a half of a unit circle: the nearer circle is the moon
    upper = ((x - x.new_tensor([0.0, 0.0])).norm(dim=1) - 1).abs()
    lower = ((x - x.new_tensor([1.0, 0.5])).norm(dim=1) - 1).abs()
    return (lower < upper).long()


#: The labelled 2D sets: name -> ``(number of classes, labeller of raw points)``.
TOY_LABELS: dict[str, tuple[int, Callable[[Tensor], Tensor]]] = {
    "checkerboard": (2, _halves),
    "8gaussians": (8, _modes),
    "olympic": (5, _rings),
    "moons": (2, _moons),
}


def toy_labels(name: str, x: Tensor) -> Tensor:
    """The class of each raw point ``x`` ``(n, 2)`` of the set ``name`` (see the module table),
    ``(n,)`` integers.

    Example:
        >>> toy_labels("checkerboard", torch.tensor([[-1.0, 2.0], [3.0, -1.0]]))
        tensor([0, 1])
    """
    if name not in TOY_LABELS:
        raise ValueError(f"name must be a labelled 2D set, one of {', '.join(TOY_LABELS)}; got "
                         f"{name!r}")
    return TOY_LABELS[name][1](x)


def load_toy_labeled(name: str, n_train: int, n_test: int, seed: int = 0, *,
                     dtype: torch.dtype = torch.float32
                     ) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor], ToyPreprocessor]:
    """:func:`~sdeflow.data.load_toy` with labels: ``((train, train_labels), (test,
    test_labels), preprocessor)``, each point labelled from its raw coordinates.

    Example:
        >>> (x, y), (x_test, y_test), pre = load_toy_labeled("checkerboard", 64, 16)
        >>> x.shape, y.shape, sorted(set(y.tolist()))
        (torch.Size([64, 2]), torch.Size([64]), [0, 1])
    """
    if name not in TOY_LABELS:
        raise ValueError(f"name must be a labelled 2D set, one of {', '.join(TOY_LABELS)}; got "
                         f"{name!r}")
    train, test, pre = load_toy(name, n_train, n_test, seed, dtype=torch.float64)
    labels = [toy_labels(name, pre.inverse(x)) for x in (train, test)]
    return (train.to(dtype), labels[0]), (test.to(dtype), labels[1]), pre.to(dtype)


def two_gaussians(n: int, *, separation: float = 4.0, std: float = 0.5,
                  generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
    r"""``n`` points of the two-class mixture :math:`y \sim \mathcal{U}\{0, 1\}`,
    :math:`x \mid y \sim \mathcal{N}((2y - 1)(s/2, 0), \sigma^2 I)`: ``(x (n, 2), y (n,))``.
    Class ``y`` lies in the half-plane :math:`(2y - 1)\,x_1 > 0` up to :math:`\Phi(-s/(2\sigma))`
    (:math:`3 \cdot 10^{-5}` by default).

    Example:
        >>> x, y = two_gaussians(1000, generator=torch.Generator().manual_seed(0))
        >>> bool((((x[:, 0] > 0).long() == y).float().mean() > 0.99))
        True
    """
    y = torch.randint(0, 2, (n,), generator=generator)
    centers = torch.stack([(2 * y - 1).to(torch.float64) * separation / 2,
                           torch.zeros(n, dtype=torch.float64)], 1)
    x = centers + std * torch.randn(n, 2, generator=generator, dtype=torch.float64)
    return x.to(dtype), y

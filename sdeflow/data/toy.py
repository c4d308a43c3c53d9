r"""DiffFlow's 2D data sets with sharp boundaries, as seeded generators, and their preprocessing.

Every generator draws from a :class:`torch.Generator` (seeded from ``seed``), so a seed fixes
the sample on every platform. Raw coordinates follow the official DiffFlow code where it defines
the set (checkerboard, 2spirals, 8gaussians, olympic, swissroll, moons); the Sierpinski carpet
and the tree, images there, are drawn here exactly from their geometry.

==============  ===========================================================  ==============
name            support                                                      ``noise``
==============  ===========================================================  ==============
checkerboard    the "black" 2x2 squares of ``[-4, 4]^2``                     none
2spirals        two interleaved spirals, radius up to ~3                     0.1
8gaussians      8 Gaussians on a circle of radius ``4 / 1.414``              0.5 (before /1.414)
olympic         5 unit circles (the Olympic rings)                           0.01 * sqrt(0.2)
swissroll       the curve ``(t cos t, t sin t)``, ``t`` in ``[1.5π, 4.5π]``  0.01
moons           two interleaved half circles                                 0.01
sierpinski      the level-``4`` Sierpinski carpet on ``[-1, 1]^2``           none
tree            a depth-8 binary fractal tree of filled rectangles           none
pinwheel        5 curved arms                                                none
circles         circles of radius 1 and 0.5                                  0.01
==============  ===========================================================  ==============

``noise`` is the standard deviation of the Gaussian perturbation where a set has one (the
defaults are the official configuration's ``noise: 0.01``); a set marked "none" has sharp
boundaries only and refuses ``noise``.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

__all__ = ["TOY_DATASETS", "sample_toy", "ToyPreprocessor", "load_toy"]

_Sampler = Callable[[int, torch.Generator, float], Tensor]


def _rand(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.rand(n, *shape, generator=g, dtype=torch.float64)


def _randn(n: int, g: torch.Generator, *shape: int) -> Tensor:
    return torch.randn(n, *shape, generator=g, dtype=torch.float64)


def _randint(high: int, n: int, g: torch.Generator) -> Tensor:
    return torch.randint(high, (n,), generator=g)


def _checkerboard(n: int, g: torch.Generator, noise: float) -> Tensor:
    # black squares: floor(x/2) + floor(y/2) even, on [-4, 4]^2
    x1 = _rand(n, g) * 4 - 2
    x2 = _rand(n, g) - _randint(2, n, g) * 2 + torch.floor(x1) % 2
    return torch.stack([x1, x2], dim=1) * 2


def _two_spirals(n: int, g: torch.Generator, noise: float) -> Tensor:
    r = torch.sqrt(_rand(n, g)) * (540 * 2 * math.pi / 360)
    sign = 1 - 2 * _randint(2, n, g).to(torch.float64)
    x = -torch.cos(r) * r + _rand(n, g) * 0.5
    y = torch.sin(r) * r + _rand(n, g) * 0.5
    return sign[:, None] * torch.stack([x, y], dim=1) / 3 + noise * _randn(n, g, 2)


def _eight_gaussians(n: int, g: torch.Generator, noise: float) -> Tensor:
    angle = _randint(8, n, g).to(torch.float64) * (math.pi / 4)
    centers = 4 * torch.stack([angle.cos(), angle.sin()], dim=1)
    return (centers + noise * _randn(n, g, 2)) / 1.414


_OLYMPIC_CENTERS = ((-1.75, 0.75), (0.0, 0.75), (1.75, 0.75), (-1.05, -0.75), (1.05, -0.75))


def _olympic(n: int, g: torch.Generator, noise: float) -> Tensor:
    centers = torch.tensor(_OLYMPIC_CENTERS, dtype=torch.float64)[_randint(5, n, g)]
    angle = _rand(n, g) * (2 * math.pi)
    return centers + torch.stack([angle.cos(), angle.sin()], dim=1) + noise * _randn(n, g, 2)


def _swissroll(n: int, g: torch.Generator, noise: float) -> Tensor:
    t = 1.5 * math.pi * (1 + 2 * _rand(n, g))
    return torch.stack([t * t.cos(), t * t.sin()], dim=1) + noise * _randn(n, g, 2)


def _moons(n: int, g: torch.Generator, noise: float) -> Tensor:
    angle = _rand(n, g) * math.pi
    inner = _randint(2, n, g).to(torch.bool)
    x = torch.where(inner, 1 - angle.cos(), angle.cos())
    y = torch.where(inner, 0.5 - angle.sin(), angle.sin())
    return torch.stack([x, y], dim=1) + noise * _randn(n, g, 2)


_SIERPINSKI_LEVEL = 4
# the 8 kept sub-squares of the carpet, as base-3 digit pairs (the centre (1, 1) is removed)
_CARPET_CELLS = tuple((i, j) for i in range(3) for j in range(3) if (i, j) != (1, 1))


def _sierpinski(n: int, g: torch.Generator, noise: float) -> Tensor:
    # the uniform measure on the level-L carpet: L independent kept cells, then uniform inside
    cells = torch.tensor(_CARPET_CELLS, dtype=torch.float64)
    u = torch.zeros(n, 2, dtype=torch.float64)
    for level in range(1, _SIERPINSKI_LEVEL + 1):
        u += cells[_randint(8, n, g)] * 3.0**-level
    u += _rand(n, g, 2) * 3.0**-_SIERPINSKI_LEVEL
    return 2 * u - 1


_TREE_DEPTH = 8


def _tree_segments(depth: int = _TREE_DEPTH) -> Tensor:
    """Rows ``(x0, y0, x1, y1, width)`` of a binary tree's branches, trunk from the origin."""
    rows = []
    stack = [(0.0, 0.0, math.pi / 2, 1.0, 0.16, 0)]
    while stack:
        x0, y0, angle, length, width, level = stack.pop()
        x1, y1 = x0 + length * math.cos(angle), y0 + length * math.sin(angle)
        rows.append((x0, y0, x1, y1, width))
        if level + 1 < depth:
            for turn in (0.45, -0.45):
                stack.append((x1, y1, angle + turn, 0.72 * length, 0.65 * width, level + 1))
    return torch.tensor(rows, dtype=torch.float64)


def _tree(n: int, g: torch.Generator, noise: float) -> Tensor:
    # uniform over the union of the branches' rectangles (overlaps at the joints count twice)
    seg = _tree_segments()
    start, end, width = seg[:, :2], seg[:, 2:4], seg[:, 4]
    length = (end - start).norm(dim=1)
    if n == 0:
        return torch.zeros(0, 2, dtype=torch.float64)
    idx = torch.multinomial(length * width, n, replacement=True, generator=g)
    along = (end - start)[idx]
    normal = torch.stack([-along[:, 1], along[:, 0]], dim=1) / length[idx, None]
    s, w = _rand(n, g), (_rand(n, g) - 0.5) * width[idx]
    return start[idx] + s[:, None] * along + w[:, None] * normal


def _pinwheel(n: int, g: torch.Generator, noise: float) -> Tensor:
    # Johnson et al. (2016): radial std 0.3, tangential std 0.1, 5 arms, rate 0.25
    features = _randn(n, g, 2) * torch.tensor([0.3, 0.1], dtype=torch.float64)
    features[:, 0] += 1
    angle = _randint(5, n, g).to(torch.float64) * (2 * math.pi / 5) + 0.25 * features[:, 0].exp()
    c, s = angle.cos(), angle.sin()
    rotation = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)
    return 2 * torch.einsum("ni,nij->nj", features, rotation)


def _circles(n: int, g: torch.Generator, noise: float) -> Tensor:
    radius = 1 - 0.5 * _randint(2, n, g).to(torch.float64)
    angle = _rand(n, g) * (2 * math.pi)
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    return radius[:, None] * circle + noise * _randn(n, g, 2)


# name -> (sampler, default noise or None when the set has no noise parameter)
_SAMPLERS: dict[str, tuple[_Sampler, float | None]] = {
    "checkerboard": (_checkerboard, None),
    "2spirals": (_two_spirals, 0.1),
    "8gaussians": (_eight_gaussians, 0.5),
    "olympic": (_olympic, 0.01 * math.sqrt(0.2)),
    "swissroll": (_swissroll, 0.01),
    "moons": (_moons, 0.01),
    "sierpinski": (_sierpinski, None),
    "tree": (_tree, None),
    "pinwheel": (_pinwheel, None),
    "circles": (_circles, 0.01),
}

#: The names :func:`sample_toy` accepts.
TOY_DATASETS: tuple[str, ...] = tuple(_SAMPLERS)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or name not in _SAMPLERS:
        raise ValueError(f"name must be one of {', '.join(TOY_DATASETS)}; got {name!r}")
    return name


def _check_count(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {type(n).__name__}")
    if n < 0:
        raise ValueError(f"{name} must be non-negative, got {n}")
    return int(n)


def sample_toy(
    name: str,
    n: int,
    *,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    noise: float | None = None,
) -> Tensor:
    r"""Draws ``n`` points of a 2D toy data set, in its raw coordinates (see the module table).

    Arguments:
        name: One of :data:`TOY_DATASETS`.
        n: The number of points.
        seed: Seeds a fresh CPU generator (the same seed gives the same points). At most one of
            ``seed`` and ``generator``; with neither, the draw is nondeterministic.
        generator: A CPU :class:`torch.Generator` to draw from (advanced in place).
        dtype: The floating dtype of the result (points are drawn in float64).
        noise: The standard deviation of the Gaussian perturbation, for the sets that have one
            (default: the official configuration's).

    Returns:
        A tensor of shape ``(n, 2)``.

    Example:
        >>> x = sample_toy("checkerboard", 4, seed=0)
        >>> x.shape
        torch.Size([4, 2])
        >>> torch.equal(x, sample_toy("checkerboard", 4, seed=0))
        True
    """
    sampler, default_noise = _SAMPLERS[_check_name(name)]
    n = _check_count("n", n)
    if noise is None:
        noise = default_noise
    elif default_noise is None:
        raise ValueError(f"noise must be None for {name!r}, which has no noise parameter")
    elif not noise >= 0:
        raise ValueError(f"noise must be non-negative, got {noise}")
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    if seed is not None and generator is not None:
        raise ValueError("give at most one of seed and generator, got both")
    if generator is None:
        generator = torch.Generator()
        if seed is None:
            generator.seed()
        else:
            generator.manual_seed(int(seed))
    elif not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    return sampler(n, generator, noise or 0.0).to(dtype)


class ToyPreprocessor:
    r"""The affine preprocessing of DiffFlow's 2D data: scale so that ``max|x| = max_abs``, then
    standardize each coordinate.

    .. math:: T(x) = \frac{s x - \mu}{\sigma}, \qquad s = \frac{0.85}{\max_{i,j} |x_{ij}|}

    with :math:`\mu, \sigma` the per-coordinate mean and (population) standard deviation of the
    scaled fitting sample. By the change of variables,

    .. math:: \log p_x(x) = \log p_y(T(x)) + \log|\det \partial T / \partial x|,
        \qquad \log|\det \partial T / \partial x| = \sum_j \log(s / \sigma_j)

    so an NLL measured on standardized data converts to raw data coordinates as
    ``nll_x = nll_y - log_abs_det``.

    The state is three plain tensors (``scale`` of shape ``()``, ``mean`` and ``std`` of shape
    ``(d,)``); the object pickles, and :meth:`state_dict` / :meth:`from_state_dict` round-trip.

    Arguments:
        scale: The scalar ``s``.
        mean: The mean :math:`\mu` of the scaled data.
        std: The standard deviation :math:`\sigma` of the scaled data.

    Example:
        >>> x = sample_toy("moons", 100, seed=0, dtype=torch.float64)
        >>> pre = ToyPreprocessor.fit(x)
        >>> y = pre(x)
        >>> torch.allclose(y.mean(0), torch.zeros(2, dtype=torch.float64), atol=1e-12)
        True
        >>> torch.allclose(pre.inverse(y), x)
        True
    """

    def __init__(self, scale: Tensor, mean: Tensor, std: Tensor) -> None:
        scale, mean, std = (torch.as_tensor(v) for v in (scale, mean, std))
        if scale.dim() != 0 or not scale > 0:
            raise ValueError(f"scale must be a positive scalar, got {scale}")
        if mean.dim() != 1 or std.shape != mean.shape:
            raise ValueError(
                f"mean and std must be vectors of one shape, got {tuple(mean.shape)} and "
                f"{tuple(std.shape)}"
            )
        if not (std > 0).all():
            raise ValueError(f"std must be positive, got {std}")
        self.scale, self.mean, self.std = scale, mean, std

    @classmethod
    def fit(cls, x: Tensor, max_abs: float = 0.85) -> ToyPreprocessor:
        r"""Fits the map to a sample.

        Arguments:
            x: Data of shape ``(n, d)``, ``n >= 2``.
            max_abs: The largest absolute coordinate after scaling.

        Returns:
            The fitted preprocessor.
        """
        if not isinstance(x, Tensor) or x.dim() != 2 or x.shape[0] < 2:
            shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be a tensor of shape (n, d) with n >= 2, got {shape}")
        if not max_abs > 0:
            raise ValueError(f"max_abs must be positive, got {max_abs}")
        peak = x.abs().max()
        if not peak > 0:
            raise ValueError("x must not be all zeros")
        scale = max_abs / peak
        scaled = x * scale
        std = scaled.std(dim=0, unbiased=False)
        if not (std > 0).all():
            raise ValueError(f"x must vary along every coordinate, got std {std}")
        return cls(scale, scaled.mean(dim=0), std)

    def forward(self, x: Tensor) -> Tensor:
        """Maps raw data ``x`` of shape ``(..., d)`` to standardized data."""
        return (x * self.scale.to(x) - self.mean.to(x)) / self.std.to(x)

    __call__ = forward

    def inverse(self, y: Tensor) -> Tensor:
        """Maps standardized data ``y`` back to raw coordinates."""
        return (y * self.std.to(y) + self.mean.to(y)) / self.scale.to(y)

    @property
    def log_abs_det(self) -> Tensor:
        r"""The scalar :math:`\log|\det \partial T / \partial x|`, the same for every point."""
        return (self.scale.log() - self.std.log()).sum()

    def log_abs_det_jacobian(self, x: Tensor) -> Tensor:
        """:attr:`log_abs_det` for each point of ``x`` of shape ``(..., d)``: shape ``(...)``."""
        return self.log_abs_det.to(x).expand(x.shape[:-1])

    def state_dict(self) -> dict[str, Tensor]:
        """The state as a dict of tensors (copies)."""
        return {"scale": self.scale.clone(), "mean": self.mean.clone(), "std": self.std.clone()}

    @classmethod
    def from_state_dict(cls, state: dict[str, Tensor]) -> ToyPreprocessor:
        """Rebuilds a preprocessor from :meth:`state_dict`'s output."""
        missing = {"scale", "mean", "std"} - set(state)
        if missing:
            raise ValueError(f"state must have keys scale, mean and std; missing {sorted(missing)}")
        return cls(state["scale"], state["mean"], state["std"])

    def to(self, *args, **kwargs) -> ToyPreprocessor:
        """A copy with every tensor moved/cast as by :meth:`torch.Tensor.to`."""
        return ToyPreprocessor(*(v.to(*args, **kwargs) for v in (self.scale, self.mean, self.std)))

    def __repr__(self) -> str:
        return (
            f"ToyPreprocessor(scale={self.scale.item():.4g}, mean={self.mean.tolist()}, "
            f"std={self.std.tolist()})"
        )


def load_toy(
    name: str,
    n_train: int,
    n_test: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    noise: float | None = None,
) -> tuple[Tensor, Tensor, ToyPreprocessor]:
    r"""Draws a training and a held-out test sample and standardizes both with the map fitted
    on the training sample (the test sample is drawn from an independent stream of ``seed``).

    Arguments:
        name: One of :data:`TOY_DATASETS`.
        n_train: The training sample size (at least 2).
        n_test: The test sample size.
        seed: The seed of both samples.
        dtype: The floating dtype of the samples.
        noise: As in :func:`sample_toy`.

    Returns:
        ``(train, test, preprocessor)``: standardized tensors of shapes ``(n_train, 2)`` and
        ``(n_test, 2)``, and the fitted :class:`ToyPreprocessor` (raw = ``inverse(standardized)``).

    Example:
        >>> train, test, pre = load_toy("8gaussians", 64, 16, seed=1)
        >>> train.shape, test.shape
        (torch.Size([64, 2]), torch.Size([16, 2]))
    """
    if _check_count("n_train", n_train) < 2:
        raise ValueError(f"n_train must be >= 2 (the standardization is fitted on the training "
                         f"sample), got {n_train}")
    _check_count("n_test", n_test)
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    train_seed, test_seed = (
        int(s.generate_state(1, np.uint64)[0] >> np.uint64(1))
        for s in np.random.SeedSequence(int(seed)).spawn(2)
    )
    train = sample_toy(name, n_train, seed=train_seed, dtype=torch.float64, noise=noise)
    test = sample_toy(name, n_test, seed=test_seed, dtype=torch.float64, noise=noise)
    pre = ToyPreprocessor.fit(train)
    return pre(train).to(dtype), pre(test).to(dtype), pre.to(dtype)

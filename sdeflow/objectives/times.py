r"""Time-sampling laws for the regression objectives: where in :math:`[t_0, t_1]` the loss is
evaluated. Each law draws a batch of times with a generator:
``law.sample(n, dtype=..., device=..., generator=...)``, a tensor ``(n,)``.

- :class:`UniformTime`: :math:`t = t_0 + (t_1 - t_0)\,u`, :math:`u \sim \mathcal{U}[0, 1)`;
- :class:`LogitNormalTime`: :math:`t = t_0 + (t_1 - t_0)\,\mathrm{sigmoid}(m + s\,n)`,
  :math:`n \sim \mathcal{N}(0, 1)` (more weight mid-path; Esser et al., 2024);
- :class:`GridTime`: uniform over a :class:`~sdeflow.grids.TimeGrid`'s times
  :math:`t_1, \dots, t_N`, the times at which a sampler stepping down that grid evaluates the
  model (the data time :math:`t_0` is not drawn).

:data:`TIME_LAWS` names them for recipes (``model.time``): each factory builds the law on a
model's :class:`~sdeflow.grids.TimeGrid` (its range, or its times) from the keys it declares.

References:
    Scaling Rectified Flow Transformers for High-Resolution Image Synthesis (Esser et al., 2024),
    https://arxiv.org/abs/2403.03206
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
from torch import Tensor

from sdeflow.grids import TimeGrid
from sdeflow.registry import Registry

__all__ = ["TimeSampler", "UniformTime", "LogitNormalTime", "GridTime", "TIME_LAWS"]


def _check_range(t0: float, t1: float) -> tuple[float, float]:
    t0, t1 = float(t0), float(t1)
    if not t0 < t1:
        raise ValueError(f"need t0 < t1, got t0={t0}, t1={t1}")
    return t0, t1


def _check_n(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")


class TimeSampler(ABC):
    """A law of the training times on :math:`[t_0, t_1]` (attributes ``t0``, ``t1``)."""

    t0: float
    t1: float

    @abstractmethod
    def sample(self, n: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        """``n`` times, a tensor ``(n,)`` of ``dtype`` on ``device``."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(t0={self.t0}, t1={self.t1})"


class UniformTime(TimeSampler):
    r""":math:`t \sim \mathcal{U}[t_0, t_1)`, drawn as :math:`t_0 + (t_1 - t_0)\,u` (one
    ``torch.rand`` per batch, as :class:`~sdeflow.objectives.DenoisingScoreMatching` draws).

    Example:
        >>> t = UniformTime(0.1, 0.5).sample(1000, generator=torch.Generator().manual_seed(0))
        >>> bool((t >= 0.1).all() and (t < 0.5).all())
        True
    """

    def __init__(self, t0: float, t1: float) -> None:
        self.t0, self.t1 = _check_range(t0, t1)

    def sample(self, n: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        _check_n(n)
        u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        return self.t0 + (self.t1 - self.t0) * u


class LogitNormalTime(TimeSampler):
    r""":math:`t = t_0 + (t_1 - t_0)\,\mathrm{sigmoid}(m + s\,n)`, :math:`n \sim \mathcal{N}(0,1)`.

    Arguments:
        t0: Start of the range.
        t1: End of the range.
        loc: :math:`m` (0: symmetric about the middle of the range).
        scale: :math:`s > 0`.

    Example:
        >>> law = LogitNormalTime(0.0, 1.0, loc=0.0, scale=1.0)
        >>> t = law.sample(4000, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> round(float(t.median()), 1)
        0.5
    """

    def __init__(self, t0: float = 0.0, t1: float = 1.0, *, loc: float = 0.0,
                 scale: float = 1.0) -> None:
        self.t0, self.t1 = _check_range(t0, t1)
        if not scale > 0:
            raise ValueError(f"scale must be > 0, got {scale}")
        self.loc, self.scale = float(loc), float(scale)

    def sample(self, n: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        _check_n(n)
        z = torch.randn(n, generator=generator, dtype=dtype, device=device)
        return self.t0 + (self.t1 - self.t0) * torch.sigmoid(self.loc + self.scale * z)

    def __repr__(self) -> str:
        return (f"LogitNormalTime(t0={self.t0}, t1={self.t1}, loc={self.loc}, "
                f"scale={self.scale})")


class GridTime(TimeSampler):
    r"""Uniform over the times :math:`t_1, \dots, t_N` of a grid (not :math:`t_0`, the data's).

    Example:
        >>> from sdeflow import TimeGrid
        >>> law = GridTime(TimeGrid.uniform(4, 0.0, 1.0))
        >>> sorted(set(law.sample(200, generator=torch.Generator().manual_seed(0)).tolist()))
        [0.25, 0.5, 0.75, 1.0]
    """

    def __init__(self, grid: TimeGrid) -> None:
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        self.grid = grid
        self.t0, self.t1 = grid.t0, grid.t1

    def sample(self, n: int, *, dtype: torch.dtype = torch.float32,
               device: torch.device | str | None = None,
               generator: torch.Generator | None = None) -> Tensor:
        _check_n(n)
        gen_device = generator.device if generator is not None else device
        idx = torch.randint(1, self.grid.n_steps + 1, (n,), generator=generator,
                            device=gen_device)
        ts = self.grid.ts.to(device=idx.device, dtype=dtype)
        return ts[idx].to(device)

    def __repr__(self) -> str:
        return f"GridTime({self.grid!r})"


#: The time laws by name (a recipe's ``model.time``); factories ``(grid, **keys) ->
#: TimeSampler`` on a model's grid: ``uniform`` on ``[grid.t0, grid.t1]``, ``logit_normal``
#: there (keys ``time_loc``, ``time_scale``), ``grid`` on the grid's times.
TIME_LAWS: Registry = Registry("time law", key="model.time")


@TIME_LAWS.register("uniform")
def uniform_time(grid: TimeGrid) -> UniformTime:
    """:class:`UniformTime` on ``[grid.t0, grid.t1]``.

    Example:
        >>> TIME_LAWS.get("uniform")(TimeGrid.uniform(4, 0.0, 1.0))
        UniformTime(t0=0.0, t1=1.0)
    """
    return UniformTime(grid.t0, grid.t1)


@TIME_LAWS.register("logit_normal", optional={"time_loc": (int, float),
                                              "time_scale": (int, float)})
def logit_normal_time(grid: TimeGrid, *, time_loc: float = 0.0,
                      time_scale: float = 1.0) -> LogitNormalTime:
    """:class:`LogitNormalTime` on ``[grid.t0, grid.t1]`` with ``loc=time_loc``,
    ``scale=time_scale``."""
    return LogitNormalTime(grid.t0, grid.t1, loc=time_loc, scale=time_scale)


@TIME_LAWS.register("grid")
def grid_time(grid: TimeGrid) -> GridTime:
    """:class:`GridTime` on the grid's times."""
    return GridTime(grid)

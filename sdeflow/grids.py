r"""Time grids :math:`t_0 < t_1 < \dots < t_N` on which SDEs are discretized.

The grid is its own object, never welded onto a process: the same forward SDE can be trained on
a jittered grid, evaluated on a fine one and sampled on a coarse one.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["TimeGrid"]


class TimeGrid:
    r"""An increasing 1-D tensor of times :math:`ts = (t_0, \dots, t_N)`.

    :math:`dt_i = t_{i+1} - t_i > 0` and :math:`N` is :attr:`n_steps`.

    Arguments:
        ts: Increasing, finite, 1-D tensor (or sequence) with at least two entries.

    Example:
        >>> grid = TimeGrid.uniform(4, 0.0, 1.0)
        >>> grid.ts
        tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
        >>> grid.n_steps, float(grid.dts.sum())
        (4, 1.0)
    """

    def __init__(self, ts: Tensor | list[float] | tuple[float, ...]) -> None:
        if not isinstance(ts, Tensor):
            ts = torch.as_tensor(ts, dtype=torch.get_default_dtype())
        if ts.dim() != 1:
            raise ValueError(f"ts must be a 1-D tensor of times, got shape {tuple(ts.shape)}")
        if ts.numel() < 2:
            raise ValueError(f"ts must hold at least two times (one step), got {ts.numel()}")
        if not ts.is_floating_point():
            raise TypeError(f"ts must be a floating-point tensor, got dtype {ts.dtype}")
        if not torch.isfinite(ts).all():
            raise ValueError("ts must be finite, got NaN or inf")
        if not (ts[1:] > ts[:-1]).all():
            raise ValueError(f"ts must be strictly increasing, got {ts.tolist()}")
        self.ts = ts

    # -- constructors --------------------------------------------------------------------------
    @classmethod
    def uniform(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r""":math:`t_i = t_0 + (t_1 - t_0)\, i / N`.

        Example:
            >>> TimeGrid.uniform(2, 0.0, 1.0).ts
            tensor([0.0000, 0.5000, 1.0000])
        """
        _check_steps(n_steps, t0, t1)
        return cls(torch.linspace(t0, t1, n_steps + 1, dtype=dtype, device=device))

    @classmethod
    def power(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        exponent: float,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r"""Spacing uniform in :math:`t^{p}` (the DiffFlow paper's grid, :math:`p = 0.9`):

        .. math:: t_i = \left(t_0^{p} + (t_1^{p} - t_0^{p})\, i / N\right)^{1/p}.

        Example:
            >>> g = TimeGrid.power(30, 1e-3, 0.05, 0.9)
            >>> g.n_steps, round(float(g.ts[0]), 6), round(float(g.ts[-1]), 6)
            (30, 0.001, 0.05)
        """
        _check_steps(n_steps, t0, t1)
        if not exponent > 0:
            raise ValueError(f"exponent must be > 0, got {exponent}")
        if t0 < 0:
            raise ValueError(f"t0 must be >= 0 for a power grid, got {t0}")
        u = torch.linspace(0.0, 1.0, n_steps + 1, dtype=torch.float64)
        ts = (t0**exponent + (t1**exponent - t0**exponent) * u) ** (1.0 / exponent)
        ts[0], ts[-1] = t0, t1  # exact end points despite the round trip through t**p
        return cls(ts.to(dtype=dtype or torch.get_default_dtype(), device=device))

    # -- derived quantities --------------------------------------------------------------------
    @property
    def dts(self) -> Tensor:
        r"""Step sizes :math:`dt_i = t_{i+1} - t_i`, shape ``(N,)``."""
        return self.ts[1:] - self.ts[:-1]

    @property
    def n_steps(self) -> int:
        """Number of steps :math:`N` (one less than the number of times)."""
        return self.ts.numel() - 1

    @property
    def t0(self) -> float:
        return float(self.ts[0])

    @property
    def t1(self) -> float:
        return float(self.ts[-1])

    @property
    def dtype(self) -> torch.dtype:
        return self.ts.dtype

    @property
    def device(self) -> torch.device:
        return self.ts.device

    def __len__(self) -> int:
        return self.ts.numel()

    # -- transformations -----------------------------------------------------------------------
    def jitter(self, generator: torch.Generator | None = None) -> TimeGrid:
        r"""The paper's random grid: each interior time is redrawn uniformly inside its cell.

        The cell of :math:`t_i` is :math:`[t_i - dt_{i-1}/2,\ t_i + dt_i/2)`; the cells are
        disjoint, so the result is increasing, and the end points stay fixed.

        Example:
            >>> g = TimeGrid.uniform(10, 0.0, 1.0).jitter(torch.Generator().manual_seed(0))
            >>> bool((g.dts > 0).all()), g.t0, g.t1
            (True, 0.0, 1.0)
        """
        ts, dts = self.ts, self.dts
        if generator is not None and generator.device != ts.device:
            u = torch.rand(ts.numel() - 2, generator=generator, dtype=ts.dtype).to(ts.device)
        else:
            u = torch.rand(ts.numel() - 2, generator=generator, dtype=ts.dtype, device=ts.device)
        lo = ts[1:-1] - dts[:-1] / 2
        width = (dts[:-1] + dts[1:]) / 2
        interior = lo + u * width
        return TimeGrid(torch.cat([ts[:1], interior, ts[-1:]]))

    def to(self, *args, **kwargs) -> TimeGrid:
        """Move or cast the times, as :meth:`torch.Tensor.to`."""
        return TimeGrid(self.ts.to(*args, **kwargs))

    def refine(self, factor: int) -> TimeGrid:
        """Split every step into ``factor`` equal sub-steps (nested grids for order tests).

        Example:
            >>> TimeGrid.uniform(2, 0.0, 1.0).refine(2).ts
            tensor([0.0000, 0.2500, 0.5000, 0.7500, 1.0000])
        """
        if not (isinstance(factor, int) and factor >= 1):
            raise ValueError(f"factor must be an integer >= 1, got {factor!r}")
        frac = torch.arange(factor, dtype=self.ts.dtype, device=self.ts.device) / factor
        fine = (self.ts[:-1, None] + self.dts[:, None] * frac).reshape(-1)
        return TimeGrid(torch.cat([fine, self.ts[-1:]]))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TimeGrid) and torch.equal(self.ts, other.ts)

    __hash__ = None  # mutable tensor inside

    def __repr__(self) -> str:
        return (
            f"TimeGrid(n_steps={self.n_steps}, t0={self.t0:.4g}, t1={self.t1:.4g}, "
            f"dtype={self.dtype})"
        )


def _check_steps(n_steps: int, t0: float, t1: float) -> None:
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not t1 > t0:
        raise ValueError(f"t1 must be greater than t0, got t0={t0}, t1={t1}")

r"""Time grids :math:`t_0 < t_1 < \dots < t_N` on which SDEs are discretized.

The grid is its own object, never welded onto a process: the same forward SDE can be trained on
a jittered grid, evaluated on a fine one and sampled on a coarse one. :data:`GRIDS` names the
kinds a recipe chooses from, each with its random training grid.

Example:
    >>> GRIDS.names(), GRIDS.required("power")
    (('power', 's_curve', 'uniform'), ('t0', 't1', 'exponent'))
    >>> GRIDS.entry("s_curve").extras["random"] == TimeGrid.s_curve_random
    True
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sdeflow._grid_math import (
    _S_CURVE_X,
    _S_CURVE_X_START,
    _S_CURVE_Y,
    _check_steps,
    _draw_in_gaps,
    _not_a_knot_cubic,
    _random_base,
)
from sdeflow.registry import Registry

__all__ = ["TimeGrid", "GRIDS"]


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

    @classmethod
    def s_curve(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        *,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r"""The official DiffFlow S-curve grid (``utils/scalars.py``, ``STimer`` with ``up=True``):
        the step sizes follow an S-shaped curve, from very short near :math:`t = 0` up to a
        plateau of long steps over the second half of the grid.

        With :math:`h` the not-a-knot cubic spline (scipy's ``interp1d(kind="cubic")``) through
        the knots :math:`x = (0, 0.1, 0.2, 0.4, 0.7, 0.9, 1)`,
        :math:`y = (10^{-4}, 0.05, 0.1, 0.6, 0.93, 0.98, 1)`, the step weights are
        :math:`w_k = h(x_k)` at :math:`x_k = 10^{-4} + (1 - 10^{-4})\, k / N` and

        .. math:: t_k = \frac{t_0 + \sum_{j \le k} w_j}{t_0 + \sum_{j=0}^{N} w_j}\, t_1,
            \qquad k = 0, \dots, N.

        So :math:`dt_k = w_{k+1}\, t_1 / (t_0 + \sum_j w_j)`: the steps are samples of
        :math:`h`, which increases from :math:`h(10^{-4}) \approx 2.3 \cdot 10^{-4}` to
        :math:`h(1) = 1`; the last step is the longest. As in the official code, ``t0`` (its
        ``t_start``) is an offset added to the cumulative weights, not the first time: the grid
        starts at :math:`(t_0 + w_0)\, t_1 / (t_0 + \sum_j w_j)`, far below ``t0`` (about
        ``3.3e-6`` for ``N = 30`` on ``[1e-3, 0.05]``), and ends at ``t1`` exactly. The weights
        are computed in float64 and the times cast to ``dtype`` at the end.

        Arguments:
            n_steps: :math:`N \ge 1`.
            t0: The offset :math:`t_0 \ge 0` (the official ``t_start``).
            t1: The last time :math:`t_1 > t_0` (the official ``t_end``).

        Example:
            >>> g = TimeGrid.s_curve(30, 1e-3, 0.05, dtype=torch.float64)
            >>> g.n_steps, f"{g.t0:.2e}", g.t1, bool((g.dts[1:] > g.dts[:-1]).all())
            (30, '3.26e-06', 0.05, True)
        """
        _check_steps(n_steps, t0, t1)
        if not t0 >= 0:
            raise ValueError(f"t0 must be >= 0 for an S-curve grid, got {t0}")
        knots_x = torch.tensor(_S_CURVE_X, dtype=torch.float64)
        knots_y = torch.tensor(_S_CURVE_Y, dtype=torch.float64)
        x = torch.linspace(_S_CURVE_X_START, 1.0, n_steps + 1, dtype=torch.float64)
        weights = _not_a_knot_cubic(knots_x, knots_y, x)
        cumulative = t0 + torch.cumsum(weights, 0)
        ts = cumulative / cumulative[-1] * t1  # the last ratio is exactly 1: t_N = t1
        return cls(ts.to(dtype=dtype or torch.get_default_dtype(), device=device))

    @classmethod
    def s_curve_random(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        *,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r"""The official random S-curve grid (``utils/scalars.py``, ``STimer.rand()``): the
        grid on which the official code *trains*, a fresh draw at every iteration, while the
        fixed :meth:`s_curve` grid is the one it samples and evaluates on.

        With :math:`T_0 < \dots < T_N` the times of :meth:`s_curve` (``n_steps`` :math:`= N`),
        the official code first builds :math:`N` base times by linear interpolation of the
        fixed times, as functions of their abscissae :math:`10^{-4} + (1 - 10^{-4})\, k / N`,
        at the :math:`N` abscissae :math:`10^{-4} + (1 - 10^{-4})\, k / (N - 1)`; that is, at
        the fractional positions :math:`k N / (N - 1)` of the fixed grid:

        .. math:: r_k = T_{j} + (s_k - j)\,(T_{j+1} - T_{j}),
            \qquad s_k = \frac{k N}{N - 1},\ j = \lfloor s_k \rfloor,\ k = 0, \dots, N - 1,

        so :math:`r_0 = T_0` and :math:`r_{N-1} = T_N = t_1`. It then keeps both end points
        and draws one time uniformly inside each of the :math:`N - 1` gaps of the base:

        .. math:: t_0 = r_0, \qquad t_i = r_{i-1} + u_i\,(r_i - r_{i-1})
            \ (i = 1, \dots, N - 1), \qquad t_N = r_{N-1}, \qquad u_i \sim U[0, 1).

        The result has :math:`N + 1` times, so :math:`N` steps, as the official training sees
        it: ``modules/sde_loss.py`` passes ``timer.rand()`` to ``forward_cond``, whose loop
        (``networks/base_model.py``) takes one step per pair of consecutive times. So the
        official ``num_steps`` (the :math:`N` of the recipes, e.g. ``N_values`` 5 to 75 in
        ``cont_cifar.yaml``) is the number of *steps* of both the fixed and the random grid,
        and ``n_steps`` here is that :math:`N`; only the intermediate base has :math:`N`
        points. This is not :meth:`jitter` of the fixed grid: the mean of :math:`t_i` is the
        midpoint of :math:`[r_{i-1}, r_i]`, not :math:`T_i`, and the first and last steps
        are half a base gap long on average while the others are a whole gap.

        Differences from the official code, none of which changes the distribution: the
        times are computed in float64 (the official code casts the base to float32 before
        adding the draws) and cast to ``dtype`` at the end; the uniforms are drawn in float64
        (the official code draws float32 ``torch.rand(N - 1)`` from the global generator; pass
        those as ``uniforms`` to repeat its grid). A draw whose times, once cast to ``dtype``,
        are not strictly increasing (:math:`u_1 = 0`, or :math:`u_i` so close to an end of its
        gap that the time rounds onto :math:`r_{i-1}` or :math:`r_i`: in float32 of order
        :math:`10^{-6}` per grid) is drawn again; the official code keeps such a grid and
        divides by its zero step.

        Arguments:
            n_steps: :math:`N \ge 2` (the official base needs at least one gap).
            t0: The offset :math:`t_0 \ge 0` of :meth:`s_curve` (the official ``t_start``).
            t1: The last time :math:`t_1 > t_0` (the official ``t_end``).
            generator: The generator of the uniforms (torch's global one if ``None``).
            uniforms: Instead of drawing them, the :math:`N - 1` uniforms
                :math:`u_1, \dots, u_{N-1} \in [0, 1)`, shape ``(N - 1,)``.
            dtype: The dtype of the times (torch's default if ``None``).
            device: The device of the times.

        Example:
            >>> g = TimeGrid.s_curve_random(30, 1e-3, 0.05, dtype=torch.float64,
            ...                             generator=torch.Generator().manual_seed(0))
            >>> fixed = TimeGrid.s_curve(30, 1e-3, 0.05, dtype=torch.float64)
            >>> g.n_steps, g.t0 == fixed.t0, g.t1, bool((g.dts > 0).all())
            (30, True, 0.05, True)
            >>> u = torch.full((4,), 0.5, dtype=torch.float64)  # every gap's midpoint
            >>> TimeGrid.s_curve_random(5, 0.0, 1.0, uniforms=u).n_steps
            5
        """
        _check_steps(n_steps, t0, t1)
        _random_base(n_steps, "S-curve", generator, uniforms)
        fixed = cls.s_curve(n_steps, t0, t1, dtype=torch.float64).ts
        positions = torch.arange(n_steps, dtype=torch.float64) * n_steps / (n_steps - 1)
        j = positions.floor().long().clamp(max=n_steps - 1)
        base = fixed[j] + (positions - j) * (fixed[j + 1] - fixed[j])
        base[0], base[-1] = fixed[0], fixed[-1]  # exactly: r_0 = T_0, r_{N-1} = T_N = t1
        return cls(_draw_in_gaps(base, lambda v: v, generator, uniforms, dtype, device))

    @classmethod
    def power_random(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        exponent: float,
        *,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r"""The official random power grid (``utils/scalars.py``, ``ExpTimer.rand()``): the grid
        the official code trains on when its "cont" recipes (``cont_mnist.yaml``) draw a fresh
        grid at every iteration (``modules/sde_loss.py``); :meth:`power` is its fixed grid.

        In :math:`v = t^{p}` the official code lays :math:`N` base points (not :math:`N + 1`),
        :math:`r_k = t_0^{p} + (t_1^{p} - t_0^{p})\, k / (N - 1)`, :math:`k = 0, \dots, N - 1`,
        keeps both ends and draws one time uniformly in :math:`v` inside each of the
        :math:`N - 1` gaps:

        .. math:: t_0 = t_0, \qquad t_i = \left(r_{i-1} + u_i\,(r_i - r_{i-1})\right)^{1/p}
            \ (i = 1, \dots, N - 1), \qquad t_N = t_1, \qquad u_i \sim U[0, 1).

        So :math:`t_i^{p} \sim U[r_{i-1}, r_i]` and

        .. math:: \mathbb{E}[t_i] = \frac{p}{p + 1}\,
            \frac{r_i^{(p+1)/p} - r_{i-1}^{(p+1)/p}}{r_i - r_{i-1}}.

        :math:`N + 1` times, :math:`N` steps, as :meth:`s_curve_random`. The official code
        mirrors both its grids (:math:`t \mapsto t_0 + t_1 - t`) when :math:`p > 1`;
        :meth:`power` does not, and neither does this, its random counterpart (the official
        recipes use :math:`p \le 1`). Computed in float64, cast to ``dtype`` at the end; a draw
        whose cast times are not strictly increasing is drawn again (see :meth:`s_curve_random`).

        Arguments:
            n_steps: :math:`N \ge 2`.
            t0: The first time :math:`t_0 \ge 0`.
            t1: The last time :math:`t_1 > t_0`.
            exponent: :math:`p > 0`.
            generator: The generator of the uniforms (torch's global one if ``None``).
            uniforms: Instead of drawing them, :math:`u_1, \dots, u_{N-1} \in [0, 1)`,
                shape ``(N - 1,)`` (the official ``torch.rand(N - 1)`` repeats its grid).
            dtype: The dtype of the times (torch's default if ``None``).
            device: The device of the times.

        Example:
            >>> g = TimeGrid.power_random(30, 1e-3, 0.1, 0.5, dtype=torch.float64,
            ...                           generator=torch.Generator().manual_seed(0))
            >>> g.n_steps, g.t0, g.t1, bool((g.dts > 0).all())
            (30, 0.001, 0.1, True)
            >>> u = torch.full((2,), 0.5, dtype=torch.float64)  # the midpoints in t^p
            >>> TimeGrid.power_random(3, 0.0, 1.0, 0.5, uniforms=u, dtype=torch.float64).ts
            tensor([0.0000, 0.0625, 0.5625, 1.0000], dtype=torch.float64)
        """
        _check_steps(n_steps, t0, t1)
        if not exponent > 0:
            raise ValueError(f"exponent must be > 0, got {exponent}")
        if t0 < 0:
            raise ValueError(f"t0 must be >= 0 for a power grid, got {t0}")
        base = _random_base(n_steps, "power", generator, uniforms)
        lo, hi = float(t0) ** exponent, float(t1) ** exponent
        base = lo + (hi - lo) * base
        base[0], base[-1] = lo, hi

        def to_time(v: Tensor) -> Tensor:
            ts = v ** (1.0 / exponent)
            ts[0], ts[-1] = t0, t1  # exact end points despite the round trip through t**p
            return ts

        return cls(_draw_in_gaps(base, to_time, generator, uniforms, dtype, device))

    @classmethod
    def uniform_random(
        cls,
        n_steps: int,
        t0: float,
        t1: float,
        *,
        generator: torch.Generator | None = None,
        uniforms: Tensor | None = None,
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> TimeGrid:
        r"""The random counterpart of :meth:`uniform`: :meth:`power_random` with :math:`p = 1`
        (``ExpTimer(exp=1).rand()``), one time uniform in each of the :math:`N - 1` gaps of
        :math:`N` equally spaced base points, both ends kept.

        Example:
            >>> u = torch.full((2,), 0.5, dtype=torch.float64)
            >>> TimeGrid.uniform_random(3, 0.0, 1.0, uniforms=u, dtype=torch.float64).ts
            tensor([0.0000, 0.2500, 0.7500, 1.0000], dtype=torch.float64)
        """
        _check_steps(n_steps, t0, t1)
        base = t0 + (t1 - t0) * _random_base(n_steps, "uniform", generator, uniforms)
        base[0], base[-1] = t0, t1
        return cls(_draw_in_gaps(base, lambda v: v, generator, uniforms, dtype, device))

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


_NUMBER = (int, float)

#: The time grids by name (a recipe's ``grid.kind``). Each factory is ``(n_steps, **keys) ->
#: TimeGrid`` with the grid table's keys; ``extras["random"]``, of the same signature, is the
#: kind's random training grid (``grid.jitter = true``; a kind without one trains on
#: :meth:`TimeGrid.jitter` of its fixed grid).
GRIDS: Registry[Callable[..., TimeGrid]] = Registry("grid", key="grid.kind")
GRIDS.register("power", TimeGrid.power, random=TimeGrid.power_random,
               required={"t0": _NUMBER, "t1": _NUMBER, "exponent": _NUMBER})
GRIDS.register("s_curve", TimeGrid.s_curve, random=TimeGrid.s_curve_random,
               required={"t0": _NUMBER, "t1": _NUMBER})
GRIDS.register("uniform", TimeGrid.uniform, random=TimeGrid.uniform_random,
               required={"t0": _NUMBER, "t1": _NUMBER})

r"""Hypothesis strategies for property tests of step schemes and processes.

Each strategy draws a ready-made sdeflow object: :func:`grids` (uniform, power or jittered),
:func:`schedules` (constant or linear), :func:`state_shapes` and :func:`states` (any shape),
:func:`linear_processes` (VP, sub-VP, VE, OU), :func:`nonlinear_processes` (DiffFlow-like forward
SDEs with a nonlinear, time-dependent drift), :func:`reverse_processes` and :func:`discretizers`.
Tensors are drawn from a seed (Hypothesis shrinks the seed and the scale, not every entry).

Example:
    >>> from hypothesis import given, settings
    >>> import sdeflow.testing.strategies as sst
    >>> @settings(max_examples=5, deadline=None)
    ... @given(grid=sst.grids(), x=sst.states())
    ... def test_grid(grid, x):
    ...     assert bool((grid.dts > 0).all()) and x.dim() >= 2
    >>> test_grid()
"""

from __future__ import annotations

import torch
from hypothesis import strategies as st
from torch import Tensor, nn

from sdeflow.discretizers import DISCRETIZERS, Discretizer
from sdeflow.grids import TimeGrid
from sdeflow.processes import SDE, VESDE, VPSDE, ForwardSDE, ReverseSDE, SubVPSDE
from sdeflow.schedules import ConstantSchedule, LinearSchedule, Schedule
from sdeflow.testing.problems import OU

__all__ = ["TanhDrift", "SineScore", "grids", "schedules", "state_shapes", "states",
           "linear_processes", "nonlinear_processes", "reverse_processes", "discretizers"]


class TanhDrift(nn.Module):
    r"""A nonlinear, time-dependent drift :math:`f(x, t) = a \tanh(b x) + c\,(1 + t)\,x`."""

    def __init__(self, a: float, b: float, c: float) -> None:
        super().__init__()
        self.a, self.b, self.c = float(a), float(b), float(c)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        t = t.reshape(t.shape + (1,) * (x.dim() - t.dim()))
        return self.a * torch.tanh(self.b * x) + self.c * (1.0 + t) * x

    def extra_repr(self) -> str:
        return f"a={self.a:.3g}, b={self.b:.3g}, c={self.c:.3g}"


class SineScore(nn.Module):
    r"""A nonlinear score :math:`s(x, t) = -k x + m \sin(x)`."""

    def __init__(self, k: float, m: float) -> None:
        super().__init__()
        self.k, self.m = float(k), float(m)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return -self.k * x + self.m * torch.sin(x)

    def extra_repr(self) -> str:
        return f"k={self.k:.3g}, m={self.m:.3g}"


def _floats(lo: float, hi: float) -> st.SearchStrategy[float]:
    return st.floats(lo, hi, allow_nan=False, allow_infinity=False)


@st.composite
def grids(draw, min_steps: int = 1, max_steps: int = 8, t_min: float = 0.0, t_max: float = 1.0,
          kinds: tuple[str, ...] = ("uniform", "power", "jittered"),
          dtype: torch.dtype = torch.float64) -> TimeGrid:
    """A :class:`~sdeflow.grids.TimeGrid` inside ``[t_min, t_max]``: uniform, power-spaced
    (exponent in [0.5, 2]) or uniform then jittered."""
    n = draw(st.integers(min_steps, max_steps))
    span = t_max - t_min
    t0 = draw(_floats(t_min, t_min + 0.5 * span))
    t1 = draw(_floats(t0 + 0.05 * span, t_max))
    kind = draw(st.sampled_from(kinds))
    if kind == "power":
        return TimeGrid.power(n, t0, t1, draw(_floats(0.5, 2.0)), dtype=dtype)
    grid = TimeGrid.uniform(n, t0, t1, dtype=dtype)
    if kind == "jittered":
        grid = grid.jitter(torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1))))
    return grid


def schedules(min_value: float = 0.1, max_value: float = 2.0,
              kinds: tuple[str, ...] = ("constant", "linear")) -> st.SearchStrategy[Schedule]:
    """Positive diffusion schedules :math:`g(t)` on ``[0, 1]``: constant or linear."""
    options = []
    if "constant" in kinds:
        options.append(st.builds(ConstantSchedule, _floats(min_value, max_value)))
    if "linear" in kinds:
        options.append(st.builds(LinearSchedule, _floats(min_value, max_value),
                                 _floats(min_value, max_value)))
    return st.one_of(options)


def state_shapes(max_batch: int = 4, max_state_dims: int = 3,
                 max_side: int = 3) -> st.SearchStrategy[tuple[int, ...]]:
    """``(B, *state)`` with ``1 <= B <= max_batch`` and 1 to ``max_state_dims`` state dims."""
    return st.tuples(st.integers(1, max_batch),
                     st.lists(st.integers(1, max_side), min_size=1, max_size=max_state_dims)
                     ).map(lambda bs: (bs[0],) + tuple(bs[1]))


@st.composite
def states(draw, shape: tuple[int, ...] | None = None,
           dtype: torch.dtype = torch.float64) -> Tensor:
    """A state tensor of ``shape`` (drawn from :func:`state_shapes` when ``None``): standard
    normal entries from a drawn seed, times a drawn scale in [0.1, 3]."""
    shape = shape if shape is not None else draw(state_shapes())
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    return torch.randn(shape, generator=gen, dtype=dtype) * draw(_floats(0.1, 3.0))


def linear_processes() -> st.SearchStrategy[SDE]:
    """VP, sub-VP, VE and OU processes (:class:`~sdeflow.processes.LinearSDE`\\ s, ``T = 1``)."""
    vp = st.builds(VPSDE, _floats(0.05, 1.0), _floats(1.0, 10.0))
    sub_vp = st.builds(SubVPSDE, _floats(0.05, 1.0), _floats(1.0, 10.0))
    ve = st.builds(VESDE, _floats(0.01, 0.1), _floats(1.0, 10.0))
    ou = st.builds(OU, _floats(0.2, 3.0), _floats(0.2, 2.0))
    return st.one_of(vp, sub_vp, ve, ou)


def nonlinear_processes() -> st.SearchStrategy[ForwardSDE]:
    """DiffFlow-like :class:`~sdeflow.processes.ForwardSDE`\\ s: :class:`TanhDrift` drift and a
    :func:`schedules` diffusion."""
    drift = st.builds(TanhDrift, _floats(-2.0, 2.0), _floats(0.2, 2.0), _floats(-1.0, 0.5))
    return st.builds(ForwardSDE, drift, schedules())


def reverse_processes(forward: st.SearchStrategy[SDE] | None = None
                      ) -> st.SearchStrategy[ReverseSDE]:
    """:class:`~sdeflow.processes.ReverseSDE`\\ s of ``forward`` processes (linear or nonlinear by
    default) with a :class:`SineScore` and :math:`\\lambda \\in [0.2, 1.5]`."""
    if forward is None:
        forward = st.one_of(linear_processes(), nonlinear_processes())
    score = st.builds(SineScore, _floats(0.2, 2.0), _floats(-0.5, 0.5))
    return st.builds(ReverseSDE, forward, score, _floats(0.2, 1.5))


def discretizers(gaussian: bool | None = None) -> st.SearchStrategy[Discretizer]:
    """Instances of the registered step schemes (only Gaussian ones with ``gaussian=True``)."""
    classes = [c for _, c in sorted(DISCRETIZERS.items())
               if gaussian is None or c.gaussian == gaussian]
    return st.sampled_from(classes).map(lambda cls: cls())

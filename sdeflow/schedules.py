r"""Diffusion schedules :math:`g(t)`: the scalar noise scale of :math:`dx = f\,dt + g(t)\,dw`.

A schedule is an :class:`torch.nn.Module` mapping a tensor of times to a tensor of the same shape,
dtype and device. A plain number means a constant schedule (see :func:`as_schedule`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Schedule", "ConstantSchedule", "LinearSchedule", "FunctionSchedule", "as_schedule",
           "schedule_values"]


class Schedule(nn.Module, ABC):
    r"""Base class of diffusion schedules :math:`t \mapsto g(t) \ge 0`.

    The contract of :meth:`forward`: given a tensor of times, return :math:`g` as a tensor shaped
    like ``t`` or broadcastable to it (a 0-d tensor for a constant), on ``t``'s device;
    :func:`schedule_values` broadcasts and checks it, so a user's schedule works wherever a
    built-in one does.

    Example:
        >>> class Sqrt(Schedule):  # a user's schedule: g(t) = sqrt(1 + t)
        ...     def forward(self, t): return (1 + t).sqrt()
        >>> schedule_values(Sqrt(), torch.tensor([0.0, 3.0]))
        tensor([1., 2.])
    """

    @abstractmethod
    def forward(self, t: Tensor) -> Tensor:
        """:math:`g(t)`, shaped like ``t`` (or broadcastable to it)."""

    def is_zero(self) -> bool:
        """Whether :math:`g \\equiv 0` (the normalizing-flow limit)."""
        return False


class ConstantSchedule(Schedule):
    r""":math:`g(t) = c`.

    Example:
        >>> ConstantSchedule(0.2)(torch.tensor([0.0, 1.0]))
        tensor([0.2000, 0.2000])
    """

    def __init__(self, value: float) -> None:
        super().__init__()
        value = float(value)
        if not (value >= 0 and value < float("inf")):
            raise ValueError(f"diffusion must be a finite number >= 0, got {value}")
        self.value = value

    def forward(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.value)

    def is_zero(self) -> bool:
        return self.value == 0.0

    def extra_repr(self) -> str:
        return f"value={self.value}"


class LinearSchedule(Schedule):
    r""":math:`g(t) = g_0 + (g_1 - g_0)\,(t - t_0)/(t_1 - t_0)`.

    Example:
        >>> LinearSchedule(0.1, 1.1, t0=0.0, t1=1.0)(torch.tensor([0.0, 0.5]))
        tensor([0.1000, 0.6000])
    """

    def __init__(self, g0: float, g1: float, t0: float = 0.0, t1: float = 1.0) -> None:
        super().__init__()
        if not t1 > t0:
            raise ValueError(f"t1 must be greater than t0, got t0={t0}, t1={t1}")
        if not (0 <= g0 < float("inf") and 0 <= g1 < float("inf")):
            raise ValueError(f"g0 and g1 must be finite numbers >= 0, got g0={g0}, g1={g1}")
        self.g0, self.g1, self.t0, self.t1 = float(g0), float(g1), float(t0), float(t1)

    def forward(self, t: Tensor) -> Tensor:
        return self.g0 + (self.g1 - self.g0) * (t - self.t0) / (self.t1 - self.t0)

    def is_zero(self) -> bool:
        return self.g0 == 0.0 and self.g1 == 0.0

    def extra_repr(self) -> str:
        return f"g0={self.g0}, g1={self.g1}, t0={self.t0}, t1={self.t1}"


def schedule_values(schedule: Callable[[Tensor], Tensor], t: Tensor) -> Tensor:
    r""":math:`g(t)` from ``schedule``, broadcast to ``t``'s shape and checked against the contract
    of :class:`Schedule` (a tensor broadcastable to ``t``, on its device; numbers are accepted).

    Example:
        >>> schedule_values(lambda t: torch.tensor(0.5), torch.zeros(3))
        tensor([0.5000, 0.5000, 0.5000])
    """
    g = schedule(t)
    if not isinstance(g, Tensor):
        if isinstance(g, (int, float)) and not isinstance(g, bool):
            return torch.full_like(t, float(g))
        raise TypeError(f"a diffusion schedule must return a tensor (or a number) for g(t), "
                        f"got {type(g).__name__} from {schedule!r}")
    if g.shape != t.shape:
        try:
            g = g.expand(t.shape)
        except RuntimeError:
            raise ValueError(
                f"a diffusion schedule must return g(t) shaped like t {tuple(t.shape)} or "
                f"broadcastable to it (e.g. 0-d), got shape {tuple(g.shape)} from {schedule!r}"
            ) from None
    if g.device != t.device:
        raise ValueError(f"a diffusion schedule must return g(t) on t's device {t.device}, got "
                         f"{g.device} from {schedule!r}")
    return g if g.dtype == t.dtype else g.to(t.dtype)


class FunctionSchedule(Schedule):
    r"""Any callable :math:`t \mapsto g(t)` returning a tensor shaped like ``t``.

    Example:
        >>> FunctionSchedule(lambda t: 1 + t)(torch.tensor([1.0]))
        tensor([2.])
    """

    def __init__(self, fn: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        self.fn = fn

    def forward(self, t: Tensor) -> Tensor:
        return schedule_values(self.fn, t)


def as_schedule(diffusion: float | Schedule | Callable[[Tensor], Tensor]) -> Schedule:
    """A :class:`Schedule` from a number (constant), a schedule, or a callable of ``t``.

    Example:
        >>> as_schedule(0.5)
        ConstantSchedule(value=0.5)
    """
    if isinstance(diffusion, Schedule):
        return diffusion
    if isinstance(diffusion, bool):
        raise TypeError("diffusion must be a number, a Schedule or a callable, got bool")
    if isinstance(diffusion, (int, float)):
        return ConstantSchedule(diffusion)
    if callable(diffusion):
        return FunctionSchedule(diffusion)
    raise TypeError(
        f"diffusion must be a number, a Schedule or a callable of t, got {type(diffusion).__name__}"
    )

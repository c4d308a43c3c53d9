r"""Diffusion schedules :math:`g(t)`: the scalar noise scale of :math:`dx = f\,dt + g(t)\,dw`.

A schedule is an :class:`torch.nn.Module` mapping a tensor of times to a tensor of the same shape,
dtype and device. A plain number means a constant schedule (see :func:`as_schedule`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable

import torch
from torch import Tensor, nn

__all__ = ["Schedule", "ConstantSchedule", "LinearSchedule", "FunctionSchedule", "as_schedule"]


class Schedule(nn.Module, ABC):
    r"""Base class of diffusion schedules :math:`t \mapsto g(t) \ge 0`."""

    @abstractmethod
    def forward(self, t: Tensor) -> Tensor:
        """:math:`g(t)`, shaped like ``t``."""

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
        g = self.fn(t)
        if not isinstance(g, Tensor):
            g = torch.as_tensor(g, dtype=t.dtype, device=t.device)
        return g.expand_as(t) if g.shape != t.shape else g


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

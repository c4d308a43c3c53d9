r"""The DiffFlow forward process: a trainable drift and a fixed diffusion schedule,

.. math:: dx = f_\theta(x, t)\,dt + g(t)\,dw.

With :math:`g \equiv 0` the same object is a continuous normalizing flow (the paper's Theorem 1).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from sdeflow._checks import as_time, expand_to
from sdeflow.conditioning import bind, replaced
from sdeflow.processes.base import SDE
from sdeflow.schedules import Schedule, as_schedule, schedule_values

__all__ = ["ForwardSDE"]


class ForwardSDE(SDE):
    r"""Forward SDE :math:`dx = f(x, t)\,dt + g(t)\,dw` with any drift callable.

    Arguments:
        drift: ``f(x, t)``: a callable or :class:`torch.nn.Module` returning a tensor shaped like
            ``x`` (DiffFlow's trainable drift network).
        diffusion: :math:`g(t)`: a number (constant), a :class:`~sdeflow.schedules.Schedule`, or
            a callable of ``t``. ``0`` gives a normalizing flow.

    References:
        Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579

    Example:
        >>> import torch
        >>> sde = ForwardSDE(lambda x, t: -x, diffusion=0.2)
        >>> x = torch.ones(3, 2)
        >>> sde.drift(x, torch.tensor(0.0)).shape, sde.diffusion(x, torch.tensor(0.0))
        (torch.Size([3, 2]), tensor(0.2000))
    """

    additive_noise = True

    def __init__(
        self, drift: Callable[[Tensor, Tensor], Tensor], diffusion: float | Schedule | Callable
    ) -> None:
        super().__init__()
        if not callable(drift):
            raise TypeError(f"drift must be callable f(x, t), got {type(drift).__name__}")
        self.drift_fn = drift
        self.schedule = as_schedule(diffusion)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        t = as_time(t, x)
        f = self.drift_fn(x, t)
        if not isinstance(f, Tensor) or f.shape != x.shape:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ValueError(f"drift(x, t) must return a tensor shaped like x {tuple(x.shape)}, "
                             f"got {got}")
        return f

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_to(schedule_values(self.schedule, as_time(t, x)), x)

    def diffusion_scale(self, t: Tensor) -> Tensor:
        return schedule_values(self.schedule, t)

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> ForwardSDE:
        """A copy with the drift bound to ``condition`` (:meth:`SDE.conditioned
        <sdeflow.processes.SDE.conditioned>`), or ``self`` when the drift takes none."""
        drift = bind(self.drift_fn, condition, guidance)
        return self if drift is self.drift_fn else replaced(self, drift_fn=drift)

    def is_flow(self) -> bool:
        """Whether :math:`g \\equiv 0`, i.e. this process is a normalizing flow."""
        return self.schedule.is_zero()

    def extra_repr(self) -> str:
        return "" if isinstance(self.drift_fn, nn.Module) else f"drift={self.drift_fn!r}"

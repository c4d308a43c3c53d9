r"""Euler–Maruyama: :math:`x' = x + b(x, t)\,dt + \sigma(x, t)\sqrt{|dt|}\,\delta`.

Forward DiffFlow step (``dt > 0``): :math:`x_{i+1} = x_i + f(x_i, t_i)\,dt_i + g_i\sqrt{dt_i}\,
\delta^F_i`. Reverse step (``dt = -dt_i`` from :math:`t_{i+1}`): :math:`x_i = x_{i+1} -
[f - g^2 s](x_{i+1}, t_{i+1})\,dt_i + g_{i+1}\sqrt{dt_i}\,\delta^B_i`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdeflow.discretizers.base import Discretizer, register_discretizer
from sdeflow.discretizers.stepper import AffineSteps
from sdeflow.processes.base import SDE

__all__ = ["EulerMaruyama"]


@register_discretizer("euler_maruyama")
class EulerMaruyama(Discretizer):
    r"""Euler–Maruyama scheme: strong order 1/2 (1 for additive noise), weak order 1.

    Its transition is Gaussian: mean :math:`x + b\,dt`, std :math:`\sigma\sqrt{|dt|}`; on
    additive noise its steps are affine, :math:`(\alpha, \beta, \sigma) = (1,\ dt,\
    g(t)\sqrt{|dt|})`.

    Example:
        >>> import torch
        >>> from sdeflow.processes import ForwardSDE
        >>> sde = ForwardSDE(lambda x, t: -x, diffusion=0.5)
        >>> x = torch.ones(1, 2)
        >>> mean, std = EulerMaruyama().transition(sde, x, torch.tensor(0.0), torch.tensor(0.25))
        >>> mean, std
        (tensor([[0.7500, 0.7500]]), tensor(0.2500))
    """

    strong_order = 0.5
    strong_order_additive = 1.0
    weak_order = 1.0
    gaussian = True

    def transition(
        self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, drift: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        b = sde.drift(x, t) if drift is None else drift
        return x + b * dt, sde.diffusion(x, t) * dt.abs().sqrt()

    def affine_steps(self, sde: SDE, t: Tensor, dt: Tensor) -> AffineSteps:
        return AffineSteps(torch.ones_like(dt), dt, sde.diffusion_scale(t) * dt.abs().sqrt())

    def step(self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> Tensor:
        mean, std = self.transition(sde, x, t, dt)
        return mean + std * noise

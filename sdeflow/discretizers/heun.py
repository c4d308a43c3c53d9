r"""Stochastic Heun: a predictor–corrector (trapezoidal) scheme for Stratonovich SDEs,

.. math::
    \tilde x &= x + b(x, t)\,dt + \sigma(x, t)\,\Delta W, \\
    x' &= x + \tfrac12\,[b(x, t) + b(\tilde x, t + dt)]\,dt
          + \tfrac12\,[\sigma(x, t) + \sigma(\tilde x, t + dt)]\,\Delta W,

with :math:`\Delta W = \sqrt{|dt|}\,\delta`. It converges to the *Stratonovich* solution of
:math:`(b, \sigma)`. When the noise is additive (:math:`\sigma` depends on :math:`t` only, as for
every DiffFlow, VP, VE and reverse process) the Itô and Stratonovich solutions coincide, so Heun
is then a valid scheme for sdeflow's (Itô) processes. A process with state-dependent noise is
accepted only if it declares ``sde_type = "stratonovich"``; otherwise :meth:`StochasticHeun.step`
raises a :class:`TypeError` rather than silently solving another equation.

The step is not Gaussian in :math:`\delta` (:math:`b(\tilde x)` is nonlinear in it), so the scheme
has no :meth:`~sdeflow.discretizers.Discretizer.transition`: use it to sample
(``rsample``, :func:`~sdeflow.sample`), not inside ``log_prob`` or the DiffFlow objective.

Orders (diagonal noise is commutative, so the general-noise strong order is 1): strong 1.0, weak
1.0; with additive noise the same trapezoidal drift average gives weak order 2.0 (Kloeden &
Platen's order-2.0 weak predictor–corrector for additive noise), measured by the test kit.

References:
    Numerical Solution of Stochastic Differential Equations (Kloeden & Platen, 1992), §15.1.
    Numerical Solution of Stratonovich SDEs (Rümelin, SIAM J. Numer. Anal., 1982).
"""

from __future__ import annotations

from torch import Tensor

from sdeflow.discretizers.base import Discretizer, register_discretizer
from sdeflow.processes.base import SDE

__all__ = ["StochasticHeun"]


@register_discretizer("heun")
class StochasticHeun(Discretizer):
    r"""Stochastic Heun scheme (Stratonovich): strong order 1, weak order 1 (2 for additive noise).

    Two drift and two diffusion evaluations per step; ``dt < 0`` steps a reverse process down in
    time exactly as :class:`~sdeflow.discretizers.EulerMaruyama` does.

    Example:
        >>> import torch
        >>> from sdeflow.processes import ForwardSDE
        >>> sde = ForwardSDE(lambda x, t: -x, diffusion=0.5)
        >>> x = torch.ones(1, 2)
        >>> StochasticHeun().step(sde, x, torch.tensor(0.0), torch.tensor(0.5), torch.zeros(1, 2))
        tensor([[0.6250, 0.6250]])
    """

    strong_order = 1.0
    strong_order_additive = 1.0
    weak_order = 1.0
    #: Weak order when the diffusion depends on ``t`` only (read by :mod:`sdeflow.testing`).
    weak_order_additive = 2.0
    gaussian = False
    #: The calculus whose solution the scheme converges to.
    sde_type = "stratonovich"

    def declines(self, sde: SDE) -> str | None:
        if sde.additive_noise or sde.sde_type == "stratonovich":
            return None
        return (f"StochasticHeun solves Stratonovich SDEs; {type(sde).__name__} is an Itô process "
                "with state-dependent noise. Give it the Stratonovich drift b - (1/2) sigma "
                "d(sigma)/dx and sde_type = 'stratonovich', or use EulerMaruyama")

    def step(self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> Tensor:
        reason = self.declines(sde)
        if reason is not None:
            raise TypeError(reason)
        dw = noise * dt.abs().sqrt()
        b0, s0 = sde.drift(x, t), sde.diffusion(x, t)
        x_pred = x + b0 * dt + s0 * dw
        t1 = t + dt
        b1, s1 = sde.drift(x_pred, t1), sde.diffusion(x_pred, t1)
        return x + 0.5 * (b0 + b1) * dt + 0.5 * (s0 + s1) * dw

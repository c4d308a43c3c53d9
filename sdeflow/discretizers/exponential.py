r"""Exponential integrator for processes with a linear drift part (VP, sub-VP, VE, their reverses).

Write the drift as a linear part plus a remainder, :math:`b(x, t) = a(t)\,x + n(x, t)`, with
additive noise :math:`\sigma(t)`. Over a step from :math:`t` to :math:`t + h` (:math:`h` signed)
variation of constants gives, exactly,

.. math::
    x_{t+h} = \Phi\,x_t + \int_t^{t+h} e^{\int_u^{t+h} a}\, n(x_u, u)\,du
              + \int_t^{t+h} e^{\int_u^{t+h} a}\,\sigma(u)\,dW_u,
    \qquad \Phi = e^{\int_t^{t+h} a}.

The scheme keeps the linear part exact, freezes the remainder at :math:`(x_t, t)` (Euler, as in
DEIS / DPM-Solver-1 for the score term) and uses the exact variance of the noise integral:

.. math::
    x' = \Phi\,x + \Psi\,n(x, t) + \sqrt{V}\,\delta, \qquad
    \Psi = h\,\varphi_1(\log\Phi), \quad \varphi_1(z) = \frac{e^z - 1}{z}, \qquad
    V = \Big|\int_t^{t+h} e^{2\int_u^{t+h} a}\,\sigma(u)^2\,du\Big|.

(:math:`\Psi` is exact for constant :math:`a`; for time-varying :math:`a` it uses the mean rate
over the step, an :math:`O(h^2)` change inside the :math:`O(h^2)` local error of the frozen
remainder.) With the marginal coefficients :math:`x_t \mid x_0 \sim \mathcal{N}(m(t)\,x_0,
s(t)^2)` of a :class:`~sdeflow.processes.LinearSDE`, :math:`\Phi = m(t+h)/m(t)` and
:math:`V = \lambda^2\,|s(t+h)^2 - \Phi^2 s(t)^2|` for either sign of :math:`h` (``λ = 1`` for the
forward process).

Which processes: any process that declares a linear part
(:meth:`SDE.linear_part <sdeflow.processes.SDE.linear_part>`): a
:class:`~sdeflow.processes.LinearSDE` (then :math:`n = 0` and the step is the exact transition),
the reverse family of one (drift :math:`a(t)\,x - \tfrac{1+\lambda^2}{2} g^2 s(x, t)`: the same
linear part and the score term as remainder), or a user's process declaring one. Any other
process raises a :class:`TypeError` (no silent fall-back to Euler–Maruyama: a nonlinear DiffFlow
drift has no linear part to integrate exactly).

The step is affine, :math:`x' = (\Phi - \Psi a(t))\,x + \Psi\, b(x, t) + \sqrt{V}\,\delta`,
and declares these coefficients (:meth:`ExponentialIntegrator.affine_steps`).

Orders: strong 1.0 (all accepted processes have additive noise), weak 1.0; exact in distribution
on linear processes (:math:`n = 0`).

References:
    Fast Sampling of Diffusion Models with Exponential Integrator (Zhang & Chen, 2022),
    https://arxiv.org/abs/2204.13902
    DPM-Solver (Lu et al., 2022), https://arxiv.org/abs/2206.00927
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdeflow._checks import as_time, expand_to
from sdeflow.discretizers.base import Discretizer, register_discretizer
from sdeflow.discretizers.stepper import AffineSteps
from sdeflow.processes.base import SDE, LinearPart

__all__ = ["ExponentialIntegrator"]


def _phi1(z: Tensor) -> Tensor:
    r""":math:`(e^z - 1)/z`, continuous at 0 (and with finite gradients there)."""
    small = z.abs() < 1e-6
    z_safe = torch.where(small, torch.ones_like(z), z)
    return torch.where(small, 1.0 + 0.5 * z, torch.expm1(z_safe) / z_safe)


@register_discretizer("exponential")
class ExponentialIntegrator(Discretizer):
    r"""Exponential integrator: linear drift part exact, remainder (score) by Euler, exact noise
    variance of the linear SDE over the step. Gaussian transition; strong and weak order 1.

    Example:
        >>> import torch
        >>> from sdeflow.processes import VPSDE
        >>> sde, x0 = VPSDE(), torch.ones(1, 1)
        >>> t, dt = torch.tensor(0.0), torch.tensor(0.3)
        >>> mean, std = ExponentialIntegrator().transition(sde, x0, t, dt)
        >>> exact_mean, exact_std = sde.marginal(x0, t + dt)  # one step from 0 is exact
        >>> torch.allclose(mean, exact_mean), torch.allclose(std, exact_std)
        (True, True)
    """

    strong_order = 1.0
    strong_order_additive = 1.0
    weak_order = 1.0
    gaussian = True

    def declines(self, sde: SDE) -> str | None:
        if sde.linear_part() is None:
            return (f"ExponentialIntegrator needs a process with a declared linear drift part "
                    f"(linear_part(): VP, sub-VP, VE, their reverse family, ...); "
                    f"{type(sde).__name__} declares none; use EulerMaruyama or StochasticHeun")
        return None

    def linear_part(self, sde: SDE) -> LinearPart:
        """``sde``'s declared linear part, or a :class:`TypeError` saying the scheme declines it."""
        reason = self.declines(sde)
        if reason is not None:
            raise TypeError(reason)
        return sde.linear_part()

    def coefficients(self, sde: SDE, t: Tensor, dt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        r""":math:`(\Phi - \Psi a(t),\ \Psi,\ \sqrt{V})` for steps from ``t`` by ``dt`` (tensors of
        one shape): the mean is :math:`\alpha x + \beta b(x, t)`, the std :math:`\sigma`."""
        part = self.linear_part(sde)
        linear = part.coefficients
        m0, s0 = linear.marginal_coefs(t)
        m1, s1 = linear.marginal_coefs(t + dt)
        ratio = m1 / m0  # Phi = exp(int_t^{t+h} a)
        var = (part.noise_scale**2) * (s1.pow(2) - ratio.pow(2) * s0.pow(2)).abs()
        psi = dt * _phi1(ratio.log())
        # mean = Phi x + Psi (b - a x): the remainder n = b - a x is zero for a linear process
        return ratio - psi * linear.drift_coef(t), psi, var.sqrt()

    def affine_steps(self, sde: SDE, t: Tensor, dt: Tensor) -> AffineSteps:
        return AffineSteps(*self.coefficients(sde, t, dt))

    def transition(
        self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, drift: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        t = as_time(t, x)
        alpha, beta, sigma = self.coefficients(sde, t, dt)
        b = sde.drift(x, t) if drift is None else drift
        return expand_to(alpha, x) * x + expand_to(beta, x) * b, expand_to(sigma, x)

    def step(self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> Tensor:
        mean, std = self.transition(sde, x, t, dt)
        return mean + std * noise

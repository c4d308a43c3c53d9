r"""Test problems with solutions known given the Brownian path (for strong and weak orders).

- :func:`gbm_problem`: geometric Brownian motion :math:`dx = \mu x\,dt + \sigma x\,dW` (general,
  state-dependent noise), :math:`x_T = x_0 \exp((\mu - \sigma^2/2) T + \sigma W_T)`.
- :func:`ou_problem`: Ornstein–Uhlenbeck :math:`dx = -\theta x\,dt + \sigma\,dW` (additive noise,
  a :class:`~sdeflow.processes.LinearSDE`).
- :func:`reverse_ou_problem`: the :class:`~sdeflow.processes.ReverseSDE` of an OU process with the
  linear score :math:`s(x) = c\,x`, stepped *down* in time (negative ``dt``). In reversed time
  :math:`\tau = T - t` it is again linear: :math:`dx = (\theta + \kappa)\,x\,d\tau +
  \lambda\sigma\,dW_\tau` with :math:`\kappa = \tfrac{1+\lambda^2}{2}\sigma^2 c`.

For a linear problem :math:`dx = -r x\,d\tau + q\,dW` the solution
:math:`x_T = e^{-rT} x_0 + q\int_0^T e^{-r(T-u)}\,dW_u` is evaluated with the Brownian path
piecewise linear on the fine grid (error :math:`O(\delta)` in :math:`L^2` for fine step
:math:`\delta`; the kit uses a grid 16 times finer than its finest level).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from sdeflow.processes.base import SDE
from sdeflow.processes.linear import LinearSDE
from sdeflow.processes.reverse import ReverseSDE

__all__ = ["GBM", "OU", "Problem", "gbm_problem", "ou_problem", "reverse_ou_problem",
           "default_problems"]


class GBM(SDE):
    r"""Geometric Brownian motion :math:`dx = \mu x\,dt + \sigma x\,dW` (Itô).

    ``sde_type="stratonovich"`` gives the same process in Stratonovich form, drift
    :math:`(\mu - \sigma^2/2)\,x`, for schemes that solve Stratonovich SDEs.

    Example:
        >>> import torch
        >>> GBM(0.5, 0.2).drift(torch.ones(1, 1), torch.tensor(0.0))
        tensor([[0.5000]])
    """

    additive_noise = False

    def __init__(self, mu: float, sigma: float, sde_type: str = "ito") -> None:
        super().__init__()
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}")
        self.mu, self.sigma, self.sde_type = float(mu), float(sigma), sde_type

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        shift = 0.5 * self.sigma**2 if self.sde_type == "stratonovich" else 0.0
        return (self.mu - shift) * x

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return self.sigma * x

    def extra_repr(self) -> str:
        return f"mu={self.mu}, sigma={self.sigma}, sde_type={self.sde_type!r}"


class OU(LinearSDE):
    r"""Ornstein–Uhlenbeck :math:`dx = -\theta x\,dt + \sigma\,dW`, :math:`\theta > 0`:
    :math:`m(t) = e^{-\theta t}`, :math:`s(t)^2 = \sigma^2 (1 - e^{-2\theta t}) / (2\theta)`.

    Example:
        >>> import torch
        >>> _, std = OU(1.0, 2.0).marginal(torch.zeros(1, 1), torch.tensor(50.0))
        >>> round(float(std) ** 2, 4)  # stationary variance sigma^2 / (2 theta)
        2.0
    """

    def __init__(self, theta: float, sigma: float, T: float = 1.0) -> None:
        super().__init__()
        if not (theta > 0 and sigma > 0):
            raise ValueError(f"need theta > 0 and sigma > 0, got theta={theta}, sigma={sigma}")
        self.theta, self.sigma, self.T = float(theta), float(sigma), float(T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.full_like(t, -self.theta)

    def g(self, t: Tensor) -> Tensor:
        return torch.full_like(t, self.sigma)

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        var = self.sigma**2 * -torch.expm1(-2 * self.theta * t) / (2 * self.theta)
        return torch.exp(-self.theta * t), var.clamp_min(0).sqrt()

    def prior_std(self) -> float:
        return self.sigma / math.sqrt(2 * self.theta)

    def extra_repr(self) -> str:
        return f"theta={self.theta}, sigma={self.sigma}"


class _LinearScore:
    """The score ``s(x, t) = c x`` (a module-level class, so problems pickle)."""

    def __init__(self, c: float) -> None:
        self.c = float(c)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        return self.c * x

    def __repr__(self) -> str:
        return f"LinearScore(c={self.c})"


@dataclass
class Problem:
    r"""An SDE on :math:`[t_0, t_1]` with its solution given the Brownian path.

    Attributes:
        name: Short name used in reports.
        make_sde: ``make_sde(sde_type)`` builds the process in Itô or Stratonovich form.
        x0: Initial value (states are ``(paths, 1)``).
        t0, t1: Time interval; a ``reverse`` problem starts at ``t1`` and steps down to ``t0``.
        additive: Whether the noise is additive (then ``strong_order_additive`` applies).
        solution: ``solution(x0, dw)`` with ``dw`` the Brownian increments ``(paths, K)`` on a
            uniform grid of ``K`` cells, in integration order; returns :math:`x` at the end.
    """

    name: str
    make_sde: Callable[[str], SDE]
    x0: float
    t0: float
    t1: float
    reverse: bool
    additive: bool
    solution: Callable[[Tensor, Tensor], Tensor]

    def sde(self, sde_type: str = "ito") -> SDE:
        return self.make_sde(sde_type)

    @property
    def duration(self) -> float:
        return self.t1 - self.t0


def _gbm_solution(mu: float, sigma: float, T: float) -> Callable[[Tensor, Tensor], Tensor]:
    def solution(x0: Tensor, dw: Tensor) -> Tensor:
        w_T = dw.sum(-1, keepdim=True)
        return x0 * torch.exp((mu - 0.5 * sigma**2) * T + sigma * w_T)

    return solution


def _linear_solution(r: float, q: float, T: float) -> Callable[[Tensor, Tensor], Tensor]:
    r"""``x_T = e^{-rT} x_0 + q sum_j w_j dW_j``, ``w_j`` the mean of ``e^{-r(T-u)}`` on cell j."""

    def solution(x0: Tensor, dw: Tensor) -> Tensor:
        k = dw.shape[-1]
        delta = T / k
        u_end = torch.arange(1, k + 1, dtype=dw.dtype, device=dw.device) * delta
        # mean of e^{-r(T-u)} over [u_end - delta, u_end]: e^{-r(T-u_end)} phi1(-r delta)
        cell_mean = torch.exp(-r * (T - u_end)) * _phi1_scalar(-r * delta)
        return math.exp(-r * T) * x0 + q * (dw * cell_mean).sum(-1, keepdim=True)

    return solution


def _phi1_scalar(z: float) -> float:
    r""":math:`(e^z - 1)/z`, continuous at 0."""
    return 1.0 if z == 0 else math.expm1(z) / z


def gbm_problem(mu: float = 0.5, sigma: float = 0.6, x0: float = 1.0, T: float = 1.0) -> Problem:
    """Geometric Brownian motion on ``[0, T]`` (general noise)."""
    return Problem("gbm", lambda sde_type: GBM(mu, sigma, sde_type), x0, 0.0, T, reverse=False,
                   additive=False, solution=_gbm_solution(mu, sigma, T))


def ou_problem(theta: float = 1.5, sigma: float = 0.8, x0: float = 1.0, T: float = 1.0) -> Problem:
    """Ornstein–Uhlenbeck on ``[0, T]`` (additive noise, linear)."""
    return Problem("ou", lambda sde_type: OU(theta, sigma, T), x0, 0.0, T, reverse=False,
                   additive=True, solution=_linear_solution(theta, sigma, T))


def reverse_ou_problem(theta: float = 1.0, sigma: float = 1.0, c: float = -1.5, lam: float = 1.0,
                       x0: float = 1.0, T: float = 1.0) -> Problem:
    r"""The reverse of an OU process with score :math:`c\,x`, from :math:`T` down to 0."""
    kappa = 0.5 * (1 + lam**2) * sigma**2 * c
    return Problem(
        "reverse_ou", lambda sde_type: ReverseSDE(OU(theta, sigma, T), _LinearScore(c), lam),
        x0, 0.0, T, reverse=True, additive=True,
        solution=_linear_solution(-(theta + kappa), lam * sigma, T),
    )


def default_problems() -> list[Problem]:
    """The problems :func:`~sdeflow.testing.check_discretizer` measures orders on."""
    return [gbm_problem(), ou_problem(), reverse_ou_problem()]


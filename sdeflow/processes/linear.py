r"""Linear forward processes with closed-form marginals (score-based diffusion).

Each is :math:`dx = a(t)\,x\,dt + g(t)\,dw`, so :math:`x_t \mid x_0 \sim
\mathcal{N}(m(t)\,x_0,\ \sigma(t)^2 I)` with :math:`m(t) = \exp\int_0^t a` and
:math:`\sigma(t)^2 = \int_0^t m(t)^2/m(s)^2\, g(s)^2\, ds`.

References:
    Score-Based Generative Modeling through Stochastic Differential Equations (Song et al., 2021),
    https://arxiv.org/abs/2011.13456
"""

from __future__ import annotations

import math
from abc import abstractmethod

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from sdeflow._checks import as_time, expand_to
from sdeflow.processes.base import SDE, LinearPart, PathCoefficients
from sdeflow.schedules import schedule_values

__all__ = ["LinearSDE", "VPSDE", "SubVPSDE", "VESDE"]


class LinearSDE(SDE):
    r"""Base class: drift :math:`a(t)\,x`, diffusion :math:`g(t)`, marginals in closed form.

    Subclasses implement :meth:`drift_coef` :math:`a(t)`, :meth:`g` and :meth:`marginal_coefs`
    :math:`(m(t), \sigma(t))`, and :meth:`prior_std`.
    """

    T: float = 1.0
    additive_noise = True
    closed_form_marginals = True
    affine_path = True

    @abstractmethod
    def drift_coef(self, t: Tensor) -> Tensor:
        """:math:`a(t)`."""

    @abstractmethod
    def g(self, t: Tensor) -> Tensor:
        """:math:`g(t)`."""

    @abstractmethod
    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(m(t), \\sigma(t))`."""

    @abstractmethod
    def prior_std(self) -> float:
        """Std of the reference distribution at :math:`T`."""

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_to(self.drift_coef(as_time(t, x)), x) * x

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return expand_to(self.g(as_time(t, x)), x)

    def diffusion_scale(self, t: Tensor) -> Tensor:
        return schedule_values(self.g, t)

    def linear_part(self) -> LinearPart:
        r"""Itself: the drift is :math:`a(t)\,x` with no remainder, noise scale 1."""
        return LinearPart(self, 1.0)

    def marginal(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Mean and std of :math:`x_t \mid x_0`: ``(m(t) x0, sigma(t))``, std broadcastable."""
        t = as_time(t, x0)
        m, s = self.marginal_coefs(t)
        return expand_to(m, x0) * x0, expand_to(s, x0)

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        r"""The process as an affine path :math:`x_t = m(t)\,x_0 + \sigma(t)\,\epsilon`:
        :math:`(m, \sigma, m', \sigma')` with :math:`m' = a\,m` and, from
        :math:`(\sigma^2)' = 2a\sigma^2 + g^2`, :math:`\sigma' = a\,\sigma + g^2/(2\sigma)`
        (infinite where :math:`\sigma = 0 < g`, as for VP and VE at :math:`t = 0`).

        Example:
            >>> import torch
            >>> alpha, sigma, d_alpha, d_sigma = VESDE(0.01, 50.0).path_coefficients(torch.ones(1))
            >>> float(d_alpha), round(float(d_sigma / sigma), 4)  # VE: sigma' = sigma log(50/0.01)
            (0.0, 8.5172)
        """
        a = self.drift_coef(t)
        m, s = self.marginal_coefs(t)
        g = self.diffusion_scale(t)
        return PathCoefficients(m, s, a * m, a * s + g.square() / (2 * s))

    def prior(
        self, state_shape: tuple[int, ...], *, dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> Distribution:
        r"""The reference distribution :math:`\mathcal{N}(0, \sigma_T^2 I)` at :math:`t = T`."""
        loc = torch.zeros(state_shape, dtype=dtype, device=device)
        return Independent(Normal(loc, torch.full_like(loc, self.prior_std())), len(state_shape))


class VPSDE(LinearSDE):
    r"""Variance-preserving SDE :math:`dx = -\tfrac12\beta(t)\,x\,dt + \sqrt{\beta(t)}\,dw`,

    :math:`\beta(t) = \beta_0 + (\beta_1 - \beta_0)\,t/T`; with :math:`B(t) = \int_0^t\beta`,
    :math:`m = e^{-B/2}`, :math:`\sigma^2 = 1 - e^{-B}`.

    Example:
        >>> import torch
        >>> sde = VPSDE()
        >>> mean, std = sde.marginal(torch.ones(2, 3), torch.tensor(1.0))
        >>> round(float(mean[0, 0]), 4), round(float(std), 4)
        (0.0066, 1.0)
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0, T: float = 1.0) -> None:
        super().__init__()
        if not (0 <= beta_min <= beta_max) or beta_max <= 0:
            raise ValueError(f"need 0 <= beta_min <= beta_max, beta_max > 0; "
                             f"got beta_min={beta_min}, beta_max={beta_max}")
        if not T > 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.beta_min, self.beta_max, self.T = float(beta_min), float(beta_max), float(T)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

    def integrated_beta(self, t: Tensor) -> Tensor:
        r""":math:`B(t) = \int_0^t \beta(s)\,ds`."""
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T

    def drift_coef(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def g(self, t: Tensor) -> Tensor:
        return self.beta(t).sqrt()

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b), (-torch.expm1(-b)).sqrt()

    def prior_std(self) -> float:
        return 1.0

    def extra_repr(self) -> str:
        return f"beta_min={self.beta_min}, beta_max={self.beta_max}, T={self.T}"


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE: VP's drift with :math:`g(t)^2 = \beta(t)\,(1 - e^{-2B(t)})`,

    so that :math:`\sigma(t) = 1 - e^{-B(t)}` (the std, not the variance, of VP's form).

    Example:
        >>> import torch
        >>> sde = SubVPSDE()
        >>> _, std = sde.marginal(torch.ones(1, 1), torch.tensor(0.5))
        >>> bool(std < VPSDE().marginal(torch.ones(1, 1), torch.tensor(0.5))[1])
        True
    """

    def g(self, t: Tensor) -> Tensor:
        return (self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))).sqrt()

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        b = self.integrated_beta(t)
        return torch.exp(-0.5 * b), -torch.expm1(-b)


class VESDE(LinearSDE):
    r"""Variance-exploding SDE :math:`dx = \sqrt{d\sigma^2(t)/dt}\,dw`,

    :math:`\sigma(t) = \sigma_{min} (\sigma_{max}/\sigma_{min})^{t/T}`, so
    :math:`g(t) = \sigma(t)\sqrt{2\log(\sigma_{max}/\sigma_{min})/T}`, :math:`m = 1` and the exact
    marginal std from :math:`t = 0` is :math:`\sqrt{\sigma(t)^2 - \sigma_{min}^2}`.

    Example:
        >>> import torch
        >>> _, std = VESDE(0.01, 50.0).marginal(torch.zeros(1, 2), torch.tensor(1.0))
        >>> round(float(std), 3)
        50.0
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0, T: float = 1.0) -> None:
        super().__init__()
        if not 0 < sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got sigma_min={sigma_min}, "
                             f"sigma_max={sigma_max}")
        if not T > 0:
            raise ValueError(f"T must be > 0, got {T}")
        self.sigma_min, self.sigma_max, self.T = float(sigma_min), float(sigma_max), float(T)
        self._log_ratio = math.log(sigma_max / sigma_min)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t / self.T)

    def drift_coef(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)

    def g(self, t: Tensor) -> Tensor:
        return self.sigma(t) * math.sqrt(2 * self._log_ratio / self.T)

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        return torch.ones_like(t), (self.sigma(t) ** 2 - self.sigma_min**2).clamp_min(0).sqrt()

    def prior_std(self) -> float:
        return self.sigma_max

    def extra_repr(self) -> str:
        return f"sigma_min={self.sigma_min}, sigma_max={self.sigma_max}, T={self.T}"

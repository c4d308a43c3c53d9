r"""The SDE protocol: :math:`dx = \mathrm{drift}(x, t)\,dt + \mathrm{diffusion}(x, t)\,dw`.

Noise is diagonal: ``diffusion(x, t)`` returns a tensor that broadcasts against ``x``: a per-time
scale :math:`g(t)` (shape ``()`` or ``(B, 1, ..., 1)``) for the DiffFlow, VP and VE processes, or
a full tensor shaped like ``x`` for state-dependent noise (e.g. geometric Brownian motion).
States have any shape ``(B, *state)``; ``t`` is a tensor of shape ``()``, ``(1,)`` or ``(B,)``.

A process *declares* its structure, and every consumer (step schemes, objectives, samplers, the
likelihood) reads the declaration instead of checking the process's class, so a user's process
is treated exactly as a built-in one:

- :attr:`SDE.additive_noise`: the diffusion depends on ``t`` only, :math:`\sigma(x, t) = g(t)`,
  given on a whole grid by :meth:`SDE.diffusion_scale`. Default ``False`` (the safe answer: a
  reverse process, a trajectory objective or a fused step that needs :math:`g(t)` refuses the
  process with an error instead of silently dropping a divergence term);
- :attr:`SDE.sde_type`: ``"ito"`` (default) or ``"stratonovich"``;
- :meth:`SDE.linear_part`: a linear drift part :math:`a(t)\,x` with closed-form marginals (the
  exponential integrator integrates it exactly), or ``None`` (default);
- :attr:`SDE.closed_form_marginals`: :meth:`SDE.marginal` gives :math:`x_t \mid x_0` (denoising
  score matching needs it). Default ``False``;
- :attr:`SDE.affine_path`: :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`, with
  :meth:`SDE.path_coefficients` giving :math:`(\alpha, \sigma, \alpha', \sigma')` (path matching
  and the conversions between its four targets need them). Default ``False``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

from torch import Tensor, nn

from sdeflow._checks import as_time, expand_to

__all__ = ["SDE", "LinearPart", "LinearCoefficients", "PathCoefficients", "require_additive_noise"]


class LinearCoefficients(Protocol):
    r"""The coefficients of a linear SDE :math:`dx = a(t)\,x\,dt + g(t)\,dw` with marginals
    :math:`x_t \mid x_0 \sim \mathcal{N}(m(t)\,x_0, \sigma(t)^2 I)` (e.g. a
    :class:`~sdeflow.processes.LinearSDE`)."""

    def drift_coef(self, t: Tensor) -> Tensor:
        """:math:`a(t)`, shaped like ``t``."""

    def marginal_coefs(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """:math:`(m(t), \\sigma(t))`, each shaped like ``t``."""


class PathCoefficients(NamedTuple):
    r"""An affine path :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon` at times ``t``: the
    coefficients and their time derivatives, each shaped like ``t``."""

    alpha: Tensor
    sigma: Tensor
    d_alpha: Tensor
    d_sigma: Tensor


@dataclass(frozen=True)
class LinearPart:
    r"""A process's declared linear drift part: its drift is :math:`b(x, t) = a(t)\,x + n(x, t)`
    and its diffusion :math:`\mathrm{noise\_scale} \cdot g(t)`, where ``coefficients`` is the
    linear SDE :math:`dx = a\,x\,dt + g\,dw` (its :math:`a`, :math:`m`, :math:`\sigma`).

    A :class:`~sdeflow.processes.LinearSDE` is its own linear part (:math:`n = 0`, scale 1);
    the reverse family of one has the same :math:`a` and the score term as :math:`n`, scale
    :math:`\lambda`.
    """

    coefficients: LinearCoefficients
    noise_scale: float = 1.0


class SDE(nn.Module, ABC):
    r"""Base class of all processes: an Itô SDE with diagonal noise.

    Subclasses implement :meth:`drift` and :meth:`diffusion`, and declare their structure (see
    the module docstring): a process whose diffusion depends on time only sets
    ``additive_noise = True`` and implements :meth:`diffusion_scale`.

    Example:
        >>> import torch
        >>> class OU(SDE):  # dx = -x dt + 0.5 dw: additive noise, declared
        ...     additive_noise = True
        ...     def drift(self, x, t): return -x
        ...     def diffusion(self, x, t): return torch.full_like(x[:1], 0.5)
        ...     def diffusion_scale(self, t): return torch.full_like(t, 0.5)
        >>> OU().additive_noise, OU().sde_type, OU().linear_part()
        (True, 'ito', None)
    """

    #: Whether the diffusion depends on ``t`` only (then :meth:`diffusion_scale` gives it).
    additive_noise: bool = False
    #: The calculus of :meth:`drift`: ``"ito"`` or ``"stratonovich"``.
    sde_type: str = "ito"
    #: Whether :meth:`marginal` gives :math:`x_t \mid x_0` in closed form.
    closed_form_marginals: bool = False
    #: Whether :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon` with
    #: :meth:`path_coefficients` declared (then :math:`x_t \mid x_0` is Gaussian, isotropic).
    affine_path: bool = False

    @abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The drift, a tensor shaped like ``x``."""

    @abstractmethod
    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """The diagonal noise scale, a tensor that broadcasts against ``x``."""

    def diffusion_scale(self, t: Tensor) -> Tensor | None:
        r""":math:`g(t)` for a 1-D tensor of times (shaped like ``t``) when the noise is additive,
        else ``None``.

        Read once per grid by the step schemes (per-step scalars), and to validate a whole grid
        at once (e.g. :math:`g > 0` where a density divides by it). A process that declares
        ``additive_noise = True`` must implement it.
        """
        if self.additive_noise:
            raise NotImplementedError(
                f"{type(self).__name__} declares additive_noise = True but does not implement "
                f"diffusion_scale(t), its g(t) on a tensor of times"
            )
        return None

    def linear_part(self) -> LinearPart | None:
        """The declared linear drift part (see :class:`LinearPart`), or ``None``."""
        return None

    def marginal(self, x0: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        r"""Mean and std of :math:`x_t \mid x_0` where :attr:`closed_form_marginals` is declared."""
        raise TypeError(f"{type(self).__name__} has no closed-form marginals "
                        f"(closed_form_marginals = False)")

    def path_coefficients(self, t: Tensor) -> PathCoefficients:
        r""":math:`(\alpha, \sigma, \alpha', \sigma')` at times ``t`` where :attr:`affine_path` is
        declared."""
        raise TypeError(f"{type(self).__name__} declares no affine path x_t = alpha(t) x0 + "
                        f"sigma(t) eps (affine_path = False)")

    def drift_on_grid(self, ts: Tensor) -> Callable[[int, Tensor], Tensor]:
        """``(i, x) -> drift(x, ts[i])`` for a 1-D tensor of times, with any per-grid work done
        once (a process whose drift combines parts with time-dependent weights computes the
        weights here, as :class:`~sdeflow.processes.ReverseSDE` does). The step schemes call
        this; the default calls :meth:`drift`."""
        times = ts.unbind(0)
        return lambda i, x: self.drift(x, times[i])

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> SDE:
        r"""This process with its conditional networks bound to ``condition`` (one entry per
        sample; see :mod:`sdeflow.conditioning`), guided with scale ``guidance``
        (:math:`v_\varnothing + w\,(v_y - v_\varnothing)`; 1: the conditional model).

        A process offers this where it holds networks: it returns a copy whose networks are
        bound (:func:`~sdeflow.conditioning.bind`), or itself when none takes a condition. The
        default, for a process without networks (VP, a path, a user's fixed SDE), is ``self``;
        the entry points (``sample(..., condition=)``, the objectives, the likelihood) then
        refuse the condition with an error naming it.
        """
        return self

    def forward(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(drift(x, t), diffusion(x, t))``."""
        t = as_time(t, x)
        return self.drift(x, t), self.diffusion(x, t)

    @staticmethod
    def _broadcast(v: Tensor, x: Tensor) -> Tensor:
        return expand_to(v, x)


def require_additive_noise(sde: SDE, where: str, why: str) -> None:
    """Raise a :class:`ValueError` naming ``sde`` and the reason unless it declares additive noise.

    Example:
        >>> import torch
        >>> from sdeflow.testing import GBM
        >>> require_additive_noise(GBM(0.1, 0.2), "ReverseSDE", "it has no divergence term")
        ... # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ReverseSDE needs a process with additive noise ...: GBM declares ...
    """
    if not sde.additive_noise:
        raise ValueError(
            f"{where} needs a process with additive noise (diffusion g(t) independent of x): "
            f"{type(sde).__name__} declares additive_noise = False; {why}"
        )

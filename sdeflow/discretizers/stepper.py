r"""A scheme's steps prepared for one (process, grid, direction): the one interface through which
objectives, samplers and trajectory distributions step any process with any scheme.

Step :math:`i` of a grid goes forward from :math:`t_i` by :math:`dt_i`, or, for a reverse
process, from :math:`t_{i+1}` by :math:`-dt_i`. A :class:`Stepper` computes the per-grid work
once: the times, and, when the scheme declares its step affine (:class:`AffineSteps`),

.. math:: x' = \alpha_i\,x + \beta_i\,b(x, t) + \sigma_i\,\delta,

the coefficients as Python floats (one device synchronisation per grid, then fused
scalar-times-tensor kernels with no per-step scalar tensors). A scheme without declared
coefficients is stepped through its own :meth:`~sdeflow.discretizers.Discretizer.step` and
:meth:`~sdeflow.discretizers.Discretizer.transition`: the same numbers, no fusion. Nothing here
looks at the class of the scheme or of the process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from sdeflow.discretizers.base import Discretizer
    from sdeflow.grids import TimeGrid
    from sdeflow.processes.base import SDE

__all__ = ["AffineSteps", "Stepper"]


@dataclass(frozen=True)
class AffineSteps:
    r"""Per-step coefficients of a step affine in the state, the drift and the noise,

    .. math:: x' = \alpha_i\,x + \beta_i\,b(x, t_i) + \sigma_i\,\delta_i,

    each a tensor of shape ``(N,)`` (one entry per step of the grid). Euler–Maruyama on additive
    noise is :math:`(1,\ dt_i,\ g(t_i)\sqrt{|dt_i|})`.
    """

    alpha: Tensor
    beta: Tensor
    sigma: Tensor


class Stepper:
    r"""``scheme``'s steps of ``sde`` on ``grid`` (see the module docstring), made by
    :meth:`Discretizer.stepper <sdeflow.discretizers.Discretizer.stepper>`.

    Attributes:
        n_steps: :math:`N`.
        times: The time each step starts from, a list of 0-d tensors.
        affine: ``(alpha, beta, sigma)`` as lists of floats when the scheme declares them.
        stochastic: Per step, whether it has noise (from the process's declared
            :math:`g(t)`; a process with state-dependent noise is stochastic everywhere).

    Example:
        >>> import torch
        >>> from sdeflow import EulerMaruyama, ForwardSDE, TimeGrid
        >>> sde = ForwardSDE(lambda x, t: -x, diffusion=0.5)
        >>> stepper = EulerMaruyama().stepper(sde, TimeGrid.uniform(2, 0.0, 0.5))
        >>> stepper.affine[1], stepper.step(0, torch.ones(1, 2), torch.zeros(1, 2))
        ([0.25, 0.25], tensor([[0.7500, 0.7500]]))
    """

    def __init__(self, scheme: Discretizer, sde: SDE, grid: TimeGrid, *,
                 reverse: bool = False) -> None:
        self.scheme, self.sde, self.reverse = scheme, sde, bool(reverse)
        self.n_steps = grid.n_steps
        t = grid.ts[1:] if reverse else grid.ts[:-1]
        dt = -grid.dts if reverse else grid.dts
        self._t, self.times, self.dts = t, t.unbind(0), dt.unbind(0)
        steps = scheme.affine_steps(sde, t, dt) if sde.additive_noise else None
        if steps is not None and any(c.requires_grad for c in (steps.alpha, steps.beta,
                                                                steps.sigma)):
            steps = None  # coefficients with a graph (a trained schedule): keep it, no floats
        g = sde.diffusion_scale(t) if sde.additive_noise else None
        # Python floats: one device sync per grid, then scalar-alpha kernels in the hot loop
        self.affine = (None if steps is None else
                       tuple(torch.stack([steps.alpha, steps.beta, steps.sigma]).tolist()))
        self.stochastic = [True] * self.n_steps if g is None else (g != 0).tolist()
        self._drift: Callable[[int, Tensor], Tensor] | None = None

    def drift(self, i: int, x: Tensor) -> Tensor:
        """The process's drift at the start of step ``i`` (per-grid work done once, see
        :meth:`SDE.drift_on_grid <sdeflow.processes.SDE.drift_on_grid>`)."""
        if self._drift is None:
            self._drift = self.sde.drift_on_grid(self._t)
        return self._drift(i, x)

    def step(self, i: int, x: Tensor, noise: Tensor | None, drift: Tensor | None = None) -> Tensor:
        """Step ``i`` from ``x`` with standard-normal ``noise`` (``None``: a noise-free step);
        ``drift``, when given, is the drift at ``x`` already computed."""
        if self.affine is None:
            if noise is None:
                noise = torch.zeros_like(x)
            return self.scheme.step(self.sde, x, self.times[i], self.dts[i], noise)
        alpha, beta, sigma = (c[i] for c in self.affine)
        b = self.drift(i, x) if drift is None else drift
        out = torch.add(x, b, alpha=beta) if alpha == 1.0 else torch.mul(x, alpha).add_(b,
                                                                                      alpha=beta)
        if noise is not None and sigma != 0.0:
            out = out.add_(noise, alpha=sigma)
        return out

    def transition(self, i: int, x: Tensor, drift: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Mean and std of step ``i`` from ``x`` (Gaussian schemes)."""
        return self.scheme.transition(self.sde, x, self.times[i], self.dts[i], drift=drift)

    def __repr__(self) -> str:
        return (f"Stepper({self.scheme!r}, {type(self.sde).__name__}, n_steps={self.n_steps}, "
                f"reverse={self.reverse}, affine={self.affine is not None})")

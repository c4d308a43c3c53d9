r"""The reverse family of a forward SDE (marginal-equivalent for every :math:`\lambda`):

.. math:: dx = \left[f(x, t) - \tfrac{1 + \lambda^2}{2}\, g(t)^2\, s(x, t)\right] dt
          + \lambda\, g(t)\, d\bar w,

integrated from :math:`T` down to :math:`0`. :math:`\lambda = 1` is the reverse-time SDE of
DiffFlow (with :math:`s = \nabla\log p_t` it has the forward marginals); :math:`\lambda = 0` is
the probability-flow ODE used for exact likelihoods.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from sdeflow._checks import as_time, expand_to
from sdeflow.conditioning import bind, replaced
from sdeflow.processes.base import SDE, LinearPart, require_additive_noise

__all__ = ["ReverseSDE", "probability_flow"]


class ReverseSDE(SDE):
    r"""Reverse process of ``forward`` with score model ``score`` and noise scale ``lam``.

    Drift and diffusion are given in the forward time convention: a step from :math:`t` down to
    :math:`t - dt` is :math:`x - \mathrm{drift}(x, t)\,dt + \mathrm{diffusion}(x, t)\sqrt{dt}\,
    \delta`, which is how the discretizers step it (a negative ``dt``).

    Arguments:
        forward: The forward :class:`~sdeflow.processes.SDE` (drift :math:`f`, diffusion
            :math:`g`). It must declare ``additive_noise = True``: with a diffusion that depends
            on ``x`` the reverse drift gains a divergence term this family does not have.
        score: ``s(x, t)``, a callable or module returning a tensor shaped like ``x``.
        lam: :math:`\lambda \ge 0`.

    Example:
        >>> import torch
        >>> from sdeflow.processes import ForwardSDE
        >>> fwd = ForwardSDE(lambda x, t: -x, diffusion=1.0)
        >>> rev = ReverseSDE(fwd, score=lambda x, t: -x, lam=0.0)
        >>> rev.drift(torch.ones(1, 2), torch.tensor(0.0))  # -x - (1/2)(-x)
        tensor([[-0.5000, -0.5000]])
    """

    additive_noise = True

    def __init__(
        self, forward: SDE, score: Callable[[Tensor, Tensor], Tensor], lam: float = 1.0
    ) -> None:
        super().__init__()
        if not isinstance(forward, SDE):
            raise TypeError(f"forward must be an sdeflow SDE, got {type(forward).__name__}")
        if not callable(score):
            raise TypeError(f"score must be callable s(x, t), got {type(score).__name__}")
        require_additive_noise(
            forward, "ReverseSDE",
            "with state-dependent noise the reverse drift has a divergence term, "
            "div(sigma sigma^T), that this family does not include")
        lam = float(lam)
        if not 0 <= lam < float("inf"):
            raise ValueError(f"lam must be a finite number >= 0, got {lam}")
        self.forward_sde = forward
        self.score = score
        self.lam = lam

    def score_value(self, x: Tensor, t: Tensor) -> Tensor:
        s = self.score(x, t)
        if not isinstance(s, Tensor) or s.shape != x.shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"score(x, t) must return a tensor shaped like x {tuple(x.shape)}, "
                             f"got {got}")
        return s

    def score_coefficient(self, t: Tensor) -> Tensor:
        r""":math:`\kappa(t) = \tfrac{1+\lambda^2}{2}\, g(t)^2`, the weight of the score in the
        reverse drift :math:`f - \kappa\, s`, shaped like ``t`` (the one place this equation is
        written: :meth:`drift`, the DiffFlow objective and the samplers all read it here)."""
        return (0.5 * (1.0 + self.lam**2)) * self.forward_sde.diffusion_scale(t).square()

    def drift(self, x: Tensor, t: Tensor, forward_drift: Tensor | None = None) -> Tensor:
        r""":math:`f(x, t) - \kappa(t)\, s(x, t)` with :math:`\kappa` from
        :meth:`score_coefficient`.

        ``forward_drift``, when given, is :math:`f(x, t)` already computed (DiffFlow's training
        sweep computes it while stepping forward and reuses it here).
        """
        t = as_time(t, x)
        f = self.forward_sde.drift(x, t) if forward_drift is None else forward_drift
        return f - expand_to(self.score_coefficient(t), x) * self.score_value(x, t)

    def drift_on_grid(self, ts: Tensor) -> Callable[[int, Tensor], Tensor]:
        r""":meth:`drift` on a grid with :math:`\kappa(t_i)` computed once: one fused
        ``f - kappa_i s`` per call."""
        kappa_t = self.score_coefficient(ts)
        if kappa_t.requires_grad:  # a trained schedule: keep the graph
            return super().drift_on_grid(ts)
        times, kappa = ts.unbind(0), kappa_t.tolist()
        forward_drift = self.forward_sde.drift_on_grid(ts)

        def drift(i: int, x: Tensor) -> Tensor:
            return torch.add(forward_drift(i, x), self.score_value(x, times[i]), alpha=-kappa[i])

        return drift

    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lam * self.forward_sde.diffusion(x, as_time(t, x))

    def diffusion_scale(self, t: Tensor) -> Tensor:
        return self.lam * self.forward_sde.diffusion_scale(t)

    def linear_part(self) -> LinearPart | None:
        r"""The forward process's linear part, its noise scaled by :math:`\lambda`."""
        part = self.forward_sde.linear_part()
        return None if part is None else LinearPart(part.coefficients,
                                                    part.noise_scale * self.lam)

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> ReverseSDE:
        r"""A copy with the forward process's and the score's networks bound to ``condition``
        (:meth:`SDE.conditioned <sdeflow.processes.SDE.conditioned>`), or ``self`` when none
        takes one. Guiding both networks with the same scale :math:`w` guides the reverse drift:
        :math:`f_w - \kappa s_w = (1-w)(f_\varnothing - \kappa s_\varnothing)
        + w\,(f_y - \kappa s_y)`, since :math:`\kappa` does not depend on the condition."""
        forward = self.forward_sde.conditioned(condition, guidance)
        score = bind(self.score, condition, guidance)
        if forward is self.forward_sde and score is self.score:
            return self
        return replaced(self, forward_sde=forward, score=score)

    def with_lam(self, lam: float) -> ReverseSDE:
        """The same forward process and score with another :math:`\\lambda` (shares modules)."""
        return ReverseSDE(self.forward_sde, self.score, lam)

    def extra_repr(self) -> str:
        return f"lam={self.lam}"


def probability_flow(forward: SDE, score: Callable[[Tensor, Tensor], Tensor]) -> ReverseSDE:
    r"""The probability-flow ODE :math:`dx = [f - \tfrac12 g^2 s]\,dt` (``lam = 0``).

    Example:
        >>> from sdeflow.processes import VPSDE
        >>> probability_flow(VPSDE(), lambda x, t: -x).lam
        0.0
    """
    return ReverseSDE(forward, score, lam=0.0)

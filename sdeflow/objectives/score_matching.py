r"""Denoising score matching for processes with closed-form marginals (score-based diffusion).

With :math:`x_t = m(t)\,x_0 + \sigma(t)\,\epsilon`, the target score is
:math:`\nabla\log p(x_t \mid x_0) = -\epsilon/\sigma(t)` and

.. math:: \mathcal{L} = E_{t \sim U(\epsilon_t, T),\, x_0,\, \epsilon}\
          \lambda(t)\,\big|s(x_t, t) + \epsilon/\sigma(t)\big|^2 / 2,

with :math:`\lambda = \sigma^2` (``"sigma2"``, Song et al.'s default) or :math:`\lambda = g^2`
(``"likelihood"``, which makes the sum over time an ELBO bound up to constants).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdeflow._checks import check_finite, expand_to
from sdeflow.conditioning import (
    bind,
    bind_condition,
    check_p_uncond,
    drop_condition,
    null_condition,
)
from sdeflow.objectives.terms import RegressionTerms
from sdeflow.processes.base import SDE

__all__ = ["DenoisingScoreMatching", "ScoreMatchingTerms"]

_WEIGHTINGS = ("sigma2", "likelihood")


@dataclass
class ScoreMatchingTerms(RegressionTerms):
    r"""Denoising score matching per sample.

    Attributes:
        loss: Mean of :attr:`values` (the scalar to minimize).
        values: :math:`\lambda(t)\,|s(x_t, t) + \epsilon/\sigma(t)|^2/2` per sample, ``(B,)``.
        t: The times drawn, ``(B,)``.
    """


class DenoisingScoreMatching(nn.Module):
    r"""Denoising score-matching loss of ``score`` under a ``process`` with closed-form marginals.

    Arguments:
        process: A process declaring ``closed_form_marginals`` (VP, sub-VP, VE, a user's
            :class:`~sdeflow.processes.LinearSDE`) and additive noise; it has a horizon ``T``.
        score: ``s(x, t)`` with ``t`` of shape ``(B,)``.
        eps: Smallest time drawn (the marginal std vanishes at 0).
        weighting: ``"sigma2"`` or ``"likelihood"``.
        p_uncond: Classifier-free guidance's condition dropout (as
            :class:`~sdeflow.objectives.PathMatching`).

    Example:
        >>> import torch
        >>> from sdeflow.processes import VPSDE
        >>> dsm = DenoisingScoreMatching(VPSDE(), lambda x, t: -x)
        >>> terms = dsm(torch.randn(8, 2))
        >>> terms.per_sample.shape, terms.loss.shape
        (torch.Size([8]), torch.Size([]))
    """

    def __init__(self, process: SDE, score: Callable[[Tensor, Tensor], Tensor], *,
                 eps: float = 1e-5, weighting: str = "sigma2", p_uncond: float = 0.0) -> None:
        super().__init__()
        if not isinstance(process, SDE) or not process.closed_form_marginals:
            raise TypeError(f"process must be an SDE with closed-form marginals "
                            f"(closed_form_marginals = True: VPSDE, SubVPSDE, VESDE, ...), got "
                            f"{type(process).__name__}")
        if not callable(score):
            raise TypeError(f"score must be callable s(x, t), got {type(score).__name__}")
        if weighting not in _WEIGHTINGS:
            raise ValueError(f"weighting must be one of {_WEIGHTINGS}, got {weighting!r}")
        horizon = float(getattr(process, "T", 1.0))
        if not 0 < eps < horizon:
            raise ValueError(f"eps must be in (0, T={horizon}), got {eps}")
        self.process, self.score, self.eps, self.weighting = process, score, eps, weighting
        self.T = horizon
        self.p_uncond = check_p_uncond(p_uncond)

    def forward(self, x0: Tensor, generator: torch.Generator | None = None, *,
                condition: Tensor | None = None) -> ScoreMatchingTerms:
        """Per-sample loss and its mean; ``.loss`` is the scalar to train on. ``condition``:
        one entry per sample for a conditional ``score`` (drawn last: the dropout, from
        ``generator``)."""
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            got = f"dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
            raise TypeError(f"x0 must be a floating-point tensor, got {got}")
        if x0.dim() < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape (batch, *state), got {tuple(x0.shape)}")
        check_finite("x0", x0)
        b = x0.shape[0]
        score = bind_condition(self.score, condition, batch=b, like=x0,
                               where="DenoisingScoreMatching")
        u = torch.rand(b, generator=generator, dtype=x0.dtype, device=x0.device)
        t = self.eps + (self.T - self.eps) * u
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        if condition is not None and self.p_uncond > 0:
            condition = drop_condition(condition, null_condition(self.score, condition),
                                       self.p_uncond, generator)
            score = bind(self.score, condition)
        mean, std = self.process.marginal(x0, t)
        s = score(mean + std * noise, t)
        if not isinstance(s, Tensor) or s.shape != x0.shape:
            got = tuple(s.shape) if isinstance(s, Tensor) else type(s).__name__
            raise ValueError(f"score(x, t) must return shape {tuple(x0.shape)}, got {got}")
        if self.weighting == "sigma2":
            residual = s * std + noise
        else:
            residual = (s + noise / std) * expand_to(self.process.diffusion_scale(t), x0)
        values = 0.5 * residual.pow(2).reshape(b, -1).sum(-1)
        return ScoreMatchingTerms(values.mean(), values, t)

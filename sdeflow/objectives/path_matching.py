r"""Path matching: regress one of four targets on an affine path
:math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon` (flow matching, denoising score matching and
noise / data prediction as one objective).

With a coupling :math:`\pi` of data and noise (independent, or minibatch optimal transport), a
time law :math:`t \sim p(t)` and a target :math:`y = A(t)\,x_0 + B(t)\,\epsilon` (velocity
:math:`\alpha' x_0 + \sigma'\epsilon`, noise :math:`\epsilon`, data :math:`x_0`, score
:math:`-\epsilon/\sigma`; see :mod:`sdeflow.processes.paths`):

.. math:: \mathcal{L} = E_{t,\ (x_0, \epsilon) \sim \pi}\ w(t)\,
          \tfrac12\,\big|m(x_t, t) - y\big|^2 .

For any :math:`w > 0` the minimizer is :math:`m^* = E[y \mid x_t]`, and the conversions of the
path carry it to the optimum of every other target: the velocity of the probability-flow ODE,
the posterior mean of the noise or the data, the score :math:`\nabla\log p_t`.

**Weighting.** A prediction's error converts like the prediction itself: with
:math:`y_u = c_x x_t + c_y\,y` the conversion to a target :math:`u`, :math:`\hat y_u - y_u =
c_y\,(\hat y - y)`. So ``weighting`` names the units the error is measured in:

- ``"target"``: :math:`w = 1`, each target in its own units (flow matching's velocity loss);
- ``"velocity"``, ``"noise"``, ``"data"``, ``"score"``: :math:`w = c_y(\text{target} \to u)^2`,
  the error of the same prediction converted to :math:`u`. The factors are
  :math:`\sigma^2` (score to noise), :math:`\alpha^2/(\alpha\sigma' - \alpha'\sigma)^2`
  (velocity to noise), :math:`\alpha^2/\sigma^2` (data to noise);
- ``"likelihood"``: the error in score units times :math:`g(t)^2` (the path's SDE form), the
  weighting under which the integral over time bounds the negative log-likelihood;
- a callable :math:`w(t)` returning a tensor shaped like ``t``.

On a :class:`~sdeflow.processes.VPSDE` (or any linear SDE), noise or score regression with
``weighting="noise"`` is exactly :class:`~sdeflow.objectives.DenoisingScoreMatching` with
``"sigma2"`` (:math:`|\sigma s + \epsilon|^2/2 = |\hat\epsilon - \epsilon|^2/2`), and
``"likelihood"`` is its ``"likelihood"`` weighting (:math:`g^2 |s + \epsilon/\sigma|^2/2`); with
the same generator they draw the same times and noise and give the same values.

References:
    | Flow Matching for Generative Modeling (Lipman et al., 2023), https://arxiv.org/abs/2210.02747
    | Flow Straight and Fast: Rectified Flow (Liu et al., 2023), https://arxiv.org/abs/2209.03003
    | Stochastic Interpolants (Albergo & Vanden-Eijnden, 2023), https://arxiv.org/abs/2209.15571
    | Improving and Generalizing Flow-Based Generative Models with Minibatch Optimal Transport
      (Tong et al., 2023), https://arxiv.org/abs/2302.00482
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from sdeflow._checks import check_finite, check_modules, expand_to
from sdeflow.conditioning import (
    bind,
    bind_condition,
    check_p_uncond,
    drop_condition,
    null_condition,
)
from sdeflow.couplings import Coupling, IndependentCoupling
from sdeflow.objectives.terms import RegressionTerms
from sdeflow.objectives.times import TimeSampler, UniformTime
from sdeflow.processes.base import SDE, PathCoefficients
from sdeflow.processes.paths import TARGETS, conversion, require_affine_path, target_coefficients

__all__ = ["PathMatching", "PathMatchingTerms", "WEIGHTINGS"]

#: Named weightings of :class:`PathMatching` (besides a callable ``w(t)``).
WEIGHTINGS: tuple[str, ...] = ("target", *TARGETS, "likelihood")


@dataclass
class PathMatchingTerms(RegressionTerms):
    r"""Path matching per sample.

    Attributes:
        loss: Mean of :attr:`values` (the scalar to minimize).
        values: :math:`w(t)\,|m(x_t, t) - y|^2/2` per sample, ``(B,)``, in the order of ``x0``.
        t: The times drawn, ``(B,)``.
    """


class PathMatching(nn.Module):
    r"""Regression of ``model`` on one of four targets of an affine path (see the module
    docstring for the loss and the weightings).

    Arguments:
        path: A process declaring ``affine_path``: :class:`~sdeflow.processes.LinearPath`,
            :class:`~sdeflow.processes.CosinePath`, a :class:`~sdeflow.processes.VPSDE` or any
            :class:`~sdeflow.processes.LinearSDE`, a user's
            :class:`~sdeflow.processes.AffinePath`.
        model: ``model(x, t)`` with ``t`` of shape ``(B,)``, returning a tensor shaped like ``x``.
        target: What ``model`` predicts: ``"velocity"``, ``"noise"``, ``"data"`` or ``"score"``.
        weighting: One of :data:`WEIGHTINGS` or a callable ``w(t)``.
        time: The law of :math:`t` (a :class:`~sdeflow.objectives.TimeSampler`); default
            ``UniformTime(1e-5, T)``, as :class:`~sdeflow.objectives.DenoisingScoreMatching`.
        coupling: Pairs each batch of data with its noise
            (:class:`~sdeflow.couplings.IndependentCoupling` by default, or
            :class:`~sdeflow.couplings.MinibatchOTCoupling`). A coupling reorders the noise,
            never the data, so a condition stays with its sample.
        p_uncond: Classifier-free guidance's condition dropout: with a ``condition``, each
            sample is trained on the null condition with this probability
            (:func:`~sdeflow.conditioning.drop_condition`).

    Example:
        >>> import torch
        >>> from sdeflow.processes import LinearPath
        >>> objective = PathMatching(LinearPath(), lambda x, t: -x, target="velocity")
        >>> terms = objective(torch.randn(8, 2), generator=torch.Generator().manual_seed(0))
        >>> terms.per_sample.shape, terms.loss.shape
        (torch.Size([8]), torch.Size([]))
    """

    def __init__(
        self,
        path: SDE,
        model: Callable[[Tensor, Tensor], Tensor],
        *,
        target: str = "velocity",
        weighting: str | Callable[[Tensor], Tensor] = "target",
        time: TimeSampler | None = None,
        coupling: Coupling | None = None,
        p_uncond: float = 0.0,
    ) -> None:
        super().__init__()
        require_affine_path(path, "PathMatching")
        if not callable(model):
            raise TypeError(f"model must be callable model(x, t), got {type(model).__name__}")
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
        if not (callable(weighting) or weighting in WEIGHTINGS):
            raise ValueError(f"weighting must be one of {WEIGHTINGS} or a callable w(t), got "
                             f"{weighting!r}")
        horizon = float(getattr(path, "T", 1.0))
        time = UniformTime(min(1e-5, 0.5 * horizon), horizon) if time is None else time
        if not isinstance(time, TimeSampler):
            raise TypeError(f"time must be a TimeSampler (UniformTime, LogitNormalTime, "
                            f"GridTime), got {type(time).__name__}")
        coupling = IndependentCoupling() if coupling is None else coupling
        if not isinstance(coupling, Coupling):
            raise TypeError(f"coupling must be a Coupling (IndependentCoupling, "
                            f"MinibatchOTCoupling), got {type(coupling).__name__}")
        self.path, self.model, self.target, self.weighting = path, model, target, weighting
        self.time, self.coupling = time, coupling
        self.p_uncond = check_p_uncond(p_uncond)

    def weight(self, coefs: PathCoefficients, t: Tensor) -> Tensor:
        r""":math:`w(t)`, shaped like ``t``, for the path's coefficients at ``t``."""
        if callable(self.weighting):
            w = self.weighting(t)
            if not isinstance(w, Tensor) or w.shape != t.shape:
                got = tuple(w.shape) if isinstance(w, Tensor) else type(w).__name__
                raise ValueError(f"weighting(t) must return a tensor shaped like t "
                                 f"{tuple(t.shape)}, got {got}")
            return w
        if self.weighting == "target":
            return torch.ones_like(t)
        if self.weighting == "likelihood":
            c_y = conversion(coefs, self.target, "score")[1]
            return c_y.square() * self.path.diffusion_scale(t).square()
        return conversion(coefs, self.target, self.weighting)[1].square()

    def forward(self, x0: Tensor, generator: torch.Generator | None = None, *,
                condition: Tensor | None = None) -> PathMatchingTerms:
        """Per-sample loss and its mean; ``.loss`` is the scalar to train on.

        Draws, in this order, the times (``b`` of them), the noise (shaped like ``x0``), the
        coupling's draws, then (with a ``condition`` and ``p_uncond > 0``) the condition
        dropout, all from ``generator``. ``condition``: one entry per sample of ``x0`` for a
        conditional ``model`` (:mod:`sdeflow.conditioning`)."""
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            got = f"dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
            raise TypeError(f"x0 must be a floating-point tensor, got {got}")
        if x0.dim() < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape (batch, *state), got {tuple(x0.shape)}")
        check_finite("x0", x0)
        check_modules(x0, [self.model])
        b = x0.shape[0]
        model = bind_condition(self.model, condition, batch=b, like=x0, where="PathMatching")
        t = self.time.sample(b, dtype=x0.dtype, device=x0.device, generator=generator)
        noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        x0, noise = self.coupling(x0, noise, generator=generator)
        if condition is not None and self.p_uncond > 0:
            condition = drop_condition(condition, null_condition(self.model, condition),
                                       self.p_uncond, generator)
            model = bind(self.model, condition)
        coefs = self.path.path_coefficients(t)
        a, s = target_coefficients(coefs, self.target)
        x_t = expand_to(coefs.alpha, x0) * x0 + expand_to(coefs.sigma, x0) * noise
        y = expand_to(a, x0) * x0 + expand_to(s, x0) * noise
        w = self.weight(coefs, t)
        if not bool(torch.isfinite(y).all() and torch.isfinite(w).all()):
            raise ValueError(
                f"the {self.target!r} target or the {self.weighting!r} weight is not finite at "
                f"some drawn times (alpha or sigma vanishes at an end of the path: the score "
                f"needs sigma > 0); draw times inside the path's range, e.g. "
                f"time=UniformTime(t0, t1) with 0 < t0, got times in [{float(t.min())}, "
                f"{float(t.max())}]"
            )
        pred = model(x_t, t)
        if not isinstance(pred, Tensor) or pred.shape != x0.shape:
            got = tuple(pred.shape) if isinstance(pred, Tensor) else type(pred).__name__
            raise ValueError(f"model(x, t) must return shape {tuple(x0.shape)}, got {got}")
        values = 0.5 * w * (pred - y).square().reshape(b, -1).sum(-1)
        return PathMatchingTerms(values.mean(), values, t)

    def extra_repr(self) -> str:
        w = self.weighting if isinstance(self.weighting, str) else "callable"
        p = f", p_uncond={self.p_uncond}" if self.p_uncond else ""
        return f"target={self.target!r}, weighting={w!r}, time={self.time!r}{p}"


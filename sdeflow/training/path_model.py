r"""The path-matching model family: one network trained by
:class:`~sdeflow.objectives.PathMatching` on an affine path :math:`x_t = \alpha(t)\,x_0 +
\sigma(t)\,\epsilon` (flow matching, rectified flow, denoising score matching as one model).

The network predicts one of the four targets (velocity, noise, data, score); the path's exact
conversions (:mod:`sdeflow.processes.paths`) make it every other, so the model samples and
scores through the probability-flow ODE in its velocity form, :class:`~sdeflow.processes.PathODE`

.. math:: \frac{dx}{dt} = v(x, t), \qquad \log p(x_{t_0}) = \log p_{prior}(x_{t_1}) +
          \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial v}{\partial x}\,dt ,

with the prior :math:`\mathcal{N}(0, \sigma(t_1)^2 I)` (exact where :math:`\alpha(t_1) = 0`, the
linear and cosine paths at :math:`t_1 = 1`). Where the path has an SDE form on the model's grid
(:math:`\alpha > 0`: VP, sub-VP, VE, or a linear path ending before 1) the reverse family
:math:`dx = [a x - \tfrac{1+\lambda^2}{2} g^2 s]\,dt + \lambda g\,d\bar w` of the converted score
samples too, and the trajectory ELBO of its Euler–Maruyama chain bounds the likelihood.

References:
    | Flow Matching for Generative Modeling (Lipman et al., 2023), https://arxiv.org/abs/2210.02747
    | Flow Straight and Fast: Rectified Flow (Liu et al., 2023), https://arxiv.org/abs/2209.03003
    | Improving and Generalizing Flow-Based Generative Models with Minibatch Optimal Transport
      (Tong et al., 2023), https://arxiv.org/abs/2302.00482
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from sdeflow.conditioning import split_batch
from sdeflow.couplings import Coupling
from sdeflow.distributions import (
    ProbabilityFlowDistribution,
    SDESamplerDistribution,
    check_law,
)
from sdeflow.grids import TimeGrid
from sdeflow.likelihood import ode_log_likelihood
from sdeflow.objectives import DiffFlowObjective, PathMatching, TimeSampler, UniformTime
from sdeflow.priors import StandardNormal
from sdeflow.processes import ConvertedModel, PathODE, ReverseSDE
from sdeflow.processes.base import SDE
from sdeflow.processes.paths import require_affine_path
from sdeflow.sampling import sample
from sdeflow.training.models import GenerativeModel

__all__ = ["PathMatchingModel"]


def _has_sde_form(path: SDE, grid: TimeGrid) -> bool:
    """Whether the path's SDE form (and the score, :math:`\\sigma > 0`) exists at every time of
    ``grid``: asks the path (its ``diffusion_scale`` refuses where :math:`\\alpha = 0`)."""
    try:
        g = path.diffusion_scale(grid.ts)
        sigma = path.path_coefficients(grid.ts).sigma
    except ValueError:
        return False
    return bool(torch.isfinite(g).all() and (sigma > 0).all())


class PathMatchingModel(GenerativeModel):
    r"""A network trained by path matching on an affine path (see the module docstring).

    Arguments:
        net: ``net(x, t)`` predicting ``target``, ``t`` of shape ``(B,)``.
        path: A process declaring ``affine_path`` (:class:`~sdeflow.processes.LinearPath`,
            :class:`~sdeflow.processes.CosinePath`, :class:`~sdeflow.processes.VPSDE`, ...).
        grid: The model's :class:`TimeGrid`: the data at ``grid.t0``, the prior at ``grid.t1``;
            its steps are the Euler–Maruyama grid of :meth:`nelbo` and of :meth:`sample` with
            ``lam > 0`` (the ODE samples adaptively unless given a grid).
        state_shape: The shape of one state, e.g. ``(2,)``.
        target: What ``net`` predicts: ``"velocity"``, ``"noise"``, ``"data"`` or ``"score"``.
        weighting: :class:`~sdeflow.objectives.PathMatching`'s weighting.
        time: The law of the training times (default ``UniformTime(grid.t0, grid.t1)``).
        coupling: Data-noise pairing (default independent; ``MinibatchOTCoupling()``).
        rtol, atol: The adaptive ODE solver's tolerances (sampling, likelihood).
        p_uncond: For a conditional ``net`` (:mod:`sdeflow.conditioning`): the probability of
            training a sample on the null condition (classifier-free guidance).
        guidance: The guidance scale of calls with a condition and no ``guidance=`` (0: the
            unconditional model, 1: the conditional one, > 1: guided).

    Example:
        >>> import torch
        >>> from sdeflow import LinearPath, TimeGrid
        >>> from sdeflow.nets import TimeMLP
        >>> model = PathMatchingModel(TimeMLP(2, 16, 2), LinearPath(),
        ...                           TimeGrid.uniform(10, 0.0, 1.0), (2,))
        >>> loss, info = model.loss(torch.randn(8, 2), step=1)
        >>> loss.shape, sorted(info), model.sample(3).shape, model.nelbo_kind[:9]
        (torch.Size([]), ['path_matching'], torch.Size([3, 2]), 'exact NLL')
    """

    def __init__(
        self,
        net: nn.Module,
        path: SDE,
        grid: TimeGrid,
        state_shape: tuple[int, ...],
        *,
        target: str = "velocity",
        weighting: str | Callable[[Tensor], Tensor] = "target",
        time: TimeSampler | None = None,
        coupling: Coupling | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        p_uncond: float = 0.0,
        guidance: float = 1.0,
    ) -> None:
        super().__init__()
        require_affine_path(path, "PathMatchingModel")
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid (the data at grid.t0, the prior at "
                            f"grid.t1), got {type(grid).__name__}")
        horizon = float(getattr(path, "T", 1.0))
        if not 0 <= grid.t0 < grid.t1 <= horizon:
            raise ValueError(f"grid must lie in the path's range [0, {horizon}], got "
                             f"[{grid.t0}, {grid.t1}]")
        self.net, self.path, self.target = net, path, target
        self.register_buffer("grid_ts", grid.ts.clone())
        sigma1 = path.path_coefficients(grid.ts[-1:].double()).sigma
        self.prior = StandardNormal(tuple(state_shape), scale=float(sigma1))
        self.objective = PathMatching(path, net, target=target, weighting=weighting,
                                      time=UniformTime(grid.t0, grid.t1) if time is None
                                      else time, coupling=coupling, p_uncond=p_uncond)
        self.guidance = float(guidance)
        self.ode = PathODE(path, net, target)
        self.stochastic = _has_sde_form(path, grid)
        # the reverse family of the converted score, kept out of the module tree (its tensors
        # belong to the registered net)
        reverse = ReverseSDE(path, ConvertedModel(path, net, target, "score"), lam=1.0) \
            if self.stochastic else None
        object.__setattr__(self, "reverse", reverse)
        self.nelbo_kind = ("trajectory negative ELBO (Euler-Maruyama, evaluation grid)"
                           if self.stochastic else
                           "exact NLL (probability-flow ODE): no trajectory bound, the path has "
                           "no SDE form on the grid (alpha = 0 at t1)")
        self.rtol, self.atol = float(rtol), float(atol)

    @property
    def grid(self) -> TimeGrid:
        """The model's grid (:math:`t_0` the data's, :math:`t_1` the prior's)."""
        return TimeGrid(self.grid_ts)

    def loss(self, batch: Tensor | tuple[Tensor, Tensor], step: int
             ) -> tuple[Tensor, dict[str, float]]:
        x, condition = split_batch(batch)
        terms = self.objective(x, condition=condition)
        return terms.loss, {"path_matching": float(terms.loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, *, lam: float = 1.0, grid: TimeGrid | None = None,
               condition: Tensor | None = None, guidance: float | None = None) -> Tensor:
        r"""``n`` samples. ``lam = 0``, or any ``lam`` on a path without an SDE form (the linear
        and cosine paths to :math:`t = 1`, where only the ODE is defined, as for a flow): the
        probability-flow ODE :math:`dx/dt = v` from the prior down to :math:`t_0`, adaptively
        (``rtol``, ``atol``), or by Euler steps on ``grid``. ``lam > 0`` on a path with an SDE
        form: the reverse family with noise scale ``lam`` on ``grid`` (default: the model's),
        last step noise-free. With a ``condition`` (``(n,)`` labels, ``(n, k)`` vectors, or one
        for all), the network is guided by ``guidance`` (default: the model's)."""
        call = self._conditions(condition, guidance, n)
        if lam == 0 or not self.stochastic:
            if grid is None:
                law = self.distribution(**call)
            else:
                law = self.distribution(grid=grid, method="euler", **call)
            return law.sample(() if call else (n,))
        return sample(self.reverse.with_lam(lam), self.prior, self.grid if grid is None else grid,
                      (n,), **call)

    def log_likelihood(self, x: Tensor, *, condition: Tensor | None = None,
                       guidance: float | None = None, **ode_kwargs: Any) -> Tensor:
        ode_kwargs = {"rtol": self.rtol, "atol": self.atol, **ode_kwargs,
                      **self._conditions(condition, guidance)}
        return ode_log_likelihood(self.ode, self.prior, self.grid, x, **ode_kwargs).log_prob

    @torch.no_grad()
    def nelbo(self, x: Tensor, *, condition: Tensor | None = None,
              guidance: float | None = None) -> Tensor:
        """The trajectory negative ELBO of the reverse SDE's Euler–Maruyama chain on the model's
        grid where the path has an SDE form; else the exact NLL through the ODE
        (:attr:`nelbo_kind` says which)."""
        call = self._conditions(condition, guidance)
        if self.stochastic:
            return DiffFlowObjective(self.reverse, self.prior)(x, self.grid, **call).nelbo
        return -self.log_likelihood(x, **call)

    def distribution(self, law: str = "probability_flow", *, lam: float = 1.0,
                     grid: TimeGrid | None = None, condition: Tensor | None = None,
                     guidance: float | None = None, **kwargs: Any
                     ) -> ProbabilityFlowDistribution | SDESamplerDistribution:
        """The model as a distribution over :math:`x_0` (:meth:`GenerativeModel.distribution`):
        the probability-flow ODE (the model's ``rtol``/``atol`` by default), or, where the path
        has an SDE form, the ``lam``-sampler; on the model's grid unless ``grid`` is given.

        Example:
            >>> import torch
            >>> from sdeflow import LinearPath, TimeGrid
            >>> from sdeflow.nets import TimeMLP
            >>> model = PathMatchingModel(TimeMLP(2, 16, 1), LinearPath(),
            ...                           TimeGrid.uniform(4, 0.0, 1.0), (2,))
            >>> x, log_p = model.distribution().sample_and_log_prob((3,))
            >>> x.shape, log_p.shape
            (torch.Size([3, 2]), torch.Size([3]))
        """
        grid = self.grid if grid is None else grid
        kwargs.update(self._conditions(condition, guidance))
        if check_law(law) == "probability_flow":
            kwargs = {"rtol": self.rtol, "atol": self.atol, **kwargs}
            return ProbabilityFlowDistribution(self.ode, self.prior, grid, **kwargs)
        if not self.stochastic:
            raise ValueError(f"law 'sde_sampler' needs a path with an SDE form on the grid; "
                             f"{type(self.path).__name__} has none at t1 = {grid.t1} (alpha = 0): "
                             f"use law='probability_flow'")
        return SDESamplerDistribution(self.reverse.with_lam(lam), self.prior, grid, **kwargs)

    def extra_repr(self) -> str:
        return f"target={self.target!r}, stochastic={self.stochastic}"

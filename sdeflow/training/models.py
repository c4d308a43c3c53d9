r"""The three model families, assembled from the core parts behind one interface.

The :class:`~sdeflow.training.Trainer` needs only :meth:`GenerativeModel.loss`; evaluation uses
:meth:`~GenerativeModel.sample`, :meth:`~GenerativeModel.log_likelihood` (exact, through an
ODE: :func:`sdeflow.likelihood.ode_log_likelihood`) and :meth:`~GenerativeModel.nelbo`.

==================  =========================================  ===============================
family              training objective                         :meth:`nelbo`
==================  =========================================  ===============================
:class:`DiffFlowModel`  trajectory KL on a random grid (DiffFlow)  trajectory negative ELBO
:class:`ScoreModel`     denoising score matching (VP/VE SDE)       trajectory negative ELBO
:class:`FlowModel`      exact NLL of the Euler flow (:math:`g=0`)  exact NLL of the Euler flow
==================  =========================================  ===============================

All three report the exact NLL of their continuous-time model through the probability-flow ODE
:math:`dx = [f - \tfrac12 g^2 s]\,dt` (:math:`g = 0` for the flow); so does the fourth family,
path matching (:class:`~sdeflow.training.path_model.PathMatchingModel`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torchdiffeq import odeint

from sdeflow.conditioning import bind, bind_condition, check_p_uncond, replaced, split_batch
from sdeflow.discretizers import Discretizer
from sdeflow.distributions import (
    ProbabilityFlowDistribution,
    SDESamplerDistribution,
    check_law,
)
from sdeflow.gradients import GradientStrategy
from sdeflow.grids import TimeGrid
from sdeflow.likelihood import ode_log_likelihood
from sdeflow.objectives import DenoisingScoreMatching, DiffFlowObjective, FlowNLL
from sdeflow.priors import StandardNormal
from sdeflow.processes import ForwardSDE, LinearSDE, ReverseSDE, probability_flow
from sdeflow.sampling import sample
from sdeflow.schedules import Schedule
from sdeflow.training.generative import GenerativeModel
from sdeflow.training.model_grids import GridSpec, _GridMixin
from sdeflow.training.progressive import StepsSchedule

__all__ = ["GenerativeModel", "DiffFlowModel", "ScoreModel", "FlowModel"]



class _ClippedTime(nn.Module):
    r"""``net(x, clamp(t, lo, hi))``: a network fed the clipped time (``clip_time``)."""

    def __init__(self, net: nn.Module, lo: float, hi: float) -> None:
        super().__init__()
        self.net, self.lo, self.hi = net, lo, hi

    def forward(self, x: Tensor, t: Tensor, **kwargs: Any) -> Tensor:
        return self.net(x, t.clamp(self.lo, self.hi), **kwargs)

    def conditioned(self, condition: Tensor, guidance: float = 1.0) -> _ClippedTime:
        """A copy with the network bound to ``condition``, or ``self``."""
        net = bind(self.net, condition, guidance)
        return self if net is self.net else replaced(self, net=net)


def _check_clip(clip_time: tuple[float, float]) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clip_time)
    except (TypeError, ValueError):
        raise TypeError(f"clip_time must be a pair (lo, hi) of numbers, got {clip_time!r}"
                        ) from None
    if not lo <= hi:
        raise ValueError(f"clip_time must have lo <= hi, got {clip_time!r}")
    return lo, hi


class DiffFlowModel(_GridMixin, GenerativeModel):
    r"""DiffFlow: a trainable forward drift and score, trained on the trajectory KL.

    Built from :class:`~sdeflow.processes.ForwardSDE` (:math:`dx = f\,dt + g\,dw`),
    :class:`~sdeflow.processes.ReverseSDE` (:math:`\lambda = 1`), a prior and
    :class:`~sdeflow.objectives.DiffFlowObjective`. Each training step draws the paper's random
    grid (:meth:`TimeGrid.jitter`) and, with ``progressive``, grows the number of steps.

    Arguments:
        drift_net: :math:`f(x, t)`.
        score_net: :math:`s(x, t)`.
        diffusion: :math:`g(t)` (a number or a :class:`~sdeflow.schedules.Schedule`), > 0.
        grid: A :class:`TimeGrid`, or with ``progressive`` a factory ``n -> TimeGrid``.
        prior: :math:`p_{prior}(x_N)`, a prior module (e.g. ``StandardNormal((2,))``).
        jitter: Train on the jittered grid (:meth:`TimeGrid.jitter`), on the fixed grid
            (``False``), or on grids drawn by a callable ``n -> TimeGrid`` (the official S-curve
            recipe: ``functools.partial(TimeGrid.s_curve_random, t0=1e-3, t1=0.05)``).
        progressive: A :class:`~sdeflow.training.StepsSchedule` of :math:`N`
            (:class:`~sdeflow.training.ProgressiveSteps`, :class:`~sdeflow.training.SteppedSteps`).
        discretizer: The Gaussian step scheme (Euler–Maruyama by default).
        gradient: The :class:`~sdeflow.gradients.GradientStrategy` (``Backprop`` by default;
            ``StochasticAdjoint`` for activation memory flat in :math:`N`; ``Sharded(...)`` for
            batch slices in parallel CPU threads).
        sample_grid: Grid for :meth:`sample` (default: the evaluation grid).
        clip_time: ``(lo, hi)``: in :meth:`loss` only, both networks see
            :math:`\mathrm{clamp}(t, lo, hi)` instead of :math:`t`, as the official training
            does (``modules/sde_loss.py`` passes ``conder.index(t)``, which clips to
            ``[t_start, t_end]``; its sampler passes :math:`t` itself); the steps still use
            :math:`t`. Sampling, :meth:`nelbo` and :meth:`log_likelihood` are unchanged, and
            so is the ``state_dict``.

    References:
        Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579

    Example:
        >>> import torch
        >>> from sdeflow import StandardNormal, TimeGrid
        >>> from sdeflow.nets import FourierMLP
        >>> model = DiffFlowModel(FourierMLP(2, 16, 1), FourierMLP(2, 16, 1), 0.2,
        ...                       TimeGrid.power(10, 1e-3, 0.05, 0.9), StandardNormal((2,)))
        >>> loss, info = model.loss(torch.randn(8, 2), step=1)
        >>> loss.shape, sorted(info), model.sample(3).shape
        (torch.Size([]), ['n_steps', 'nelbo'], torch.Size([3, 2]))
    """

    nelbo_kind = "trajectory negative ELBO (Euler-Maruyama, evaluation grid)"

    def __init__(
        self,
        drift_net: nn.Module,
        score_net: nn.Module,
        diffusion: float | Schedule,
        grid: GridSpec,
        prior: nn.Module,
        *,
        jitter: bool | Callable[[int], TimeGrid] = True,
        progressive: StepsSchedule | None = None,
        discretizer: Discretizer | None = None,
        gradient: GradientStrategy | None = None,
        sample_grid: TimeGrid | None = None,
        clip_time: tuple[float, float] | None = None,
        p_uncond: float = 0.0,
        guidance: float = 1.0,
    ) -> None:
        super().__init__()
        self.drift_net, self.score_net, self.prior = drift_net, score_net, prior
        self.p_uncond, self.guidance = check_p_uncond(p_uncond), float(guidance)
        self.forward_sde = ForwardSDE(drift_net, diffusion)
        if self.forward_sde.is_flow():
            raise ValueError("diffusion must be > 0 for DiffFlow; use FlowModel for g = 0")
        self.reverse = ReverseSDE(self.forward_sde, score_net, lam=1.0)
        self.objective = DiffFlowObjective(self.reverse, prior, discretizer=discretizer,
                                           gradient=gradient)
        self._setup_grid(grid, progressive, jitter)
        self.sample_grid_ts: Tensor | None
        self.register_buffer("sample_grid_ts", None if sample_grid is None else sample_grid.ts)
        self.clip_time = None if clip_time is None else _check_clip(clip_time)
        # The training objective: the same parts, with the networks seeing the clipped time.
        # Kept out of the module tree (object.__setattr__), so the state_dict has the keys of an
        # unclipped model; every tensor it holds belongs to the registered modules.
        reverse = self.reverse
        if self.clip_time is not None:
            lo, hi = self.clip_time
            forward = ForwardSDE(_ClippedTime(drift_net, lo, hi), self.forward_sde.schedule)
            reverse = ReverseSDE(forward, _ClippedTime(score_net, lo, hi), lam=1.0)
        loss_objective = self.objective
        if self.clip_time is not None or self.p_uncond:
            loss_objective = DiffFlowObjective(reverse, prior,
                                               discretizer=self.objective.discretizer,
                                               gradient=self.objective.gradient,
                                               p_uncond=self.p_uncond)
        object.__setattr__(self, "loss_objective", loss_objective)

    def loss(self, batch: Tensor | tuple[Tensor, Tensor], step: int
             ) -> tuple[Tensor, dict[str, float]]:
        x, condition = split_batch(batch)
        grid = self.training_grid(step)
        terms = self.loss_objective(x, grid, condition=condition)
        return terms.loss, {"nelbo": float(terms.loss.detach()), "n_steps": grid.n_steps}

    @torch.no_grad()
    def sample(self, n: int, *, lam: float = 1.0, grid: TimeGrid | None = None,
               condition: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """``n`` samples by the reverse family with noise scale ``lam`` (1: the reverse SDE,
        0: the probability-flow ODE by Euler steps), last step noise-free; with a
        ``condition``, guided by ``guidance`` (both networks: the guided reverse drift)."""
        if grid is None:
            grid = self.grid if self.sample_grid_ts is None else TimeGrid(self.sample_grid_ts)
        return sample(self.reverse.with_lam(lam), self.prior, grid, (n,),
                      discretizer=self.objective.discretizer,
                      **self._conditions(condition, guidance, n))

    def log_likelihood(self, x: Tensor, *, condition: Tensor | None = None,
                       guidance: float | None = None, **ode_kwargs: Any) -> Tensor:
        ode = probability_flow(self.forward_sde, self.score_net)
        return ode_log_likelihood(ode, self.prior, self.grid, x, **ode_kwargs,
                                  **self._conditions(condition, guidance)).log_prob

    @torch.no_grad()
    def nelbo(self, x: Tensor, *, condition: Tensor | None = None,
              guidance: float | None = None) -> Tensor:
        """Trajectory negative ELBO on the evaluation grid (one forward trajectory per point)."""
        return self.objective(x, self.grid, **self._conditions(condition, guidance)).nelbo

    def distribution(self, law: str = "probability_flow", *, lam: float = 1.0,
                     grid: TimeGrid | None = None, condition: Tensor | None = None,
                     guidance: float | None = None, **kwargs: Any
                     ) -> ProbabilityFlowDistribution | SDESamplerDistribution:
        """The model as a distribution over :math:`x_0` (:meth:`GenerativeModel.distribution`):
        the probability-flow ODE on the evaluation grid, or the ``lam``-sampler on the sampling
        grid (``grid`` overrides either).

        Example:
            >>> import torch
            >>> from sdeflow import StandardNormal, TimeGrid
            >>> from sdeflow.nets import FourierMLP
            >>> model = DiffFlowModel(FourierMLP(2, 16, 1), FourierMLP(2, 16, 1), 0.2,
            ...                       TimeGrid.power(10, 1e-3, 0.05, 0.9), StandardNormal((2,)))
            >>> d = model.distribution()                       # ProbabilityFlowDistribution
            >>> d.log_prob(d.sample((4,))).shape, d.event_shape
            (torch.Size([4]), torch.Size([2]))
            >>> model.distribution("sde_sampler", lam=0.5).sample((3,)).shape
            torch.Size([3, 2])
        """
        kwargs.update(self._conditions(condition, guidance))
        if check_law(law) == "probability_flow":
            return ProbabilityFlowDistribution(probability_flow(self.forward_sde, self.score_net),
                                               self.prior, self.grid if grid is None else grid,
                                               **kwargs)
        if grid is None:
            grid = self.grid if self.sample_grid_ts is None else TimeGrid(self.sample_grid_ts)
        kwargs.setdefault("discretizer", self.objective.discretizer)
        return SDESamplerDistribution(self.reverse.with_lam(lam), self.prior, grid, **kwargs)


class ScoreModel(GenerativeModel):
    r"""Score-based diffusion: a score network trained by denoising score matching under a
    fixed linear SDE (VP by default), sampled with the reverse SDE (:math:`\lambda = 1`).

    Arguments:
        score_net: :math:`s(x, t)` (called with per-sample times in training).
        sde: A :class:`~sdeflow.processes.LinearSDE` (VP, sub-VP, VE).
        state_shape: Shape of one state, e.g. ``(2,)``.
        eps: Smallest time: DSM draws :math:`t \sim U(\epsilon, T)`; sampling stops and the
            likelihood is measured at :math:`\epsilon`.
        weighting: DSM weighting, ``"sigma2"`` or ``"likelihood"``.
        sample_steps: Euler–Maruyama steps of :meth:`sample`.
        elbo_steps: Steps of the trajectory ELBO of :meth:`nelbo`.

    References:
        Score-Based Generative Modeling through SDEs (Song et al., 2021),
        https://arxiv.org/abs/2011.13456

    Example:
        >>> import torch
        >>> from sdeflow import VPSDE
        >>> from sdeflow.nets import FourierMLP
        >>> model = ScoreModel(FourierMLP(2, 16, 1), VPSDE(), (2,), sample_steps=10)
        >>> loss, info = model.loss(torch.randn(8, 2), step=1)
        >>> model.sample(4).shape
        torch.Size([4, 2])
    """

    nelbo_kind = "trajectory negative ELBO (Euler-Maruyama, uniform grid)"

    def __init__(
        self,
        score_net: nn.Module,
        sde: LinearSDE,
        state_shape: tuple[int, ...],
        *,
        eps: float = 1e-3,
        weighting: str = "sigma2",
        sample_steps: int = 500,
        elbo_steps: int = 200,
        p_uncond: float = 0.0,
        guidance: float = 1.0,
    ) -> None:
        super().__init__()
        self.score_net, self.sde, self.eps = score_net, sde, float(eps)
        self.guidance = float(guidance)
        self.dsm = DenoisingScoreMatching(sde, score_net, eps=eps, weighting=weighting,
                                          p_uncond=p_uncond)
        self.prior = StandardNormal(tuple(state_shape), scale=sde.prior_std())
        self.reverse = ReverseSDE(sde, score_net, lam=1.0)
        self.sample_steps, self.elbo_steps = int(sample_steps), int(elbo_steps)
        self.elbo_objective = DiffFlowObjective(self.reverse, self.prior)

    def _grid(self, n: int) -> TimeGrid:
        ref = self.prior.loc
        return TimeGrid.uniform(n, self.eps, self.sde.T, dtype=ref.dtype, device=ref.device)

    def loss(self, batch: Tensor | tuple[Tensor, Tensor], step: int
             ) -> tuple[Tensor, dict[str, float]]:
        x, condition = split_batch(batch)
        loss = self.dsm(x, condition=condition).loss
        return loss, {"dsm": float(loss.detach())}

    @torch.no_grad()
    def sample(self, n: int, *, lam: float = 1.0, steps: int | None = None,
               grid: TimeGrid | None = None, condition: Tensor | None = None,
               guidance: float | None = None) -> Tensor:
        """``n`` samples by the reverse family with noise scale ``lam`` on ``grid`` (default: a
        uniform grid of ``steps``, else ``sample_steps``, over ``[eps, T]``); with a
        ``condition``, guided by ``guidance``."""
        if grid is None:
            grid = self._grid(steps or self.sample_steps)
        return sample(self.reverse.with_lam(lam), self.prior, grid, (n,),
                      **self._conditions(condition, guidance, n))

    def log_likelihood(self, x: Tensor, *, condition: Tensor | None = None,
                       guidance: float | None = None, **ode_kwargs: Any) -> Tensor:
        ode = probability_flow(self.sde, self.score_net)
        return ode_log_likelihood(ode, self.prior, self._grid(1), x, **ode_kwargs,
                                  **self._conditions(condition, guidance)).log_prob

    @torch.no_grad()
    def nelbo(self, x: Tensor, *, condition: Tensor | None = None,
              guidance: float | None = None) -> Tensor:
        """Negative ELBO of the Euler–Maruyama backward chain on ``elbo_steps`` uniform steps
        (the same trajectory bound DiffFlow trains, with the forward process fixed)."""
        return self.elbo_objective(x, self._grid(self.elbo_steps),
                                   **self._conditions(condition, guidance)).nelbo

    def distribution(self, law: str = "probability_flow", *, lam: float = 1.0,
                     steps: int | None = None, condition: Tensor | None = None,
                     guidance: float | None = None, **kwargs: Any
                     ) -> ProbabilityFlowDistribution | SDESamplerDistribution:
        """The model as a distribution over :math:`x_0` (:meth:`GenerativeModel.distribution`):
        the probability-flow ODE from ``eps`` to ``T``, or the ``lam``-sampler on ``steps``
        (default ``sample_steps``) uniform steps."""
        kwargs.update(self._conditions(condition, guidance))
        if check_law(law) == "probability_flow":
            return ProbabilityFlowDistribution(probability_flow(self.sde, self.score_net),
                                               self.prior, self._grid(1), **kwargs)
        return SDESamplerDistribution(self.reverse.with_lam(lam), self.prior,
                                      self._grid(steps or self.sample_steps), **kwargs)


class FlowModel(_GridMixin, GenerativeModel):
    r"""The normalizing flow DiffFlow becomes as :math:`g \to 0`: ``ForwardSDE(drift, 0.0)``
    trained on the exact NLL of its Euler steps (:class:`~sdeflow.objectives.FlowNLL`).

    Sampling integrates the ODE :math:`dx = f\,dt` backward from the prior with an adaptive
    solver (the continuous flow whose exact NLL :meth:`log_likelihood` reports).

    Arguments:
        drift_net: :math:`f(x, t)`.
        grid: A :class:`TimeGrid`, or with ``progressive`` a factory ``n -> TimeGrid``.
        prior: :math:`p_{prior}(x_N)` as a prior module.
        jitter: Train on the jittered grid.
        progressive: A :class:`ProgressiveSteps` schedule of :math:`N`.

    Example:
        >>> import torch
        >>> from sdeflow import StandardNormal, TimeGrid
        >>> from sdeflow.nets import FourierMLP
        >>> model = FlowModel(FourierMLP(2, 16, 1), TimeGrid.power(10, 1e-3, 0.05, 0.9),
        ...                   StandardNormal((2,)))
        >>> loss, _ = model.loss(torch.randn(8, 2), step=1)
        >>> model.sample(3).shape
        torch.Size([3, 2])
    """

    nelbo_kind = "exact NLL of the Euler flow on the evaluation grid"

    def __init__(
        self,
        drift_net: nn.Module,
        grid: GridSpec,
        prior: nn.Module,
        *,
        jitter: bool = True,
        progressive: StepsSchedule | None = None,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        p_uncond: float = 0.0,
        guidance: float = 1.0,
    ) -> None:
        super().__init__()
        self.drift_net, self.prior = drift_net, prior
        self.flow = ForwardSDE(drift_net, 0.0)
        self.objective = FlowNLL(self.flow, prior)
        self.guidance = float(guidance)
        loss_objective = FlowNLL(self.flow, prior, p_uncond=p_uncond) if p_uncond else \
            self.objective
        object.__setattr__(self, "loss_objective", loss_objective)
        self._setup_grid(grid, progressive, jitter)
        self.rtol, self.atol = rtol, atol

    def loss(self, batch: Tensor | tuple[Tensor, Tensor], step: int
             ) -> tuple[Tensor, dict[str, float]]:
        x, condition = split_batch(batch)
        grid = self.training_grid(step)
        terms = self.loss_objective(x, grid, condition=condition)
        return terms.loss, {"nll": float(terms.loss.detach()), "n_steps": grid.n_steps}

    @torch.no_grad()
    def sample(self, n: int, *, lam: float = 1.0, grid: TimeGrid | None = None,
               condition: Tensor | None = None, guidance: float | None = None) -> Tensor:
        r"""``n`` samples of :math:`dx = f\,dt` integrated backward from the prior: by the
        adaptive solver, or by Euler steps on ``grid``. ``lam`` has no effect: with
        :math:`g = 0` every member of the reverse family is this ODE."""
        x_final = self.prior().sample((n,))
        call = self._conditions(condition, guidance, n)
        flow = bind_condition(self.flow, call.get("condition"), call.get("guidance", 1.0),
                              batch=n, like=x_final, where="FlowModel.sample")
        if grid is None:
            ts = torch.tensor([self.grid.t1, self.grid.t0], dtype=x_final.dtype,
                              device=x_final.device)
            options = {"rtol": self.rtol, "atol": self.atol}
        else:
            ts, options = grid.ts.to(x_final).flip(0), {"method": "euler"}
        xs = odeint(lambda t, x: flow.drift(x, t), x_final, ts, **options)
        return xs[-1]

    def log_likelihood(self, x: Tensor, *, condition: Tensor | None = None,
                       guidance: float | None = None, **ode_kwargs: Any) -> Tensor:
        return ode_log_likelihood(self.flow, self.prior, self.grid, x, **ode_kwargs,
                                  **self._conditions(condition, guidance)).log_prob

    @torch.no_grad()
    def nelbo(self, x: Tensor, *, condition: Tensor | None = None,
              guidance: float | None = None) -> Tensor:
        """Exact NLL of the Euler flow on the evaluation grid (the training objective)."""
        with torch.enable_grad():  # the Jacobians need autograd
            return self.objective(x, self.grid, **self._conditions(condition, guidance)
                                  ).nll.detach()

    def distribution(self, law: str = "probability_flow", *, condition: Tensor | None = None,
                     guidance: float | None = None, **kwargs: Any
                     ) -> ProbabilityFlowDistribution:
        r"""The continuous flow as a distribution over :math:`x_0`: samples and exact density
        through the ODE :math:`dx = f\,dt` (the solver's ``rtol``/``atol`` by default). A flow has
        no noise, so ``"probability_flow"`` is its only law."""
        if check_law(law) != "probability_flow":
            raise ValueError("law must be 'probability_flow' for a FlowModel (g = 0: there is no "
                             "SDE sampler), got 'sde_sampler'")
        kwargs.setdefault("rtol", self.rtol)
        kwargs.setdefault("atol", self.atol)
        kwargs.update(self._conditions(condition, guidance))
        return ProbabilityFlowDistribution(self.flow, self.prior, self.grid, **kwargs)


r"""A trained model as a distribution over :math:`x_0`: two laws, two classes.

A model (a reverse process, a prior at :math:`t_1` and a grid) defines two different laws of
:math:`x_0`, and each class here is one of them, by name:

- :class:`ProbabilityFlowDistribution`: the law of :math:`x_{t_0} = \Phi(x_{t_1})`,
  :math:`x_{t_1} \sim p_{prior}`, with :math:`\Phi` the flow of the probability-flow ODE
  :math:`dx/dt = v(x, t) = f - \tfrac12 g^2 s` from :math:`t_1` down to :math:`t_0`. Its samples
  (the ODE solved downward) and its :meth:`~ProbabilityFlowDistribution.log_prob` (the
  instantaneous change of variables solved upward, :func:`~sdeflow.likelihood.ode_log_likelihood`,
  with the same solver) describe the same law, up to the solver's tolerance:

  .. math:: \log p(x_0) = \log p_{prior}(x_{t_1}) + \int_{t_0}^{t_1}
            \operatorname{tr}\frac{\partial v}{\partial x}(x_t, t)\,dt.

- :class:`SDESamplerDistribution`: the law of what the :math:`\lambda`-sampler
  (:func:`~sdeflow.sampling.sample`) returns: Euler–Maruyama (or another scheme) steps of the
  reverse family :math:`dx = [f - \tfrac{1+\lambda^2}{2} g^2 s]\,dt + \lambda g\,d\bar w` down a
  grid. With an exact score and an infinitely fine grid both laws are the model's marginal
  :math:`p_{t_0}`; a trained score on a finite grid gives a slightly different law, whose density
  has no closed form. Its ``log_prob`` exists only through an explicitly named surrogate
  (``log_prob_surrogate=``): the ODE's density (``"probability_flow"``, an approximation) or the
  trajectory ELBO (``"elbo"``, a stochastic lower bound on the density of exactly this law when
  the last step is noisy).

Both are :class:`pyro.distributions.TorchDistribution`\ s: ``event_shape`` is the state shape,
``batch_shape`` the prior's, ``expand``, ``sample(sample_shape, generator=...)``, pathwise
``rsample`` (gradients reach the networks' parameters and the prior's draw), and they work as
``pyro.sample`` sites, latent or observed.

**Conditional models.** With ``condition=y`` (one entry per batch element: ``(B,)`` labels or
``(B, k)`` vectors, :mod:`sdeflow.conditioning`) a distribution is the law of :math:`x_0 \mid y`
for each :math:`y`: its ``batch_shape`` is ``(B,)`` (a prior without batch shape is expanded
to it), ``sample((n,))`` is ``(n, B, *state)`` and ``log_prob`` of a value ``(*S, B, *state)``
is :math:`\log p(x_0 \mid y)`, ``(*S, B)``; ``guidance`` is the classifier-free guidance scale.

References:
    | Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579
    | Score-Based Generative Modeling through SDEs (Song et al., 2021),
      https://arxiv.org/abs/2011.13456
    | FFJORD (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.distributions import Distribution
from torchdiffeq import odeint

from sdeflow._checks import check_same_device_dtype
from sdeflow._model_distribution import (
    SampleShape,
    _Drift,
    _ModelDistribution,
    _OnFlatStates,
)
from sdeflow.conditioning import bind
from sdeflow.discretizers import Discretizer, EulerMaruyama
from sdeflow.grids import TimeGrid
from sdeflow.likelihood import (
    _ADAPTIVE_RK_METHODS,
    _FIXED_GRID_METHODS,
    PROBES,
    TRACE_METHODS,
    _check_zero_diffusion,
    _probes_for,
    _solve_with_divergence,
    ode_log_likelihood,
)
from sdeflow.objectives.diffflow import DiffFlowObjective
from sdeflow.processes.base import SDE
from sdeflow.sampling import sample as sample_reverse

__all__ = ["ProbabilityFlowDistribution", "SDESamplerDistribution", "LOG_PROB_SURROGATES",
           "MODEL_LAWS", "check_law"]

#: Values of ``log_prob_surrogate`` accepted by :class:`SDESamplerDistribution`.
LOG_PROB_SURROGATES: tuple[str, ...] = ("probability_flow", "elbo")
#: The laws a trained model offers (``GenerativeModel.distribution(law)``): the
#: probability-flow ODE's (:class:`ProbabilityFlowDistribution`) and the SDE sampler's
#: (:class:`SDESamplerDistribution`).
MODEL_LAWS: tuple[str, ...] = ("probability_flow", "sde_sampler")


def check_law(law: str) -> str:
    """``law`` if it is one of :data:`MODEL_LAWS`, else a :class:`ValueError` naming them.

    Example:
        >>> check_law("sde_sampler")
        'sde_sampler'
    """
    if law not in MODEL_LAWS:
        raise ValueError(f"law must be one of {MODEL_LAWS} (the probability-flow ODE's law, whose "
                         f"samples and density agree, or the SDE sampler's), got {law!r}")
    return law

class ProbabilityFlowDistribution(_ModelDistribution):
    r"""The law of the probability-flow ODE: :math:`x_{t_0} = \Phi(x_{t_1})`,
    :math:`x_{t_1} \sim p_{prior}`; its samples and its exact density agree (module docstring).

    Arguments:
        process: The ODE :math:`dx/dt = v(x, t)`: ``probability_flow(forward, score)``, a flow
            ``ForwardSDE(drift, 0.0)``, or any process with zero diffusion. A reverse process of
            any :math:`\lambda` (one with ``with_lam``) stands for its probability-flow ODE,
            ``process.with_lam(0.0)``.
        prior: :math:`p_{prior}` at :math:`t_1`: a distribution or a prior module; its
            ``event_shape`` is the state shape, its ``batch_shape`` this distribution's.
        grid: The model's :class:`~sdeflow.grids.TimeGrid`: :math:`x_0` lives at ``grid.t0``,
            the prior at ``grid.t1``; a fixed-step ``method`` steps on its times.
        trace, n_probes, probe, rtol, atol, method, options: The solver options of
            :func:`~sdeflow.likelihood.ode_log_likelihood`, used by :meth:`log_prob` and (``rtol``,
            ``atol``, ``method``, ``options``) by the samplers, so both solve the same ODE.
        condition: For an ODE with conditional networks: the condition of each batch element,
            ``(B,)`` labels or ``(B, k)`` vectors (the batch shape; see the module docstring).
        guidance: The classifier-free guidance scale (needs ``condition``).

    :meth:`log_prob` is differentiable in ``value`` and in the parameters while grad mode is on
    (the solve keeps its graph, ``create_graph=True``); under :func:`torch.no_grad` it keeps
    none. With ``trace="hutchinson"`` it is an unbiased estimate with fresh probes per call.

    References:
        | Score-Based Generative Modeling through SDEs (Song et al., 2021),
          https://arxiv.org/abs/2011.13456
        | Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, StandardNormal, TimeGrid, probability_flow
        >>> ode = probability_flow(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x)
        >>> d = ProbabilityFlowDistribution(ode, StandardNormal((2,)), TimeGrid.uniform(5, 0., 1.))
        >>> x = d.sample((3,), generator=torch.Generator().manual_seed(0))
        >>> x.shape, d.log_prob(x).shape, d.expand((4,)).sample().shape
        (torch.Size([3, 2]), torch.Size([3]), torch.Size([4, 2]))
    """

    def __init__(
        self,
        process: SDE,
        prior: Distribution | Callable[[], Distribution],
        grid: TimeGrid,
        *,
        trace: str = "auto",
        n_probes: int = 1,
        probe: str = "rademacher",
        rtol: float = 1e-5,
        atol: float = 1e-5,
        method: str = "dopri5",
        options: dict | None = None,
        validate_args: bool | None = None,
        condition: Tensor | None = None,
        guidance: float = 1.0,
    ) -> None:
        ode = process.with_lam(0.0) if callable(getattr(process, "with_lam", None)) else process
        super().__init__(ode, prior, grid, validate_args, condition, guidance)
        if trace not in TRACE_METHODS:
            raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
        if probe not in PROBES:
            raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
        self.ode = ode
        self.solver: dict[str, Any] = dict(trace=trace, n_probes=n_probes, probe=probe, rtol=rtol,
                                           atol=atol, method=method, options=options)

    def expand(self, batch_shape, _instance=None) -> ProbabilityFlowDistribution:
        batch_shape = torch.Size(batch_shape)
        return ProbabilityFlowDistribution(self.ode, self.prior.expand(batch_shape),
                                           self.grid, validate_args=self._validate_args,
                                           **self.solver,
                                           **self._expanded_condition(batch_shape))

    def _bound_ode(self, lead: torch.Size) -> SDE:
        """The ODE bound to the condition of states flattened from ``(*lead, *state)``."""
        call = self._conditions(lead)
        return self.ode if not call else bind(self.ode, call["condition"], call["guidance"])

    def _solve_down(self, x_final: Tensor) -> Tensor:
        """:math:`\\Phi(x_{t_1})`: the ODE from ``grid.t1`` down to ``grid.t0``."""
        state = tuple(self.event_shape)
        lead = x_final.shape[: x_final.dim() - len(state)]
        flat = x_final.reshape((-1,) + state)
        if flat.shape[0] == 0:
            return x_final
        check_same_device_dtype("prior samples", flat, "grid.ts", self.grid.ts)
        _check_zero_diffusion(self.ode, flat, self.grid)
        ode = self._bound_ode(lead)
        s = self.solver
        options = dict(s["options"] or {})
        fixed = s["method"] in _FIXED_GRID_METHODS and "step_size" not in options
        ts = self.grid.ts.flip(0) if fixed else self.grid.ts[[-1, 0]]
        if s["method"] in _ADAPTIVE_RK_METHODS:
            # land the last step on t0: no stage evaluates the fields below t0, where a process
            # may be undefined (a VP marginal's sigma(t)^2 < 0 for t < 0)
            options.setdefault("step_t", self.grid.ts[:1])
        xs = odeint(_Drift(ode), flat, ts, rtol=s["rtol"], atol=s["atol"],
                    method=s["method"], options=options or None)
        return xs[-1].reshape(lead + self.event_shape)

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        """Pathwise draws: the prior's reparameterized draw pushed through the ODE (gradients
        reach the ODE's parameters and the prior's)."""
        return self._solve_down(self._draw_prior(sample_shape, None, reparameterized=True))

    def sample(self, sample_shape: SampleShape = torch.Size(),
               generator: torch.Generator | None = None) -> Tensor:
        """Draws without autograd; ``generator`` seeds the prior's draw."""
        with torch.no_grad():
            return self._solve_down(self._draw_prior(sample_shape, generator, False))

    def log_prob(self, value: Tensor) -> Tensor:
        r""":math:`\log p(x_0)` by :func:`~sdeflow.likelihood.ode_log_likelihood`, shape
        ``(*sample_shape, *batch_shape)``."""
        flat, lead = self._flatten_value(value)
        result = ode_log_likelihood(self.ode, _OnFlatStates(self.prior, lead), self.grid, flat,
                                    create_graph=torch.is_grad_enabled(), **self.solver,
                                    **self._conditions(lead))
        return result.log_prob.reshape(lead)

    def _with_log_prob(self, x_final: Tensor, generator: torch.Generator | None,
                       create_graph: bool) -> tuple[Tensor, Tensor]:
        r""":math:`(x_{t_0}, \log p(x_{t_0}))` from prior draws: one downward solve from
        :math:`\ell(t_1) = 0` gives :math:`\ell(t_0) = -\int_{t_0}^{t_1}\operatorname{tr}J\,dt`."""
        state = tuple(self.event_shape)
        lead = x_final.shape[: x_final.dim() - len(state)]
        prior_log_prob = self.prior.log_prob(x_final)
        flat = x_final.reshape((-1,) + state)
        if flat.shape[0] == 0:
            return x_final, prior_log_prob
        check_same_device_dtype("prior samples", flat, "grid.ts", self.grid.ts)
        _check_zero_diffusion(self.ode, flat, self.grid)
        s = self.solver
        probes = _probes_for(s["trace"], s["n_probes"], s["probe"], flat, generator)
        x0, delta, _ = _solve_with_divergence(
            self._bound_ode(lead), flat, self.grid, probes=probes, create_graph=create_graph,
            downward=True, rtol=s["rtol"], atol=s["atol"], method=s["method"], options=s["options"])
        return x0.reshape(lead + self.event_shape), prior_log_prob - delta.reshape(lead)

    def sample_and_log_prob(self, sample_shape: SampleShape = torch.Size(),
                            generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        r"""Samples with their exact log-density in one solve, without autograd: the
        probability-flow ODE from the prior's draw :math:`x_{t_1}` down to :math:`t_0` with the
        divergence alongside (the instantaneous change of variables, FFJORD),

        .. math:: \log p(x_{t_0}) = \log p_{prior}(x_{t_1})
                  + \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial v}{\partial x}(x_t, t)\,dt,

        equal to :meth:`log_prob` of the returned samples up to the solver's tolerance (as
        zuko's flows offer). The trace is :meth:`log_prob`'s (``trace``, ``n_probes``, ``probe``;
        probes and prior draw from ``generator``). Shapes ``(*sample_shape, *batch_shape,
        *event_shape)`` and ``(*sample_shape, *batch_shape)``.

        Example:
            >>> import torch
            >>> from sdeflow import ForwardSDE, StandardNormal, TimeGrid, probability_flow
            >>> ode = probability_flow(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x)
            >>> d = ProbabilityFlowDistribution(ode, StandardNormal((2,), dtype=torch.float64),
            ...                                 TimeGrid.uniform(5, 0., 1., dtype=torch.float64),
            ...                                 rtol=1e-8, atol=1e-8)
            >>> x, log_p = d.sample_and_log_prob((3,), generator=torch.Generator().manual_seed(0))
            >>> x.shape, log_p.shape, torch.allclose(log_p, d.log_prob(x), atol=1e-6)
            (torch.Size([3, 2]), torch.Size([3]), True)
        """
        with torch.no_grad():
            x_final = self._draw_prior(sample_shape, generator, reparameterized=False)
            return self._with_log_prob(x_final, generator, create_graph=False)

    def rsample_and_log_prob(self, sample_shape: SampleShape = torch.Size(),
                             generator: torch.Generator | None = None
                             ) -> tuple[Tensor, Tensor]:
        r"""Pathwise :meth:`sample_and_log_prob`: the prior's reparameterized draw through the
        augmented ODE with its graph kept (in grad mode): samples and log-density differentiable
        in the ODE's and the prior's parameters (a reverse KL :math:`E_q[\log q - \log p]` by
        one solve per batch). ``generator`` draws the Hutchinson probes only.

        Example:
            >>> import torch
            >>> from sdeflow import ForwardSDE, StandardNormal, TimeGrid
            >>> a = torch.tensor(0.5, requires_grad=True)
            >>> d = ProbabilityFlowDistribution(ForwardSDE(lambda x, t: -a * x, 0.0),
            ...                                 StandardNormal((2,)), TimeGrid.uniform(4, 0., 1.))
            >>> x, log_p = d.rsample_and_log_prob((5,))
            >>> (x.sum() + log_p.sum()).backward()
            >>> a.grad is not None
            True
        """
        x_final = self._draw_prior(sample_shape, None, reparameterized=True)
        return self._with_log_prob(x_final, generator, create_graph=torch.is_grad_enabled())


class SDESamplerDistribution(_ModelDistribution):
    r"""The law of the :math:`\lambda`-sampler's output on a grid (see the module docstring):
    prior at ``grid.t1``, then ``discretizer`` steps of ``reverse`` down to ``grid.t0``.

    Arguments:
        reverse: The reverse process (its :math:`\lambda`, e.g. ``reverse.with_lam(0.5)``).
        prior: :math:`p_{prior}` at :math:`t_1` (a distribution or a prior module).
        grid: The sampling grid.
        discretizer: The step scheme (Euler–Maruyama by default).
        denoise: The paper's noise-free last step (:func:`~sdeflow.sampling.sample`'s default).
        log_prob_surrogate: What :meth:`log_prob` returns, since this law has no closed-form
            density: ``None`` (it raises), ``"probability_flow"`` (the probability-flow ODE's
            exact density, an approximation of this law's) or ``"elbo"`` (minus the trajectory
            negative ELBO of one forward path per value: an unbiased estimate of a lower bound
            on the log-density of exactly this law; needs ``denoise=False`` and a Gaussian
            scheme, and ``reverse`` with its forward process and score, as
            :class:`~sdeflow.objectives.DiffFlowObjective`).
        ode_options: Solver options of :class:`ProbabilityFlowDistribution` for
            :meth:`probability_flow` and the ``"probability_flow"`` surrogate.
        condition, guidance: As :class:`ProbabilityFlowDistribution`'s (the module docstring).

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x, lam=1.0)
        >>> d = SDESamplerDistribution(rev, StandardNormal((2,)), TimeGrid.uniform(20, 0., 1.),
        ...                            log_prob_surrogate="probability_flow")
        >>> x = d.sample((3,), generator=torch.Generator().manual_seed(0))
        >>> x.shape, d.log_prob(x).shape
        (torch.Size([3, 2]), torch.Size([3]))
    """

    def __init__(
        self,
        reverse: SDE,
        prior: Distribution | Callable[[], Distribution],
        grid: TimeGrid,
        *,
        discretizer: Discretizer | None = None,
        denoise: bool = True,
        log_prob_surrogate: str | None = None,
        ode_options: dict | None = None,
        validate_args: bool | None = None,
        condition: Tensor | None = None,
        guidance: float = 1.0,
    ) -> None:
        super().__init__(reverse, prior, grid, validate_args, condition, guidance)
        discretizer = discretizer or EulerMaruyama()
        if not isinstance(discretizer, Discretizer):
            raise TypeError(f"discretizer must be an sdeflow Discretizer, got "
                            f"{type(discretizer).__name__}")
        if log_prob_surrogate is not None and log_prob_surrogate not in LOG_PROB_SURROGATES:
            raise ValueError(f"log_prob_surrogate must be None or one of {LOG_PROB_SURROGATES}, "
                             f"got {log_prob_surrogate!r}")
        if log_prob_surrogate == "elbo":
            if denoise:
                raise ValueError("log_prob_surrogate='elbo' bounds the density of the chain "
                                 "whose last step is noisy: pass denoise=False")
            if not discretizer.gaussian:
                raise TypeError(f"log_prob_surrogate='elbo' needs a Gaussian discretizer, "
                                f"{type(discretizer).__name__} has no transition density")
        self.reverse, self.discretizer, self.denoise = reverse, discretizer, bool(denoise)
        self.log_prob_surrogate = log_prob_surrogate
        self.ode_options = dict(ode_options or {})

    def expand(self, batch_shape, _instance=None) -> SDESamplerDistribution:
        batch_shape = torch.Size(batch_shape)
        return SDESamplerDistribution(
            self.reverse, self.prior.expand(batch_shape), self.grid,
            discretizer=self.discretizer, denoise=self.denoise,
            log_prob_surrogate=self.log_prob_surrogate, ode_options=self.ode_options,
            validate_args=self._validate_args, **self._expanded_condition(batch_shape))

    def _lead(self, x_final: Tensor) -> torch.Size:
        return x_final.shape[: x_final.dim() - len(self.event_shape)]

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        """Pathwise draws (fresh step noises from the global RNG): gradients reach the
        networks' parameters and the prior's draw."""
        x_final = self._draw_prior(sample_shape, None, reparameterized=True)
        return sample_reverse(self.reverse, self.prior, self.grid, discretizer=self.discretizer,
                              denoise=self.denoise, x_final=x_final, keep_graph=True,
                              **self._conditions(self._lead(x_final)))

    def sample(self, sample_shape: SampleShape = torch.Size(),
               generator: torch.Generator | None = None) -> Tensor:
        """Draws without autograd; ``generator`` drives the step noises and seeds the prior."""
        with torch.no_grad():
            x_final = self._draw_prior(sample_shape, generator, reparameterized=False)
            return sample_reverse(self.reverse, self.prior, self.grid,
                                  discretizer=self.discretizer, denoise=self.denoise,
                                  generator=generator, x_final=x_final,
                                  **self._conditions(self._lead(x_final)))

    def probability_flow(self) -> ProbabilityFlowDistribution:
        """The probability-flow ODE's law of the same model (``ode_options`` for its solver)."""
        return ProbabilityFlowDistribution(self.reverse, self.prior, self.grid,
                                           validate_args=self._validate_args, **self.ode_options,
                                           **self._expanded_condition(self.batch_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        """The ``log_prob_surrogate`` chosen at construction, ``(*sample_shape, *batch_shape)``."""
        if self.log_prob_surrogate is None:
            raise NotImplementedError(
                "SDESamplerDistribution has no exact log_prob: the law of the sampler on a grid "
                "has no closed-form density. Choose log_prob_surrogate='probability_flow' (the "
                "ODE's density, an approximation) or 'elbo' (a lower bound, denoise=False), or "
                "use ProbabilityFlowDistribution, whose samples and density agree")
        if self.log_prob_surrogate == "probability_flow":
            return self.probability_flow().log_prob(value)
        flat, lead = self._flatten_value(value)
        objective = DiffFlowObjective(self.reverse, _OnFlatStates(self.prior, lead),
                                      discretizer=self.discretizer)
        return -objective(flat, self.grid, **self._conditions(lead)).nelbo.reshape(lead)

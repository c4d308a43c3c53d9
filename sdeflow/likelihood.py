r"""Exact log-likelihood through an ODE, and conversions to bits per dimension.

For an ODE :math:`dx/dt = v(x, t)` the instantaneous change of variables
:math:`\frac{d}{dt}\log p_t(x_t) = -\operatorname{tr}\frac{\partial v}{\partial x}(x_t, t)` gives

.. math:: \log p_{t_0}(x_{t_0}) = \log p_{prior}(x_{t_1})
          + \int_{t_0}^{t_1} \operatorname{tr}\frac{\partial v}{\partial x}(x_t, t)\, dt,

solved by integrating :math:`(x_t, \int \operatorname{tr})` jointly from :math:`t_0` up to
:math:`t_1` with an adaptive solver (torchdiffeq). :math:`v` is the drift of a process with zero
diffusion: the probability-flow ODE :math:`v = f - \tfrac12 g^2 s` of DiffFlow or score-based
diffusion (:func:`~sdeflow.processes.probability_flow`), or a flow ``ForwardSDE(drift, 0.0)``
(the :math:`g \to 0` limit, the paper's Theorem 1).

The trace is exact (one vector-Jacobian product per state element) for small states, or
Hutchinson's estimator :math:`\operatorname{tr} J \approx \epsilon^\top J \epsilon` with probes
:math:`\epsilon` drawn once per call and held fixed over the solve (FFJORD); since the path
:math:`x_t` does not depend on the probes, the estimate of the integral is unbiased.

References:
    | Neural Ordinary Differential Equations (Chen et al., 2018), https://arxiv.org/abs/1806.07366
    | FFJORD (Grathwohl et al., 2019), https://arxiv.org/abs/1810.01367
    | Score-Based Generative Modeling through SDEs (Song et al., 2021),
      https://arxiv.org/abs/2011.13456
    | Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution
from torchdiffeq import odeint

from sdeflow._checks import check_modules, check_same_device_dtype
from sdeflow.conditioning import bind_condition
from sdeflow.grids import TimeGrid
from sdeflow.objectives.diffflow import DiffFlowTerms
from sdeflow.priors import check_data
from sdeflow.processes.base import SDE

__all__ = [
    "LikelihoodResult",
    "ode_log_likelihood",
    "bits_per_dim",
    "elbo_bits_per_dim",
    "TRACE_METHODS",
    "PROBES",
]

#: Values of ``trace`` accepted by :func:`ode_log_likelihood`.
TRACE_METHODS: tuple[str, ...] = ("auto", "exact", "hutchinson")
#: Probe distributions of Hutchinson's estimator.
PROBES: tuple[str, ...] = ("rademacher", "gaussian")
#: torchdiffeq's fixed-step methods (they step on the grid's times).
_FIXED_GRID_METHODS = frozenset({"euler", "midpoint", "heun2", "heun3", "rk4", "explicit_adams",
                                 "implicit_adams", "fixed_adams"})
#: torchdiffeq's adaptive Runge–Kutta methods: they step past the last time and interpolate back
#: unless told to land on it (``step_t``), which would evaluate the ODE beyond t1 (where, e.g.,
#: an affine path's SDE form with alpha(1) = 0 does not exist)
_ADAPTIVE_RK_METHODS = frozenset({"dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun"})
#: ``trace="auto"`` is exact up to this many elements per state.
AUTO_EXACT_MAX_DIM = 32


@dataclass
class LikelihoodResult:
    r"""The ODE log-likelihood of each sample and its parts.

    Attributes:
        log_prob: :math:`\log p_{t_0}(x_{t_0})`, ``(B,)``, nats: ``prior_log_prob +
            delta_log_prob``.
        prior_log_prob: :math:`\log p_{prior}(x_{t_1})`, ``(B,)``.
        delta_log_prob: :math:`\int_{t_0}^{t_1} \operatorname{tr}(\partial v/\partial x)\,dt`,
            ``(B,)``.
        x_final: :math:`x_{t_1}`, ``(B, *state)``.
        nfe: Number of evaluations of the ODE's right-hand side by the solver.
    """

    log_prob: Tensor
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    x_final: Tensor
    nfe: int

    @property
    def nll(self) -> Tensor:
        """Negative log-likelihood per sample, ``(B,)``, nats."""
        return -self.log_prob

    def bits_per_dim(self, levels: int | None = None) -> Tensor:
        """:func:`bits_per_dim` of :attr:`nll`, ``(B,)``."""
        return bits_per_dim(self.nll, self.x_final[0].numel(), levels=levels)


def _check_zero_diffusion(ode: SDE, x0: Tensor, grid: TimeGrid) -> None:
    """Raise unless ``ode``'s diffusion vanishes at the grid's times (read from its declared
    :math:`g(t)`, or from :meth:`~sdeflow.processes.SDE.diffusion` for state-dependent noise)."""
    ts = grid.ts
    if ode.additive_noise:
        nonzero = bool((ode.diffusion_scale(ts) != 0).any())
    else:
        nonzero = any(bool((ode.diffusion(x0, t) != 0).any()) for t in ts.unbind(0))
    if nonzero:
        raise ValueError(
            f"ode must have zero diffusion, got a {type(ode).__name__} with diffusion != 0 on the "
            f"grid: for a reverse process use its probability-flow ODE, probability_flow(forward, "
            f"score) or reverse.with_lam(0); for a flow, ForwardSDE(drift, 0.0)"
        )


def _exact_trace(v: Tensor, x: Tensor, create_graph: bool) -> Tensor:
    r""":math:`\operatorname{tr}(\partial v/\partial x)` per sample by one VJP per element.

    Samples must not interact (no batch statistics): then row :math:`i` of every sample's
    Jacobian is the gradient of :math:`\sum_b v_{b,i}`.
    """
    b = x.shape[0]
    v_flat = v.reshape(b, -1)
    d = v_flat.shape[1]
    trace = torch.zeros(b, dtype=x.dtype, device=x.device)
    for i in range(d):
        (row,) = torch.autograd.grad(
            v_flat[:, i].sum(), x, retain_graph=create_graph or i < d - 1,
            create_graph=create_graph,
        )
        trace = trace + row.reshape(b, -1)[:, i]
    return trace


def _hutchinson_trace(v: Tensor, x: Tensor, probes: Tensor, create_graph: bool) -> Tensor:
    r"""Mean over probes of :math:`\epsilon^\top (\partial v/\partial x)\, \epsilon`, ``(B,)``."""
    b, k = x.shape[0], probes.shape[0]
    trace = torch.zeros(b, dtype=x.dtype, device=x.device)
    for j in range(k):
        (vjp,) = torch.autograd.grad(
            v, x, probes[j], retain_graph=create_graph or j < k - 1, create_graph=create_graph
        )
        trace = trace + (vjp * probes[j]).reshape(b, -1).sum(-1)
    return trace / k


class _Dynamics(nn.Module):
    """Right-hand side of the joint ODE for ``(x, delta_log_prob)``; counts its evaluations."""

    def __init__(self, ode: SDE, probes: Tensor | None, create_graph: bool) -> None:
        super().__init__()
        self.ode, self.probes, self.create_graph, self.nfe = ode, probes, create_graph, 0

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        self.nfe += 1
        x = state[0]
        with torch.enable_grad():
            if not (self.create_graph and x.requires_grad):
                # a fresh leaf: never flag the caller's tensor; outside create_graph the solve
                # needs no graph, only the Jacobian at this point
                x = x.detach().requires_grad_(True)
            v = self.ode.drift(x, t)
            if self.probes is None:
                trace = _exact_trace(v, x, self.create_graph)
            else:
                trace = _hutchinson_trace(v, x, self.probes, self.create_graph)
        if not self.create_graph:
            v, trace = v.detach(), trace.detach()
        return v, trace


def _draw_probes(kind: str, shape: tuple[int, ...], x0: Tensor,
                 generator: torch.Generator | None) -> Tensor:
    """Probes of ``shape`` on ``x0``'s device and dtype (drawn where ``generator`` lives)."""
    device = generator.device if generator is not None else x0.device
    if kind == "gaussian":
        probes = torch.randn(shape, generator=generator, dtype=x0.dtype, device=device)
    else:  # Rademacher: the minimum-variance probe for Hutchinson's estimator
        bits = torch.randint(0, 2, shape, generator=generator, device=device)
        probes = bits.to(x0.dtype) * 2 - 1
    return probes.to(x0.device)


def _resolve_trace(trace: str, dim: int) -> str:
    """``"exact"`` or ``"hutchinson"``: ``trace`` itself, or for ``"auto"`` exact when a state of
    ``dim`` elements has at most :data:`AUTO_EXACT_MAX_DIM` of them (private helper)."""
    if trace not in TRACE_METHODS:
        raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
    if trace == "auto":
        return "exact" if dim <= AUTO_EXACT_MAX_DIM else "hutchinson"
    return trace


def _probes_for(trace: str, n_probes: int, probe: str, x: Tensor,
                generator: torch.Generator | None) -> Tensor | None:
    """Hutchinson's probes ``(n_probes, *x.shape)`` when ``trace`` resolves to it, else None."""
    if _resolve_trace(trace, x[0].numel()) == "exact":
        return None
    return _draw_probes(probe, (n_probes,) + tuple(x.shape), x, generator)


def _solve_with_divergence(
    ode: SDE, x: Tensor, grid: TimeGrid, *, probes: Tensor | None, create_graph: bool,
    downward: bool, rtol: float, atol: float, method: str, options: dict | None,
) -> tuple[Tensor, Tensor, int]:
    r"""One solve of the augmented ODE :math:`d(x, \ell)/dt = (v(x, t),
    \operatorname{tr}\partial v/\partial x)` with :math:`\ell = 0` at the start, from ``grid.t0``
    up to ``grid.t1`` or (``downward``) from ``grid.t1`` down to ``grid.t0``: ``(x_end,
    ell_end, nfe)``. The trace is exact (``probes=None``) or Hutchinson's with the ``probes``
    held fixed over the solve. A fixed-step ``method`` steps on the grid's times; an adaptive
    Runge-Kutta one lands its last step on the end time (no stage past it, where a process may
    be undefined). The shared machinery of :func:`ode_log_likelihood` and
    :meth:`~sdeflow.distributions.ProbabilityFlowDistribution.sample_and_log_prob`.
    """
    dynamics = _Dynamics(ode, probes, create_graph)
    fixed_grid = method in _FIXED_GRID_METHODS and "step_size" not in (options or {})
    ts = grid.ts if fixed_grid else grid.ts[[0, -1]]
    end = grid.ts[-1:]
    if downward:
        ts, end = ts.flip(0), grid.ts[:1]
    if method in _ADAPTIVE_RK_METHODS and "step_t" not in (options or {}):
        options = {**(options or {}), "step_t": end}
    delta0 = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    with torch.set_grad_enabled(create_graph):
        xs, deltas = odeint(dynamics, (x, delta0), ts, rtol=rtol, atol=atol, method=method,
                            options=options)
    return xs[-1], deltas[-1], dynamics.nfe


def ode_log_likelihood(
    ode: SDE,
    prior: Distribution | nn.Module,
    grid: TimeGrid,
    x0: Tensor,
    *,
    trace: str = "auto",
    n_probes: int = 1,
    probe: str = "rademacher",
    rtol: float = 1e-5,
    atol: float = 1e-5,
    method: str = "dopri5",
    options: dict | None = None,
    generator: torch.Generator | None = None,
    create_graph: bool = False,
    condition: Tensor | None = None,
    guidance: float = 1.0,
) -> LikelihoodResult:
    r"""Exact log-likelihood :math:`\log p_{t_0}(x_0)` of data under an ODE and a prior at
    :math:`t_1`, by the instantaneous change of variables (see the module docstring).

    Arguments:
        ode: A process with zero diffusion: ``probability_flow(forward, score)`` (a
            :class:`~sdeflow.processes.ReverseSDE` with ``lam = 0``), a flow
            ``ForwardSDE(drift, 0.0)``, or any :class:`~sdeflow.processes.SDE` whose diffusion
            vanishes; its drift is :math:`v`.
        prior: :math:`p_{prior}` at :math:`t_1`: a distribution or a prior module.
        grid: The :class:`~sdeflow.grids.TimeGrid` of the model: the data live at
            :math:`t_0` = ``grid.t0``, the prior at :math:`t_1` = ``grid.t1``. An adaptive
            ``method`` integrates between the two; a fixed-step one (``"euler"``, ``"rk4"``,
            ...) steps on the grid's times unless ``options`` gives a ``step_size``.
        x0: Data at :math:`t_0`, shape ``(B, *state)`` with ``state`` the prior's event shape.
        trace: ``"exact"`` (one vector-Jacobian product per state element), ``"hutchinson"``
            (unbiased estimator), or ``"auto"`` (exact when a state has at most 32 elements).
        n_probes: Hutchinson probes per sample (averaged).
        probe: ``"rademacher"`` or ``"gaussian"`` probes.
        rtol: Relative tolerance of the adaptive solver.
        atol: Absolute tolerance of the adaptive solver.
        method: A torchdiffeq method (``"dopri5"``, ``"rk4"``, ``"euler"``, ...).
        options: Solver options passed to :func:`torchdiffeq.odeint` (e.g. ``{"step_size": h}``
            for fixed-step methods).
        generator: Random generator of the probes.
        create_graph: Keep the autograd graph through the solve (to train on the exact
            likelihood); otherwise the results are detached.
        condition: One condition per sample of ``x0`` for an ODE with conditional networks
            (:mod:`sdeflow.conditioning`): the likelihood of ``ode.conditioned(condition,
            guidance)``, :math:`\log p(x_0 \mid y)`.
        guidance: The classifier-free guidance scale of the networks (needs ``condition``):
            the exact likelihood of the guided ODE's law.

    Returns:
        A :class:`LikelihoodResult`.

    Works under :func:`torch.no_grad` (the Jacobian is taken inside ``torch.enable_grad()``),
    not under :func:`torch.inference_mode`. Samples must not interact inside the drift (no
    batch statistics), as the exact trace reads one Jacobian row for the whole batch at once.

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, StandardNormal, TimeGrid
        >>> flow = ForwardSDE(lambda x, t: -x, 0.0)  # x_t = x_0 e^{-t}: tr = -d per unit time
        >>> grid = TimeGrid.uniform(10, 0.0, 1.0)
        >>> res = ode_log_likelihood(flow, StandardNormal((2,)), grid, torch.zeros(3, 2))
        >>> res.delta_log_prob
        tensor([-2., -2., -2.])
        >>> res.log_prob.shape
        torch.Size([3])
    """
    if not isinstance(ode, SDE):
        raise TypeError(f"ode must be an sdeflow SDE with zero diffusion, got {type(ode).__name__}")
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid (the data at grid.t0, the prior at grid.t1), "
                        f"got {type(grid).__name__}")
    dist, state = check_data(x0, prior)
    check_same_device_dtype("grid.ts", grid.ts, "x0", x0)
    if trace not in TRACE_METHODS:
        raise ValueError(f"trace must be one of {TRACE_METHODS}, got {trace!r}")
    if probe not in PROBES:
        raise ValueError(f"probe must be one of {PROBES}, got {probe!r}")
    if isinstance(n_probes, bool) or not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be an integer >= 1, got {n_probes!r}")
    if not (rtol > 0 and atol > 0):
        raise ValueError(f"rtol and atol must be > 0, got rtol={rtol}, atol={atol}")
    _check_zero_diffusion(ode, x0, grid)
    if torch.is_inference_mode_enabled():
        raise RuntimeError("ode_log_likelihood needs autograd for the trace of dv/dx: call it "
                           "outside torch.inference_mode() (torch.no_grad() is fine)")
    check_modules(x0, [ode, prior])
    ode = bind_condition(ode, condition, guidance, batch=x0.shape[0], like=x0,
                         where="ode_log_likelihood")

    probes = _probes_for(trace, n_probes, probe, x0, generator)
    x_final, delta, nfe = _solve_with_divergence(
        ode, x0, grid, probes=probes, create_graph=create_graph, downward=False, rtol=rtol,
        atol=atol, method=method, options=options)
    prior_log_prob = dist.log_prob(x_final)
    if not create_graph:
        prior_log_prob = prior_log_prob.detach()
    return LikelihoodResult(prior_log_prob + delta, prior_log_prob, delta, x_final, nfe)


def bits_per_dim(nll_nats: Tensor, dim: int, *, levels: int | None = None) -> Tensor:
    r"""Negative log-likelihood in nats per sample to bits per dimension.

    Without ``levels``: :math:`\mathrm{nll} / (D \ln 2)`. With ``levels`` :math:`L`, for discrete
    data :math:`k \in \{0..L-1\}^D` scaled as :math:`x = 2(k + u)/L - 1` with uniform
    dequantization :math:`u \sim \mathcal{U}[0,1)^D`: each :math:`k` owns a cube of volume
    :math:`(2/L)^D` in :math:`x`, so by Jensen's inequality

    .. math:: -\log P(k) = -\log \int_{[0,1)^D} p_x(x(k,u)) (2/L)^D\,du
              \le E_u[-\log p_x(x)] + D\log(L/2),

    and :math:`\mathrm{bpd} = (\mathrm{nll} + D\log(L/2)) / (D \ln 2)` bounds the discrete data's
    bits/dim (equality for a density constant on each cube).

    Arguments:
        nll_nats: :math:`-\log p_x(x)` per sample, nats, any shape.
        dim: :math:`D`, the number of elements of one sample.
        levels: :math:`L` (256 for 8-bit images, 17 for scikit-learn's digits), or ``None`` for
            continuous data.

    Example:
        >>> import math, torch
        >>> d = 3 * 32 * 32  # uniform density on [-1, 1]^d: 8 bits/dim of 8-bit images
        >>> bits_per_dim(torch.tensor(d * math.log(2.0)), d, levels=256)
        tensor(8.)
    """
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise ValueError(f"dim must be an integer >= 1, got {dim!r}")
    nll = torch.as_tensor(nll_nats)
    if levels is None:
        return nll / (dim * math.log(2))
    if isinstance(levels, bool) or not isinstance(levels, int) or levels < 2:
        raise ValueError(f"levels must be an integer >= 2 or None, got {levels!r}")
    return (nll + dim * math.log(levels / 2)) / (dim * math.log(2))


def elbo_bits_per_dim(terms: DiffFlowTerms, levels: int | None = None) -> Tensor:
    r"""DiffFlow's negative ELBO (an upper bound on the NLL) in bits/dim, ``(B,)``.

    Example:
        >>> import torch
        >>> from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 0.5), lambda x, t: -x)
        >>> obj = DiffFlowObjective(rev, StandardNormal((2,)), TimeGrid.uniform(5, 1e-3, 0.5))
        >>> elbo_bits_per_dim(obj(torch.randn(4, 2)), levels=256).shape
        torch.Size([4])
    """
    if not isinstance(terms, DiffFlowTerms):
        raise TypeError(f"terms must be DiffFlowTerms, got {type(terms).__name__}")
    return bits_per_dim(terms.nelbo, terms.x_final[0].numel(), levels=levels)

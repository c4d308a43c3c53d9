r"""Exact NLL of the normalizing flow that DiffFlow becomes as :math:`g \to 0` (Theorem 1).

With :math:`g \equiv 0` each Euler step :math:`x_{i+1} = F_i(x_i) = x_i + f(x_i, t_i)\,dt_i` is
deterministic and, by the change of variables,

.. math:: \log p(x_0) = \log p_{prior}(x_N) + \sum_{i=0}^{N-1}
          \log\left|\det\left(I + dt_i\,\partial f/\partial x\,(x_i, t_i)\right)\right|.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sdeflow._checks import check_modules, check_same_device_dtype
from sdeflow.conditioning import bind_condition, check_p_uncond, drop_condition, null_condition
from sdeflow.grids import TimeGrid
from sdeflow.objectives.terms import ObjectiveTerms
from sdeflow.priors import check_data
from sdeflow.processes.base import SDE, require_additive_noise

__all__ = ["FlowNLL", "FlowTerms"]


@dataclass
class FlowTerms(ObjectiveTerms):
    """Exact NLL per sample ``nll`` (``(B,)``), its mean ``loss``, the prior term
    :math:`-\\log p_{prior}(x_N)` and each step's :math:`\\log|\\det dF_i/dx|` (``(B, N)``)."""

    nll: Tensor
    prior_term: Tensor
    log_dets: Tensor
    x_final: Tensor

    @property
    def per_sample(self) -> Tensor:
        """:attr:`nll`."""
        return self.nll


class FlowNLL(nn.Module):
    r"""Exact negative log-likelihood of the Euler flow of a process with zero diffusion (e.g.
    ``ForwardSDE(drift, 0.0)``: any process declaring additive noise with :math:`g \equiv 0`).

    The Jacobian of the drift is computed exactly (``torch.func.jacrev``), so the cost grows as
    :math:`d^2` per sample: meant for small states (``max_dim``). For images use the
    probability-flow ODE with Hutchinson's trace estimator (:mod:`sdeflow.likelihood`).

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, StandardNormal, TimeGrid
        >>> flow = ForwardSDE(lambda x, t: -x, diffusion=0.0)
        >>> nll = FlowNLL(flow, StandardNormal((2,)), TimeGrid.uniform(4, 0.0, 1.0))
        >>> nll(torch.zeros(3, 2)).log_dets.shape
        torch.Size([3, 4])
    """

    def __init__(self, flow: SDE, prior: Distribution | nn.Module,
                 grid: TimeGrid | None = None, *, max_dim: int = 256,
                 p_uncond: float = 0.0) -> None:
        super().__init__()
        if not isinstance(flow, SDE):
            raise TypeError(f"flow must be an sdeflow SDE with zero diffusion, got "
                            f"{type(flow).__name__}")
        require_additive_noise(flow, "FlowNLL", "a flow's steps must be deterministic")
        if grid is not None and not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        if grid is not None:
            _check_zero_diffusion(flow, grid)
        self.flow, self.prior, self.grid, self.max_dim = flow, prior, grid, max_dim
        self.p_uncond = check_p_uncond(p_uncond)

    def forward(self, x0: Tensor, grid: TimeGrid | None = None, *,
                condition: Tensor | None = None, guidance: float = 1.0,
                generator: torch.Generator | None = None) -> FlowTerms:
        """Exact NLL terms of ``x0`` ``(B, *state)``; ``condition``: one entry per sample for a
        conditional drift (:mod:`sdeflow.conditioning`), dropped with probability
        ``p_uncond`` (uniform draws from ``generator``); ``guidance``: its guidance scale."""
        grid = self.grid if grid is None else grid
        if grid is None:
            raise ValueError("grid must be given, to the objective or to this call")
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
        prior, state = check_data(x0, self.prior)
        d = x0[0].numel()
        if d > self.max_dim:
            raise ValueError(f"state has {d} elements > max_dim={self.max_dim}; the exact "
                             "Jacobian is too costly, use sdeflow.likelihood.ode_log_likelihood")
        check_same_device_dtype("grid.ts", grid.ts, "x0", x0)
        check_modules(x0, [self.flow, self.prior])
        _check_zero_diffusion(self.flow, grid)
        flow = bind_condition(self.flow, condition, guidance, batch=x0.shape[0], like=x0,
                              where="FlowNLL")
        if condition is not None and self.p_uncond > 0:
            condition = drop_condition(condition, null_condition(self.flow, condition),
                                       self.p_uncond, generator)
            flow = self.flow.conditioned(condition, guidance)
        eye = torch.eye(d, dtype=x0.dtype, device=x0.device)
        x, log_dets = x0, []
        for t, dt in zip(grid.ts[:-1].unbind(0), grid.dts.unbind(0)):
            def f_single(xi: Tensor, t: Tensor = t) -> tuple[Tensor, Tensor]:
                out = flow.drift(xi.reshape((1,) + state), t).reshape(d)
                return out, out

            if condition is None:
                jac, f = torch.func.vmap(torch.func.jacrev(f_single, has_aux=True))(
                    x.reshape(-1, d))
            else:  # the bound condition is the batch's: rows of the batched Jacobian instead
                jac, f = _batch_jacobian(flow, x, t)
            log_dets.append(torch.linalg.slogdet(eye + dt * jac).logabsdet)
            x = x + f.reshape(x.shape) * dt
        log_dets_t = torch.stack(log_dets, -1)
        prior_term = -prior.log_prob(x)
        nll = prior_term - log_dets_t.sum(-1)
        return FlowTerms(nll.mean(), nll, prior_term, log_dets_t, x)


def _batch_jacobian(flow: SDE, x: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    r""":math:`(\partial f/\partial x, f)` per sample, ``(B, d, d)`` and ``(B, d)``, by one
    vector-Jacobian product per state element (row :math:`i` of every sample's Jacobian is the
    gradient of :math:`\sum_b f_{b,i}`: samples do not interact); the graph is kept in grad
    mode, for training."""
    b, create = x.shape[0], torch.is_grad_enabled()
    with torch.enable_grad():
        x_in = x if x.requires_grad and create else x.detach().requires_grad_(True)
        f = flow.drift(x_in, t).reshape(b, -1)
        rows = [torch.autograd.grad(f[:, i].sum(), x_in, retain_graph=True,
                                    create_graph=create)[0].reshape(b, -1)
                for i in range(f.shape[1])]
    jac = torch.stack(rows, 1)
    return (jac, f) if create else (jac.detach(), f.detach())


def _check_zero_diffusion(flow: SDE, grid: TimeGrid) -> None:
    g = flow.diffusion_scale(grid.ts)
    if bool((g != 0).any()):
        raise ValueError(f"flow must have a zero diffusion (e.g. ForwardSDE(drift, 0.0)) to be a "
                         f"normalizing flow, {type(flow).__name__} has g(t) != 0 on the grid; "
                         f"use DiffFlowObjective for g > 0")

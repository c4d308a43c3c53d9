r"""Sampling over the reverse family: prior at :math:`t_N`, then steps down the grid,

.. math:: x_i = \mathrm{step}(x_{i+1},\ t_{i+1},\ -dt_i,\ \delta_i),

with the paper's noise-free last step (``denoise=True``: :math:`\delta_0 = 0`) as an option.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sdeflow._checks import check_modules, check_same_device_dtype
from sdeflow.discretizers import Discretizer, EulerMaruyama
from sdeflow.grids import TimeGrid
from sdeflow.priors import prior_draws
from sdeflow.processes.base import SDE
from sdeflow.processes.reverse import ReverseSDE

__all__ = ["sample"]


def sample(
    reverse: SDE,
    prior: Distribution | nn.Module,
    grid: TimeGrid,
    sample_shape: torch.Size | tuple[int, ...] = (),
    *,
    discretizer: Discretizer | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    x_final: Tensor | None = None,
) -> Tensor:
    r"""Draw samples :math:`x_0` by running ``reverse`` from the prior down ``grid``.

    Arguments:
        reverse: The reverse process (any :math:`\lambda`; ``lam=0`` is the probability-flow ODE).
        prior: Distribution (or prior module) of :math:`x_N`.
        grid: Time grid; sampling runs from ``grid.ts[-1]`` down to ``grid.ts[0]``.
        sample_shape: Leading shape of the samples (prior batch shape is appended).
        discretizer: Step scheme (Euler–Maruyama by default).
        denoise: Take the last step (to :math:`t_0`) without noise.
        return_trajectory: Return ``(*sample_shape, N + 1, *state)`` instead of :math:`x_0`.
        generator: Random generator for the step noises.
        x_final: Start from these :math:`x_N` instead of prior draws.

    Runs without autograd unless called inside ``torch.enable_grad()`` with ``x_final``
    requiring grad.

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), score=lambda x, t: -x)
        >>> sample(rev, StandardNormal((2,)), TimeGrid.uniform(20, 0.0, 1.0), (5,)).shape
        torch.Size([5, 2])
    """
    discretizer = discretizer or EulerMaruyama()
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    x, lead, state = prior_draws(prior, sample_shape, x_final)
    check_same_device_dtype("grid.ts", grid.ts, "prior samples", x)
    check_modules(x, [reverse], x_name="prior samples")
    grad = torch.is_grad_enabled() and x.requires_grad
    xs = [x] if return_trajectory else None
    with torch.set_grad_enabled(grad):
        g = (reverse.forward_sde.diffusion_scale(grid.ts)
             if type(discretizer) is EulerMaruyama and isinstance(reverse, ReverseSDE) else None)
        if g is not None:
            x = _euler_reverse(reverse, grid, g, x, denoise, generator, xs)
        else:
            ts, dts = grid.ts.unbind(0), grid.dts.unbind(0)
            for i in range(grid.n_steps - 1, -1, -1):
                if i == 0 and denoise:
                    noise = torch.zeros_like(x)
                else:
                    noise = torch.randn(x.shape, generator=generator, dtype=x.dtype,
                                        device=x.device)
                x = discretizer.step(reverse, x, ts[i + 1], -dts[i], noise)
                if xs is not None:
                    xs.append(x)
    if xs is not None:
        return torch.stack(xs[::-1], 1).reshape(lead + (grid.n_steps + 1,) + state)
    return x.reshape(lead + state)


def _euler_reverse(reverse: ReverseSDE, grid: TimeGrid, g: Tensor, x: Tensor, denoise: bool,
                   generator: torch.Generator | None, xs: list[Tensor] | None) -> Tensor:
    r"""Euler–Maruyama down the grid with the per-step scalars computed once per call:

    .. math:: x_i = x_{i+1} - f(x_{i+1}, t_{i+1})\,dt_i + c\,g_{i+1}^2 dt_i\, s(x_{i+1}, t_{i+1})
        + \lambda g_{i+1}\sqrt{dt_i}\,\delta_i, \qquad c = \tfrac{1 + \lambda^2}{2},

    the arithmetic of ``EulerMaruyama.step`` on :meth:`ReverseSDE.drift` (``g``: :math:`g(t_i)`
    on the grid); the noise is drawn in the same order, so a generator gives the same samples.
    """
    forward_sde = reverse.forward_sde
    ts, dts = grid.ts.unbind(0), grid.dts
    c = 0.5 * (1.0 + reverse.lam**2)
    # Python floats: one device sync per call instead of scalar tensor ops at every step.
    dt = dts.tolist()
    score_coef = (c * g[1:] ** 2 * dts).tolist()
    noise_coef = (reverse.lam * g[1:] * dts.sqrt()).tolist()
    for i in range(grid.n_steps - 1, -1, -1):
        t = ts[i + 1]
        f = forward_sde.drift(x, t)
        s = reverse.score_value(x, t)
        x_new = torch.add(x, f, alpha=-dt[i]).add_(s, alpha=score_coef[i])
        if not (i == 0 and denoise) and noise_coef[i] != 0.0:
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
            x_new = x_new.add_(noise, alpha=noise_coef[i])
        x = x_new
        if xs is not None:
            xs.append(x)
    return x

r"""Sampling over the reverse family: prior at :math:`t_N`, then steps down the grid,

.. math:: x_i = \mathrm{step}(x_{i+1},\ t_{i+1},\ -dt_i,\ \delta_i),

with the paper's noise-free last step (``denoise=True``: :math:`\delta_0 = 0`) as an option.
Steps go through the scheme's :class:`~sdeflow.discretizers.stepper.Stepper`, so a user's scheme
or process is stepped exactly as a built-in one. Noise is drawn for every step whose process has
noise there (by the process's declared :math:`g(t)`; every step for state-dependent noise),
except the denoised last step: a generator gives the same draws whatever the scheme.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from sdeflow._checks import check_modules, check_same_device_dtype
from sdeflow.conditioning import bind_condition
from sdeflow.discretizers import Discretizer, EulerMaruyama
from sdeflow.grids import TimeGrid
from sdeflow.priors import prior_draws
from sdeflow.processes.base import SDE

__all__ = ["sample"]


def sample(
    reverse: SDE,
    prior: Distribution | nn.Module,
    grid: TimeGrid,
    sample_shape: int | torch.Size | tuple[int, ...] = (),
    *,
    discretizer: Discretizer | None = None,
    denoise: bool = True,
    return_trajectory: bool = False,
    generator: torch.Generator | None = None,
    x_final: Tensor | None = None,
    keep_graph: bool = False,
    condition: Tensor | None = None,
    guidance: float = 1.0,
) -> Tensor:
    r"""Draw samples :math:`x_0` by running ``reverse`` from the prior down ``grid``.

    Arguments:
        reverse: The reverse process (any :math:`\lambda`; ``lam=0`` is the probability-flow ODE).
        prior: Distribution (or prior module) of :math:`x_N`.
        grid: Time grid; sampling runs from ``grid.ts[-1]`` down to ``grid.ts[0]``.
        sample_shape: Leading shape of the samples (an int ``n`` means ``(n,)``; the prior's
            batch shape is appended).
        discretizer: Step scheme (Euler–Maruyama by default).
        denoise: Take the last step (to :math:`t_0`) without noise.
        return_trajectory: Return ``(*sample_shape, N + 1, *state)`` instead of :math:`x_0`.
        generator: Random generator for the step noises.
        x_final: Start from these :math:`x_N` instead of prior draws.
        keep_graph: Keep the autograd graph through the steps (pathwise gradients reach the
            networks' parameters, and ``x_final`` where it requires grad) while grad mode is on.
        condition: One condition per sample (``(M,)`` labels or ``(M, k)`` vectors, ``M`` the
            number of samples, in the order of the flattened ``(*sample_shape, *batch)``) for a
            process with conditional networks (:mod:`sdeflow.conditioning`).
        guidance: The classifier-free guidance scale :math:`w` of the networks (0: the
            unconditional model, 1: the conditional one); needs ``condition``.

    Runs without autograd unless grad mode is on and ``x_final`` requires grad or
    ``keep_graph`` is set.

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), score=lambda x, t: -x)
        >>> sample(rev, StandardNormal((2,)), TimeGrid.uniform(20, 0.0, 1.0), 5).shape
        torch.Size([5, 2])
    """
    discretizer = discretizer or EulerMaruyama()
    if not isinstance(reverse, SDE):
        raise TypeError(f"reverse must be an sdeflow SDE, got {type(reverse).__name__}")
    if not isinstance(discretizer, Discretizer):
        raise TypeError(f"discretizer must be an sdeflow Discretizer, got "
                        f"{type(discretizer).__name__}")
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    x, lead, state = prior_draws(prior, sample_shape, x_final)
    check_same_device_dtype("grid.ts", grid.ts, "prior samples", x)
    check_modules(x, [reverse], x_name="prior samples")
    reverse = bind_condition(reverse, condition, guidance, batch=x.shape[0], like=x,
                             where="sample")
    grad = torch.is_grad_enabled() and (x.requires_grad or keep_graph)
    xs = [x] if return_trajectory else None
    with torch.set_grad_enabled(grad):
        stepper = discretizer.stepper(reverse, grid, reverse=True)
        for i in range(grid.n_steps - 1, -1, -1):
            noisy = stepper.stochastic[i] and not (i == 0 and denoise)
            noise = (torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
                     if noisy else None)
            x = stepper.step(i, x, noise)
            if xs is not None:
                xs.append(x)
    if xs is not None:
        return torch.stack(xs[::-1], 1).reshape(lead + (grid.n_steps + 1,) + state)
    return x.reshape(lead + state)

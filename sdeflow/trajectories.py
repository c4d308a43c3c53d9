r"""Trajectory distributions :math:`p_F(\tau \mid x_0)` and :math:`p_B(\tau)`.

A trajectory :math:`\tau = (x_0, \dots, x_N)` on a :class:`~sdeflow.grids.TimeGrid` is one event
of shape ``(N + 1, *state)``. With a Gaussian step scheme (Euler–Maruyama by default)

.. math::
    \log p_F(\tau \mid x_0) &= \sum_i \log\mathcal{N}(x_{i+1};\ x_i + f(x_i, t_i)\,dt_i,\
        g_i^2 dt_i I), \\
    \log p_B(\tau) &= \log p_{prior}(x_N) + \sum_i \log\mathcal{N}(x_i;\ x_{i+1} -
        [f - g^2 s](x_{i+1}, t_{i+1})\,dt_i,\ g_{i+1}^2 dt_i I),

and the standardized residuals are the paper's noises: :math:`\delta^F_i` (:meth:`ForwardTrajectory
.delta_forward`) and :math:`\delta^B_i` (:meth:`BackwardTrajectory.delta_backward`).

Both are :class:`pyro.distributions.TorchDistribution`\ s: they obey the shape rule
``shape(sample_shape) = sample_shape + batch_shape + event_shape``, work inside ``pyro.sample``,
and ``kl_divergence(p_F, p_B)`` is registered.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pyro.distributions import TorchDistribution
from torch import Tensor
from torch.distributions import Distribution, constraints, register_kl

from sdeflow._checks import (
    check_finite,
    check_modules,
    check_same_device_dtype,
    sum_state,
)
from sdeflow.discretizers import Discretizer, EulerMaruyama
from sdeflow.discretizers.stepper import Stepper
from sdeflow.grids import TimeGrid
from sdeflow.priors import as_sample_shape, resolve_prior
from sdeflow.processes.base import SDE

__all__ = ["ForwardTrajectory", "BackwardTrajectory", "check_positive_diffusion"]

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def check_positive_diffusion(sde: SDE, ts: Tensor, what: str) -> None:
    """Raise if the diffusion of ``sde`` is not > 0 at every time in ``ts`` (where known)."""
    g = sde.diffusion_scale(ts)
    if g is not None and not bool((g > 0).all()):
        bad = ts[~(g > 0)].tolist()
        raise ValueError(
            f"diffusion g(t) of the {what} must be > 0 where its density divides by it, "
            f"got g <= 0 at t = {bad[:5]}" + (" (use FlowNLL for g = 0)" if what else "")
        )


def _check_discretizer(discretizer: Discretizer) -> Discretizer:
    if not isinstance(discretizer, Discretizer):
        raise TypeError(
            f"discretizer must be an sdeflow Discretizer, got {type(discretizer).__name__}"
        )
    return discretizer


def _check_grid(grid: TimeGrid) -> TimeGrid:
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    return grid


def _gaussian_log_prob(stepper: Stepper, i: int, x_from: Tensor, x_to: Tensor
                       ) -> tuple[Tensor, Tensor]:
    """Standardized residual ``delta`` of step ``i`` and ``log N(x_to; mean, std^2 I)`` summed
    over the state."""
    if not stepper.scheme.gaussian:
        raise TypeError(f"discretizer must have a Gaussian transition for a trajectory density; "
                        f"{type(stepper.scheme).__name__} has none (use it to sample)")
    mean, std = stepper.transition(i, x_from)
    delta = (x_to - mean) / std
    log_prob = -0.5 * delta.pow(2).reshape(delta.shape[0], -1).sum(-1) - sum_state(std.log(), x_to)
    return delta, log_prob - x_to[0].numel() * _HALF_LOG_2PI


class _Trajectory(TorchDistribution):
    arg_constraints: dict = {}
    has_rsample = True

    grid: TimeGrid
    discretizer: Discretizer
    state_shape: torch.Size

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def sample(self, sample_shape: int | torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        with torch.no_grad():
            return self.rsample(sample_shape)

    def _flatten(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        """``(*lead, N+1, *state)`` -> ``((M, N+1, *state), lead)``."""
        n_event = len(self.event_shape)
        if value.dim() < n_event + len(self.batch_shape) or value.shape[-n_event:] != \
                self.event_shape:
            raise ValueError(
                f"tau must have shape (*sample_shape, *batch_shape={tuple(self.batch_shape)}, "
                f"*event_shape={tuple(self.event_shape)}), got {tuple(value.shape)}"
            )
        lead = value.shape[:-n_event]
        return value.reshape((-1,) + tuple(self.event_shape)), lead


class ForwardTrajectory(_Trajectory):
    r"""The forward trajectory distribution :math:`p_F(\tau \mid x_0)` of a process on a grid.

    Arguments:
        process: The forward :class:`~sdeflow.processes.SDE`.
        x0: Initial states, shape ``(B, *state)`` (the batch shape is ``(B,)``).
        grid: The :class:`~sdeflow.grids.TimeGrid`.
        discretizer: The step scheme; :meth:`log_prob` needs a Gaussian one.

    :meth:`log_prob` is the density of :math:`x_{1:N}` given the trajectory's own :math:`x_0`.
    The arguments come in sdeflow's one order: process, start (here :math:`x_0`; a prior for
    :class:`BackwardTrajectory`), grid.

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, TimeGrid
        >>> p_F = ForwardTrajectory(ForwardSDE(lambda x, t: -x, 0.2), torch.zeros(5, 2),
        ...                         TimeGrid.uniform(10, 0.0, 1.0))
        >>> tau = p_F.rsample()
        >>> tau.shape, p_F.log_prob(tau).shape
        (torch.Size([5, 11, 2]), torch.Size([5]))
    """

    def __init__(
        self,
        process: SDE,
        x0: Tensor,
        grid: TimeGrid,
        discretizer: Discretizer | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(process, SDE):
            raise TypeError(f"process must be an sdeflow SDE, got {type(process).__name__}")
        if not isinstance(x0, Tensor) or not x0.is_floating_point():
            raise TypeError("x0 must be a floating-point tensor of shape (batch, *state)")
        if x0.dim() < 2 or x0.shape[0] == 0:
            raise ValueError(f"x0 must have shape (batch, *state) with batch >= 1, got "
                             f"{tuple(x0.shape)}")
        self.grid = _check_grid(grid)
        check_finite("x0", x0)
        check_same_device_dtype("grid.ts", grid.ts, "x0", x0)
        check_modules(x0, [process])
        self.x0, self.process = x0, process
        self.discretizer = _check_discretizer(discretizer or EulerMaruyama())
        self.state_shape = x0.shape[1:]
        self._stepper: Stepper | None = None
        super().__init__(x0.shape[:1], (grid.n_steps + 1,) + tuple(x0.shape[1:]), validate_args)

    @property
    def stepper(self) -> Stepper:
        """The scheme's forward steps of the process on the grid (made once)."""
        if self._stepper is None:
            self._stepper = self.discretizer.stepper(self.process, self.grid)
        return self._stepper

    def expand(self, batch_shape, _instance=None) -> ForwardTrajectory:
        batch_shape = torch.Size(batch_shape)
        if len(batch_shape) != 1:
            raise ValueError(f"batch_shape must be 1-D (B,), got {tuple(batch_shape)}")
        x0 = self.x0.expand(batch_shape + self.state_shape)
        return ForwardTrajectory(self.process, x0, self.grid, self.discretizer,
                                 self._validate_args if _instance is None else None)

    def trajectory_from_noise(self, delta_forward: Tensor) -> Tensor:
        r"""The trajectory driven by given noises :math:`\delta^F`, shape ``(*S, B, N, *state)``.

        Returns ``(*S, B, N + 1, *state)``, differentiable in ``x0`` and the process parameters.
        """
        n = self.grid.n_steps
        expect = (n,) + tuple(self.state_shape)
        if delta_forward.shape[-len(expect):] != expect or delta_forward.dim() < len(expect) + 1:
            raise ValueError(f"delta_forward must have shape (*sample_shape, B, {n}, *state), got "
                             f"{tuple(delta_forward.shape)}")
        lead = delta_forward.shape[: -len(expect)]
        noise = delta_forward.reshape((-1,) + expect)
        x = self.x0.expand(lead + self.state_shape).reshape((-1,) + tuple(self.state_shape))
        xs = [x]
        for i in range(n):
            x = self.stepper.step(i, x, noise[:, i])
            xs.append(x)
        return torch.stack(xs, 1).reshape(lead + self.event_shape)

    def rsample(self, sample_shape: int | torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        shape = as_sample_shape(sample_shape) + self.batch_shape
        noise = torch.randn(shape + (self.grid.n_steps,) + self.state_shape,
                            dtype=self.x0.dtype, device=self.x0.device)
        return self.trajectory_from_noise(noise)

    def _residuals(self, tau: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
        flat, lead = self._flatten(tau)
        check_positive_diffusion(self.process, self.grid.ts[:-1], "forward process")
        deltas, log_probs = [], []
        for i in range(self.grid.n_steps):
            delta, lp = _gaussian_log_prob(self.stepper, i, flat[:, i], flat[:, i + 1])
            deltas.append(delta)
            log_probs.append(lp)
        return torch.stack(deltas, 1), torch.stack(log_probs, -1), lead

    def delta_forward(self, tau: Tensor) -> Tensor:
        r""":math:`\delta^F_i = (x_{i+1} - x_i - f(x_i, t_i)\,dt_i)/(g_i\sqrt{dt_i})`,
        shape ``(*S, B, N, *state)``."""
        deltas, _, lead = self._residuals(tau)
        return deltas.reshape(lead + deltas.shape[1:])

    def step_log_probs(self, tau: Tensor) -> Tensor:
        r""":math:`\log p_F(x_{i+1} \mid x_i)` for each step, shape ``(*S, B, N)``."""
        if self._validate_args:
            self._validate_sample(tau)
        _, log_probs, lead = self._residuals(tau)
        return log_probs.reshape(lead + (self.grid.n_steps,))

    def log_prob(self, tau: Tensor) -> Tensor:
        return self.step_log_probs(tau).sum(-1)


class BackwardTrajectory(_Trajectory):
    r"""The backward trajectory distribution :math:`p_B(\tau)`: prior at :math:`t_N`, then the
    reverse process stepped down the grid.

    Arguments:
        reverse: The reverse :class:`~sdeflow.processes.SDE` (usually a
            :class:`~sdeflow.processes.ReverseSDE`).
        prior: Distribution of :math:`x_N` whose ``event_shape`` is the state shape (its
            ``batch_shape`` is the trajectory's), or a prior module returning one, as everywhere
            else in sdeflow.
        grid: The :class:`~sdeflow.grids.TimeGrid`.
        discretizer: The step scheme, applied with negative steps.

    Building it draws no random numbers.

    Example:
        >>> import torch
        >>> from torch.distributions import Independent, Normal
        >>> from sdeflow import ForwardSDE, ReverseSDE, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), score=lambda x, t: -x)
        >>> prior = Independent(Normal(torch.zeros(4, 3), 1.0), 1)
        >>> p_B = BackwardTrajectory(rev, prior, TimeGrid.uniform(5, 0.0, 1.0))
        >>> tau = p_B.rsample()
        >>> tau.shape, p_B.log_prob(tau).shape
        (torch.Size([4, 6, 3]), torch.Size([4]))
    """

    def __init__(
        self,
        reverse: SDE,
        prior: Distribution | Callable[[], Distribution],
        grid: TimeGrid,
        discretizer: Discretizer | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if not isinstance(reverse, SDE):
            raise TypeError(f"reverse must be an sdeflow SDE, got {type(reverse).__name__}")
        prior = resolve_prior(prior)
        if len(prior.event_shape) == 0:
            raise ValueError("prior must have event_shape equal to the state shape (non-empty); "
                             "wrap it with .to_event(...) or Independent")
        self.grid = _check_grid(grid)
        self.prior, self.reverse = prior, reverse
        self.discretizer = _check_discretizer(discretizer or EulerMaruyama())
        self.state_shape = prior.event_shape
        self._stepper: Stepper | None = None
        try:  # the prior's mean (no random draw) tells its device and dtype, where it has one
            mean = prior.mean
        except NotImplementedError:
            mean = None
        if isinstance(mean, Tensor):
            self._check_states(mean.reshape((-1,) + tuple(prior.event_shape)), "prior samples")
        super().__init__(prior.batch_shape, (grid.n_steps + 1,) + tuple(prior.event_shape),
                         validate_args)

    @property
    def stepper(self) -> Stepper:
        """The scheme's reverse steps of the process on the grid (made once)."""
        if self._stepper is None:
            self._stepper = self.discretizer.stepper(self.reverse, self.grid, reverse=True)
        return self._stepper

    def _check_states(self, x: Tensor, name: str) -> None:
        check_same_device_dtype("grid.ts", self.grid.ts, name, x)
        check_modules(x, [self.reverse], x_name=name)

    def expand(self, batch_shape, _instance=None) -> BackwardTrajectory:
        return BackwardTrajectory(self.reverse, self.prior.expand(torch.Size(batch_shape)),
                                  self.grid, self.discretizer, self._validate_args)

    def trajectory_from_noise(self, x_final: Tensor, delta_backward: Tensor) -> Tensor:
        r"""The trajectory from :math:`x_N` driven by given noises :math:`\delta^B`.

        ``x_final``: ``(*S, *batch, *state)``; ``delta_backward``: ``(*S, *batch, N, *state)``
        with index ``i`` the noise of the step from :math:`x_{i+1}` to :math:`x_i`.
        """
        n, state = self.grid.n_steps, tuple(self.state_shape)
        lead = x_final.shape[: x_final.dim() - len(state)]
        if delta_backward.shape != lead + (n,) + state:
            raise ValueError(f"delta_backward must have shape {tuple(lead + (n,) + state)}, got "
                             f"{tuple(delta_backward.shape)}")
        self._check_states(x_final, "x_final")
        noise = delta_backward.reshape((-1, n) + state)
        x = x_final.reshape((-1,) + state)
        xs = [x]
        for i in range(n - 1, -1, -1):
            x = self.stepper.step(i, x, noise[:, i])
            xs.append(x)
        return torch.stack(xs[::-1], 1).reshape(lead + self.event_shape)

    def rsample(self, sample_shape: int | torch.Size | tuple[int, ...] = torch.Size()) -> Tensor:
        x_final = self.prior.rsample(as_sample_shape(sample_shape))
        lead = x_final.shape[: x_final.dim() - len(self.state_shape)]
        noise = torch.randn(lead + (self.grid.n_steps,) + self.state_shape,
                            dtype=x_final.dtype, device=x_final.device)
        return self.trajectory_from_noise(x_final, noise)

    def _residuals(self, tau: Tensor) -> tuple[Tensor, Tensor, torch.Size]:
        flat, lead = self._flatten(tau)
        self._check_states(flat, "tau")
        check_positive_diffusion(self.reverse, self.grid.ts[1:], "reverse process")
        deltas, log_probs = [], []
        for i in range(self.grid.n_steps):
            delta, lp = _gaussian_log_prob(self.stepper, i, flat[:, i + 1], flat[:, i])
            deltas.append(delta)
            log_probs.append(lp)
        return torch.stack(deltas, 1), torch.stack(log_probs, -1), lead

    def delta_backward(self, tau: Tensor) -> Tensor:
        r""":math:`\delta^B_i = (x_i - x_{i+1} + [f - g^2 s](x_{i+1}, t_{i+1})\,dt_i)/
        (g_{i+1}\sqrt{dt_i})`, shape ``(*S, B, N, *state)``."""
        deltas, _, lead = self._residuals(tau)
        return deltas.reshape(lead + deltas.shape[1:])

    def step_log_probs(self, tau: Tensor) -> Tensor:
        r""":math:`\log p_B(x_i \mid x_{i+1})` for each step, shape ``(*S, B, N)``."""
        if self._validate_args:
            self._validate_sample(tau)
        _, log_probs, lead = self._residuals(tau)
        return log_probs.reshape(lead + (self.grid.n_steps,))

    def prior_log_prob(self, tau: Tensor) -> Tensor:
        r""":math:`\log p_{prior}(x_N)`, shape ``(*S, *batch)``."""
        return self.prior.log_prob(tau.select(-len(self.event_shape), -1))

    def log_prob(self, tau: Tensor) -> Tensor:
        return self.prior_log_prob(tau) + self.step_log_probs(tau).sum(-1)


@register_kl(ForwardTrajectory, BackwardTrajectory)
def _kl_forward_backward(p: ForwardTrajectory, q: BackwardTrajectory) -> Tensor:
    r"""A one-sample reparameterized Monte Carlo estimate of
    :math:`\mathrm{KL}(p_F(\cdot \mid x_0)\,\|\,p_B) = E_{p_F}[\log p_F(\tau|x_0) - \log p_B(\tau)]`
    (the negative ELBO of each :math:`x_0`): unbiased, differentiable, not exact.
    """
    tau = p.rsample()
    return p.log_prob(tau) - q.log_prob(tau)

r"""torchsde, both ways: sdeflow processes as torchsde SDEs, torchsde solvers as sdeflow samplers.

torchsde integrates :math:`dy = f(\tau, y)\,d\tau + g(\tau, y)\,dW_\tau` on an *increasing* grid
with states ``(batch, d)``. :class:`TorchsdeAdapter` flattens any state shape ``(B, *state)`` to
``(B, d)`` and, for a reverse process (integrated from :math:`t_N` down to :math:`t_0`), re-times
it with :math:`\tau = T - t`: a torchsde Euler step from :math:`\tau` is then

.. math:: x' = x - b(x, T - \tau)\,h + \sigma(x, T - \tau)\,\Delta W,

which is sdeflow's Euler–Maruyama step with ``dt = -h`` from :math:`t = T - \tau`, so
:math:`f(\tau, y) = -b(y, T - \tau)` and :math:`g(\tau, y) = \sigma(y, T - \tau)`. Driven by the
same Brownian increments, sdeflow's Euler–Maruyama and torchsde's ``"euler"`` give the same path
(:class:`GridBrownian` turns sdeflow noises into a torchsde Brownian motion,
:func:`noise_from_brownian` the other way).

References:
    torchsde, https://github.com/google-research/torchsde
"""

from __future__ import annotations

import torch
import torchsde
from torch import Tensor, nn
from torch.distributions import Distribution
from torchsde import BrownianInterval
from torchsde._brownian import BaseBrownian
from torchsde.settings import METHODS

from sdeflow._checks import check_finite, check_modules, check_same_device_dtype
from sdeflow.grids import TimeGrid
from sdeflow.priors import prior_draws
from sdeflow.processes.base import SDE

__all__ = ["TorchsdeAdapter", "to_torchsde", "torchsde_times", "GridBrownian",
           "brownian_from_noise", "noise_from_brownian", "solve_torchsde", "sample_torchsde",
           "STRATONOVICH_METHODS"]

#: torchsde methods that solve Stratonovich SDEs (valid for sdeflow's additive-noise processes).
STRATONOVICH_METHODS = frozenset({"midpoint", "heun", "reversible_heun", "euler_heun", "log_ode",
                                  "adjoint_reversible_heun"})


class TorchsdeAdapter(nn.Module):
    r"""An sdeflow :class:`~sdeflow.processes.SDE` as a torchsde SDE (``f``, ``g``, diagonal noise).

    Arguments:
        sde: The process (a module: its parameters are this adapter's, for ``sdeint_adjoint``).
        state_shape: Shape of one state, e.g. ``(d,)`` or ``(C, H, W)``.
        reverse: Integrate from ``t_end`` downwards in torchsde time :math:`\tau = t_{end} - t`.
        t_end: The time :math:`T` where a reverse integration starts.
        sde_type: ``"ito"``, or ``"stratonovich"`` for processes with additive noise (where the two
            calculi agree), to use torchsde's Stratonovich solvers.

    Example:
        >>> import torch, torchsde
        >>> from sdeflow import ForwardSDE
        >>> adapter = to_torchsde(ForwardSDE(lambda x, t: -x, 0.5), (3, 2))
        >>> ys = torchsde.sdeint(adapter, torch.zeros(4, 6), torch.tensor([0.0, 0.5]), dt=0.1)
        >>> ys.shape
        torch.Size([2, 4, 6])
    """

    noise_type = "diagonal"

    def __init__(self, sde: SDE, state_shape: tuple[int, ...], *, reverse: bool = False,
                 t_end: float | None = None, sde_type: str = "ito") -> None:
        super().__init__()
        if not isinstance(sde, SDE):
            raise TypeError(f"sde must be an sdeflow SDE, got {type(sde).__name__}")
        if sde_type not in ("ito", "stratonovich"):
            raise ValueError(f"sde_type must be 'ito' or 'stratonovich', got {sde_type!r}")
        if (sde_type == "stratonovich" and not sde.additive_noise
                and sde.sde_type != "stratonovich"):
            raise ValueError("sde_type='stratonovich' needs additive noise (an Itô process with "
                             "state-dependent noise has a different Stratonovich drift)")
        if reverse and t_end is None:
            raise ValueError("t_end must be given for reverse=True (the time tau = 0 maps to)")
        self.sde, self.state_shape = sde, torch.Size(state_shape)
        self.reverse, self.t_end, self.sde_type = bool(reverse), t_end, sde_type

    def _unflatten(self, tau: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        t = self.t_end - tau if self.reverse else tau
        return t, y.reshape((y.shape[0],) + self.state_shape)

    def f(self, tau: Tensor, y: Tensor) -> Tensor:
        t, x = self._unflatten(tau, y)
        b = self.sde.drift(x, t).reshape(y.shape)
        return -b if self.reverse else b

    def g(self, tau: Tensor, y: Tensor) -> Tensor:
        t, x = self._unflatten(tau, y)
        return self.sde.diffusion(x, t).expand(x.shape).reshape(y.shape)

    def extra_repr(self) -> str:
        return (f"state_shape={tuple(self.state_shape)}, reverse={self.reverse}, "
                f"t_end={self.t_end}, sde_type={self.sde_type!r}")


def to_torchsde(sde: SDE, state_shape: tuple[int, ...], *, reverse: bool = False,
                t_end: float | None = None, sde_type: str = "ito") -> TorchsdeAdapter:
    """``sde`` as a torchsde SDE; see :class:`TorchsdeAdapter`."""
    return TorchsdeAdapter(sde, state_shape, reverse=reverse, t_end=t_end, sde_type=sde_type)


def torchsde_times(grid: TimeGrid, reverse: bool = False) -> Tensor:
    r"""The increasing torchsde times of ``grid``: ``ts``, or :math:`t_N - t` reversed."""
    return grid.ts.flip(0).neg() + grid.ts[-1] if reverse else grid.ts


class GridBrownian(BaseBrownian):
    r"""A torchsde Brownian motion known on a grid: :math:`W(\tau_k) = \sum_{j<k} \Delta W_j`.

    Queries ``bm(ta, tb)`` must fall on grid times (within ``1e-9`` of the span); torchsde's
    fixed-step solvers run on the grid of :func:`solve_torchsde` query nothing else. No Lévy area,
    so ``"srk"`` and ``"log_ode"`` need a :class:`torchsde.BrownianInterval` instead.

    Arguments:
        taus: Increasing times ``(K + 1,)``.
        increments: :math:`\Delta W_j`, shape ``(K, batch, d)``.
    """

    def __init__(self, taus: Tensor, increments: Tensor) -> None:
        if taus.dim() != 1 or increments.dim() != 3 or increments.shape[0] != taus.numel() - 1:
            raise ValueError(f"need taus (K+1,) and increments (K, batch, d), got "
                             f"{tuple(taus.shape)} and {tuple(increments.shape)}")
        self._taus = taus
        self._w = torch.cat([torch.zeros_like(increments[:1]), increments.cumsum(0)])

    def _index(self, tau: float | Tensor) -> int:
        tau = float(tau)
        k = int((self._taus - tau).abs().argmin())
        if abs(float(self._taus[k]) - tau) > 1e-9 * float(self._taus[-1] - self._taus[0]):
            raise ValueError(f"GridBrownian knows W on its grid only, got time {tau}")
        return k

    def __call__(self, ta, tb=None, return_U=False, return_A=False):  # noqa: N803 (torchsde API)
        if return_U or return_A:
            raise ValueError("GridBrownian has no Lévy area; use torchsde.BrownianInterval")
        if tb is None:
            ta, tb = self._taus[0], ta
        return self._w[self._index(tb)] - self._w[self._index(ta)]

    def __repr__(self) -> str:
        return f"GridBrownian(steps={self._taus.numel() - 1}, shape={tuple(self.shape)})"

    @property
    def dtype(self) -> torch.dtype:
        return self._w.dtype

    @property
    def device(self) -> torch.device:
        return self._w.device

    @property
    def shape(self) -> torch.Size:
        return self._w.shape[1:]

    @property
    def levy_area_approximation(self) -> str:
        return "none"


def brownian_from_noise(grid: TimeGrid, noise: Tensor, reverse: bool = False) -> GridBrownian:
    r"""A :class:`GridBrownian` from sdeflow noises :math:`\delta` of shape ``(B, N, *state)``.

    ``noise[:, i]`` drives the step over :math:`[t_i, t_{i+1}]`
    (:math:`\Delta W = \sqrt{dt_i}\,\delta_i`), as in ``ForwardTrajectory.trajectory_from_noise``
    and, with ``reverse=True``, ``BackwardTrajectory.trajectory_from_noise``.
    """
    if noise.dim() < 3 or noise.shape[1] != grid.n_steps:
        raise ValueError(f"noise must have shape (B, N={grid.n_steps}, *state), got "
                         f"{tuple(noise.shape)}")
    dw = noise.reshape(noise.shape[:2] + (-1,)).transpose(0, 1) * grid.dts.sqrt()[:, None, None]
    return GridBrownian(torchsde_times(grid, reverse), dw.flip(0) if reverse else dw)


def noise_from_brownian(bm: BaseBrownian, grid: TimeGrid, state_shape: tuple[int, ...],
                        reverse: bool = False) -> Tensor:
    r"""sdeflow noises :math:`\delta_i = \Delta W_i/\sqrt{dt_i}`, ``(B, N, *state)``, from a
    torchsde Brownian motion on :func:`torchsde_times` (inverse of :func:`brownian_from_noise`)."""
    taus = torchsde_times(grid, reverse)
    dw = torch.stack([bm(taus[k], taus[k + 1]) for k in range(grid.n_steps)])
    dw = dw.flip(0) if reverse else dw
    noise = dw / grid.dts.sqrt()[:, None, None]
    return noise.transpose(0, 1).reshape((dw.shape[1], grid.n_steps) + tuple(state_shape))


def _default_brownian(method: str, taus: Tensor, size: tuple[int, int], x: Tensor) -> BaseBrownian:
    levy = {"srk": "space-time", "log_ode": "foster"}.get(method, "none")
    return BrownianInterval(t0=float(taus[0]), t1=float(taus[-1]), size=size, dtype=x.dtype,
                            device=x.device, levy_area_approximation=levy)


def solve_torchsde(sde: SDE, x: Tensor, grid: TimeGrid, *, method: str = "euler",
                   reverse: bool = False, bm: BaseBrownian | None = None,
                   options: dict | None = None) -> Tensor:
    r"""Integrate ``sde`` over ``grid`` with a torchsde solver, one solver step per grid step.

    Arguments:
        sde: An sdeflow process.
        x: Start states ``(B, *state)`` at ``grid.ts[0]`` (or at ``grid.ts[-1]`` if ``reverse``).
        grid: The time grid (any spacing: each cell is one torchsde step; solver state such as
            reversible Heun's is carried across cells).
        method: A torchsde method: ``"euler"``, ``"milstein"``, ``"srk"``, or a Stratonovich one
            (:data:`STRATONOVICH_METHODS`, for additive noise).
        reverse: Run from ``grid.ts[-1]`` down to ``grid.ts[0]``.
        bm: Brownian motion over :func:`torchsde_times` with size ``(B, d)``; a
            :class:`torchsde.BrownianInterval` by default.
        options: torchsde solver options.

    Returns:
        The trajectory ``(B, N + 1, *state)`` in increasing-time order (index ``i`` at ``t_i``).
    """
    if not isinstance(grid, TimeGrid):
        raise TypeError(f"grid must be a TimeGrid, got {type(grid).__name__}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS.all()}, "
                         f"got {method!r}")
    check_same_device_dtype("grid.ts", grid.ts, "x", x)
    check_finite("x", x)
    check_modules(x, [sde], x_name="x")
    state = tuple(x.shape[1:])
    sde_type = "stratonovich" if method in STRATONOVICH_METHODS else "ito"
    adapter = to_torchsde(sde, state, reverse=reverse, t_end=grid.t1 if reverse else None,
                          sde_type=sde_type)
    taus = torchsde_times(grid, reverse)
    y = x.reshape(x.shape[0], -1)
    bm = bm if bm is not None else _default_brownian(method, taus, tuple(y.shape), x)
    ys, extra = [y], None
    for k in range(grid.n_steps):
        # a step a hair longer than the cell is capped at the cell's end by torchsde: exactly one
        # solver step per cell, ending on the grid time
        h = float(taus[k + 1] - taus[k]) * (1 + 1e-6)
        out, extra = torchsde.sdeint(adapter, y, taus[k : k + 2], bm=bm, method=method, dt=h,
                                     options=options, extra=True, extra_solver_state=extra)
        y = out[-1]
        ys.append(y)
    traj = torch.stack(ys[::-1] if reverse else ys, 1)
    return traj.reshape((x.shape[0], grid.n_steps + 1) + state)


def sample_torchsde(
    reverse: SDE, prior: Distribution | nn.Module, grid: TimeGrid,
    sample_shape: torch.Size | tuple[int, ...] = (), *, method: str = "srk",
    bm: BaseBrownian | None = None, return_trajectory: bool = False,
    x_final: Tensor | None = None, options: dict | None = None,
) -> Tensor:
    r"""Like :func:`sdeflow.sample`, with a torchsde solver stepping the reverse process down
    ``grid`` (no final denoising step: every step, the last included, is stochastic).

    Arguments:
        reverse: The reverse process (e.g. a :class:`~sdeflow.processes.ReverseSDE`).
        prior: Distribution (or prior module) of :math:`x_N`.
        grid: Time grid, run from ``grid.ts[-1]`` down to ``grid.ts[0]``.
        sample_shape: Leading shape of the samples.
        method: torchsde method (``"srk"``: strong order 1.5 for additive noise).
        bm: Brownian motion over ``torchsde_times(grid, reverse=True)`` of size ``(M, d)`` with
            ``M`` the number of samples (see :func:`brownian_from_noise`).
        return_trajectory: Return ``(*sample_shape, N + 1, *state)``.
        x_final: Start from these :math:`x_N`.
        options: torchsde solver options.

    Example:
        >>> import torch
        >>> from sdeflow import ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
        >>> rev = ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), score=lambda x, t: -x)
        >>> sample_torchsde(rev, StandardNormal((2,)), TimeGrid.uniform(10, 0.0, 1.0), (5,),
        ...                 method="reversible_heun").shape
        torch.Size([5, 2])
    """
    x, lead, state = prior_draws(prior, sample_shape, x_final)
    with torch.set_grad_enabled(torch.is_grad_enabled() and x.requires_grad):
        traj = solve_torchsde(reverse, x, grid, method=method, reverse=True, bm=bm,
                              options=options)
    if return_trajectory:
        return traj.reshape(lead + (grid.n_steps + 1,) + state)
    return traj[:, 0].reshape(lead + state)


"""Bad input gets a ValueError/TypeError that names the argument (and says what was expected)."""

from __future__ import annotations

import pytest
import torch
from conftest import HAS_CUDA, TinyMLP
from torch import nn
from torch.distributions import Normal

from sdeflow import (
    VPSDE,
    BackwardTrajectory,
    DenoisingScoreMatching,
    DiagonalNormal,
    DiffFlowObjective,
    Discretizer,
    FlowNLL,
    ForwardSDE,
    ForwardTrajectory,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
    sample,
)

F32, F64 = torch.float32, torch.float64


def _x0(batch=3, state=(2,), dtype=F64):
    return torch.randn((batch,) + state, dtype=dtype, generator=torch.Generator().manual_seed(0))


def _grid(dtype=F64, t0=0.05, t1=0.6, n=4):
    return TimeGrid.uniform(n, t0, t1, dtype=dtype)


def _reverse(d=2, g=0.5, lam=1.0, dtype=F64):
    return ReverseSDE(ForwardSDE(TinyMLP(d, dtype=dtype), g), TinyMLP(d, dtype=dtype), lam)


def _objective(reverse=None, prior=None, grid=None, **kwargs):
    return DiffFlowObjective(_reverse() if reverse is None else reverse,
                             StandardNormal((2,), dtype=F64) if prior is None else prior,
                             _grid() if grid is None else grid, **kwargs)


class WrongShape(nn.Module):
    """Returns one coordinate too few."""

    def forward(self, x, t):
        return x[:, :-1]


class NotGaussian(Discretizer):
    """A scheme without a Gaussian transition (deliberately not registered)."""

    strong_order = strong_order_additive = weak_order = 1.0
    gaussian = False

    def step(self, sde, x, t, dt, noise):
        mean = x + sde.drift(x, t) * dt
        return mean + sde.diffusion(x, t) * dt.abs().sqrt() * noise.tanh()


def negative_g(t):
    return -torch.ones_like(t)


# -- grids -----------------------------------------------------------------------------------
@pytest.mark.parametrize("ts", [[0.0, 0.5, 0.4], [0.0, 0.5, 0.5], [1.0, 0.0]])
def test_grid_not_increasing(ts):
    with pytest.raises(ValueError, match="ts"):
        TimeGrid(torch.tensor(ts, dtype=F64))


@pytest.mark.parametrize("ts", [torch.zeros(2, 3), torch.tensor(0.5), torch.tensor([0.1])])
def test_grid_not_1d_or_too_short(ts):
    with pytest.raises(ValueError, match="ts"):
        TimeGrid(ts)


def test_grid_not_finite_or_not_float():
    with pytest.raises(ValueError, match="ts"):
        TimeGrid(torch.tensor([0.0, float("nan"), 1.0]))
    with pytest.raises(TypeError, match="ts"):
        TimeGrid(torch.tensor([0, 1, 2]))


@pytest.mark.parametrize("n_steps", [0, -1, 2.5, True])
def test_grid_bad_n_steps(n_steps):
    with pytest.raises(ValueError, match="n_steps"):
        TimeGrid.uniform(n_steps, 0.0, 1.0)


def test_grid_bad_bounds_exponent_factor():
    with pytest.raises(ValueError, match="t1"):
        TimeGrid.uniform(3, 1.0, 1.0)
    with pytest.raises(ValueError, match="exponent"):
        TimeGrid.power(3, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match="t0"):
        TimeGrid.power(3, -0.5, 1.0, 0.9)
    with pytest.raises(ValueError, match="factor"):
        _grid().refine(0)


def test_grid_of_wrong_type():
    with pytest.raises(TypeError, match="grid"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), _x0(), torch.linspace(0, 1, 5))
    with pytest.raises(TypeError, match="grid"):
        _objective(grid=torch.linspace(0, 1, 5))
    with pytest.raises(TypeError, match="grid"):
        _objective()(_x0(), grid=torch.linspace(0, 1, 5))
    with pytest.raises(TypeError, match="grid"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F64))(
            _x0(), grid=torch.linspace(0, 1, 5))
    with pytest.raises(TypeError, match="grid"):
        sample(_reverse(), StandardNormal((2,), dtype=F64), torch.linspace(0, 1, 5), (2,))


# -- NaN / inf in x0 ------------------------------------------------------------------------------
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_x0(bad):
    x0 = _x0()
    x0[1, 0] = bad
    with pytest.raises(ValueError, match="x0"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), x0, _grid())
    with pytest.raises(ValueError, match="x0"):
        _objective()(x0)
    with pytest.raises(ValueError, match="x0"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F64), _grid())(x0)
    with pytest.raises(ValueError, match="x0"):
        DenoisingScoreMatching(VPSDE(), TinyMLP(2))(x0)


# -- drift / score returning the wrong shape -------------------------------------------------------
def test_drift_wrong_shape():
    x0 = _x0(state=(3,))
    process = ForwardSDE(WrongShape(), 0.5)
    with pytest.raises(ValueError, match="drift"):
        process.drift(x0, torch.tensor(0.0, dtype=F64))
    with pytest.raises(ValueError, match="drift"):
        ForwardTrajectory(process, x0, _grid()).rsample()
    reverse = ReverseSDE(process, TinyMLP(3))
    with pytest.raises(ValueError, match="drift"):
        DiffFlowObjective(reverse, StandardNormal((3,), dtype=F64), _grid())(x0)
    with pytest.raises(ValueError, match="drift"):
        FlowNLL(ForwardSDE(WrongShape(), 0.0), StandardNormal((3,), dtype=F64), _grid())(x0)


def test_drift_not_callable():
    with pytest.raises(TypeError, match="drift"):
        ForwardSDE(torch.zeros(2), 0.5)


def test_score_wrong_shape():
    x0 = _x0(state=(3,))
    reverse = ReverseSDE(ForwardSDE(TinyMLP(3), 0.5), WrongShape())
    with pytest.raises(ValueError, match="score"):
        reverse.drift(x0, torch.tensor(0.1, dtype=F64))
    with pytest.raises(ValueError, match="score"):
        DiffFlowObjective(reverse, StandardNormal((3,), dtype=F64), _grid())(x0)
    with pytest.raises(ValueError, match="score"):
        sample(reverse, StandardNormal((3,), dtype=F64), _grid(), (2,))
    with pytest.raises(ValueError, match="score"):
        DenoisingScoreMatching(VPSDE(), WrongShape())(x0)
    with pytest.raises(TypeError, match="score"):
        ReverseSDE(ForwardSDE(TinyMLP(3), 0.5), "not a function")


# -- g <= 0 where a density divides by it ---------------------------------------------------------
@pytest.mark.parametrize("g", [0.0, LinearSchedule(1.0, 0.0, 0.05, 0.6), negative_g])
def test_objective_rejects_g_not_positive(g):
    """g = 0 at t_N (the LinearSchedule) or everywhere; g < 0 from a callable."""
    reverse = _reverse(g=g)
    with pytest.raises(ValueError, match="diffusion"):
        _objective(reverse=reverse)(_x0())


def test_objective_rejects_g_zero_at_start():
    reverse = _reverse(g=LinearSchedule(0.0, 1.0, 0.05, 0.6))  # g(t_0) = 0: delta_F divides by it
    with pytest.raises(ValueError, match="diffusion"):
        _objective(reverse=reverse)(_x0())


@pytest.mark.parametrize("g", [0.0, LinearSchedule(1.0, 0.0, 0.05, 0.6), negative_g])
def test_backward_log_prob_rejects_g_not_positive(g):
    reverse = _reverse(g=g)
    p_B = BackwardTrajectory(reverse, StandardNormal((2,), dtype=F64)().expand((3,)), _grid())
    tau = torch.zeros(3, 5, 2, dtype=F64)
    with pytest.raises(ValueError, match="diffusion"):
        p_B.log_prob(tau)
    with pytest.raises(ValueError, match="diffusion"):
        p_B.delta_backward(tau)


@pytest.mark.parametrize("g", [0.0, LinearSchedule(0.0, 1.0, 0.05, 0.6)])
def test_forward_log_prob_rejects_g_zero(g):
    p_F = ForwardTrajectory(ForwardSDE(TinyMLP(2), g), _x0(), _grid())
    tau = p_F.rsample()  # sampling a flow is fine ...
    with pytest.raises(ValueError, match="diffusion"):  # ... its density is not
        p_F.log_prob(tau)


def test_schedules_reject_negative():
    with pytest.raises(ValueError, match="diffusion"):
        ForwardSDE(TinyMLP(2), -0.5)
    with pytest.raises(ValueError, match="g0"):
        LinearSchedule(-1.0, 1.0)
    with pytest.raises(TypeError, match="diffusion"):
        ForwardSDE(TinyMLP(2), "0.5")


def test_flow_nll_needs_zero_diffusion():
    with pytest.raises(ValueError, match="diffusion"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.5), StandardNormal((2,), dtype=F64), _grid())


# -- dtype / device mismatches --------------------------------------------------------------------
def test_module_dtype_mismatch():
    """float32 modules with float64 data."""
    x0 = _x0()
    reverse32 = _reverse(dtype=F32)
    with pytest.raises(TypeError, match="x0"):
        _objective(reverse=reverse32)(x0)
    with pytest.raises(TypeError, match="x0"):
        ForwardTrajectory(reverse32.forward_sde, x0, _grid())
    with pytest.raises(TypeError, match="x0"):
        FlowNLL(ForwardSDE(TinyMLP(2, dtype=F32), 0.0), StandardNormal((2,), dtype=F64),
                _grid())(x0)
    with pytest.raises(TypeError, match="prior samples"):
        BackwardTrajectory(reverse32, StandardNormal((2,), dtype=F64)(), _grid())
    with pytest.raises(TypeError, match="prior samples"):
        sample(reverse32, StandardNormal((2,), dtype=F64), _grid(), (2,))


def test_grid_dtype_mismatch():
    x0 = _x0()
    with pytest.raises(TypeError, match="grid"):
        _objective(grid=_grid(F32))(x0)
    with pytest.raises(TypeError, match="grid"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), x0, _grid(F32))
    with pytest.raises(TypeError, match="grid"):
        BackwardTrajectory(_reverse(), StandardNormal((2,), dtype=F64)(), _grid(F32))
    with pytest.raises(TypeError, match="grid"):
        sample(_reverse(), StandardNormal((2,), dtype=F64), _grid(F32), (2,))
    with pytest.raises(TypeError, match="grid"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F64), _grid(F32))(x0)


def test_prior_dtype_mismatch():
    with pytest.raises(TypeError, match="x0"):
        _objective(prior=StandardNormal((2,), dtype=F32))(_x0())
    with pytest.raises(TypeError, match="x0"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F32), _grid())(_x0())


@pytest.mark.gpu
def test_device_mismatch():
    x0 = _x0()
    with pytest.raises(ValueError, match="x0"):
        _objective(reverse=_reverse().to("cuda"))(x0)
    with pytest.raises(ValueError, match="grid"):
        _objective(grid=_grid().to("cuda"))(x0)
    with pytest.raises(ValueError, match="grid"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), x0, _grid().to("cuda"))
    with pytest.raises(ValueError, match="prior samples"):
        sample(_reverse().to("cuda"), StandardNormal((2,), dtype=F64), _grid(), (2,))
    with pytest.raises(ValueError, match="x0"):
        _objective(prior=StandardNormal((2,), dtype=F64).to("cuda"))(x0)


# -- prior event shape != state shape -------------------------------------------------------------
def test_prior_event_shape_mismatch():
    x0 = _x0()
    with pytest.raises(ValueError, match="prior"):
        _objective(prior=StandardNormal((3,), dtype=F64))(x0)
    with pytest.raises(ValueError, match="prior"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((3,), dtype=F64), _grid())(x0)
    with pytest.raises(ValueError, match="prior"):  # no event dims: a batch of scalars
        BackwardTrajectory(_reverse(), Normal(torch.zeros(2, dtype=F64), 1.0), _grid())
    with pytest.raises(ValueError, match="x_final"):
        sample(_reverse(), StandardNormal((2,), dtype=F64), _grid(),
               x_final=torch.zeros(4, 3, dtype=F64))
    with pytest.raises(TypeError, match="prior"):
        _objective(prior="standard normal")(x0)


def test_prior_modules_reject_bad_parameters():
    with pytest.raises(ValueError, match="scale"):
        DiagonalNormal(torch.zeros(2), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="loc"):
        DiagonalNormal(torch.zeros(2), torch.ones(3))


# -- lam, discretizers, noise ---------------------------------------------------------------------
def test_objective_rejects_lam_zero():
    with pytest.raises(ValueError, match="lam"):
        _objective(reverse=_reverse(lam=0.0))
    with pytest.raises(ValueError, match="lam"):
        _reverse(lam=-1.0)


def test_backward_log_prob_rejects_lam_zero():
    p_B = BackwardTrajectory(_reverse(lam=0.0), StandardNormal((2,), dtype=F64)(), _grid())
    with pytest.raises(ValueError, match="diffusion"):
        p_B.log_prob(p_B.sample((3,)))


def test_non_gaussian_discretizer_where_a_density_is_needed():
    with pytest.raises(TypeError, match="discretizer"):
        _objective(discretizer=NotGaussian())
    p_F = ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), _x0(), _grid(), NotGaussian())
    tau = p_F.rsample()  # sampling is fine
    with pytest.raises(TypeError, match="discretizer"):
        p_F.log_prob(tau)
    p_B = BackwardTrajectory(_reverse(), StandardNormal((2,), dtype=F64)(), _grid(),
                             NotGaussian())
    with pytest.raises(TypeError, match="discretizer"):
        p_B.log_prob(p_B.sample((3,)))
    with pytest.raises(TypeError, match="discretizer"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), _x0(), _grid(), discretizer="euler")


def test_wrong_noise_shape():
    x0 = _x0()
    with pytest.raises(ValueError, match="noise"):
        _objective()(x0, noise=torch.zeros(3, 3, 2, dtype=F64))  # N = 4 steps expected
    p_F = ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), x0, _grid())
    with pytest.raises(ValueError, match="delta_forward"):
        p_F.trajectory_from_noise(torch.zeros(3, 5, 2, dtype=F64))
    p_B = BackwardTrajectory(_reverse(), StandardNormal((2,), dtype=F64)().expand((3,)), _grid())
    with pytest.raises(ValueError, match="delta_backward"):
        p_B.trajectory_from_noise(torch.zeros(3, 2, dtype=F64), torch.zeros(3, 3, 2, dtype=F64))


def test_wrong_trajectory_shape():
    p_F = ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), _x0(), _grid())
    # torch's own sample validation names the argument ``value``; sdeflow's names it ``tau``
    with pytest.raises(ValueError, match="tau|value"):
        p_F.log_prob(torch.zeros(3, 4, 2, dtype=F64))  # N + 1 = 5 times expected
    with pytest.raises(ValueError, match="tau"):
        p_F.delta_forward(torch.zeros(3, 4, 2, dtype=F64))


# -- empty batch ----------------------------------------------------------------------------------
def test_empty_batch():
    x0 = torch.zeros(0, 2, dtype=F64)
    with pytest.raises(ValueError, match="x0"):
        _objective()(x0)
    with pytest.raises(ValueError, match="x0"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), x0, _grid())
    with pytest.raises(ValueError, match="x0"):
        FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F64), _grid())(x0)
    with pytest.raises(ValueError, match="x0"):
        DenoisingScoreMatching(VPSDE(), TinyMLP(2))(x0)


def test_x0_without_batch_dim():
    with pytest.raises(ValueError, match="x0"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), torch.zeros(2, dtype=F64), _grid())
    with pytest.raises(TypeError, match="x0"):
        ForwardTrajectory(ForwardSDE(TinyMLP(2), 0.5), torch.zeros(3, 2, dtype=torch.long),
                          _grid())


def test_time_of_wrong_shape():
    process = ForwardSDE(TinyMLP(2), 0.5)
    with pytest.raises(ValueError, match="t"):
        process.drift(_x0(), torch.zeros(2, dtype=F64))  # batch is 3


def test_cuda_marker_guard():
    assert HAS_CUDA == torch.cuda.is_available()

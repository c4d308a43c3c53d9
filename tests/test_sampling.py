"""Sampling over the reverse family: shapes, trajectories, the noise-free last step, determinism
of the probability-flow ODE, and a reverse process whose samples are known in closed form."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import LinearField, TinyMLP
from torch import Tensor, nn

from sdeflow import (
    DISCRETIZERS,
    VPSDE,
    EulerMaruyama,
    ForwardSDE,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
    sample,
)

F64 = torch.float64
STATES = {"points": (2,), "images": (3, 4, 4)}


class PlainEulerMaruyama(EulerMaruyama):
    """Euler–Maruyama through the generic ``step`` path of :func:`sample` (not registered)."""


def _reverse(state, lam=1.0, g=0.7):
    d = math.prod(state)
    forward = ForwardSDE(TinyMLP(d, generator=torch.Generator().manual_seed(0)), g)
    return ReverseSDE(forward, TinyMLP(d, generator=torch.Generator().manual_seed(1)), lam)


def _grid(n=6):
    return TimeGrid.uniform(n, 0.01, 0.8, dtype=F64)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("state", list(STATES.values()), ids=list(STATES))
@pytest.mark.parametrize("sample_shape", [(), (5,), (2, 3)])
@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_sample_shapes(state, sample_shape, lam):
    reverse, prior = _reverse(state, lam), StandardNormal(state, dtype=F64)
    x = sample(reverse, prior, _grid(), sample_shape, generator=_gen())
    assert x.shape == torch.Size(sample_shape) + state and x.dtype == F64
    assert torch.isfinite(x).all()
    traj = sample(reverse, prior, _grid(), sample_shape, generator=_gen(), return_trajectory=True)
    assert traj.shape == torch.Size(sample_shape) + (7,) + state


def test_prior_batch_shape_is_appended():
    state = (2,)
    prior = StandardNormal(state, dtype=F64)().expand((4,))
    x = sample(_reverse(state), prior, _grid(), (3,), generator=_gen())
    assert x.shape == (3, 4, 2)


@pytest.mark.parametrize("dname", sorted(DISCRETIZERS))
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_every_discretizer_samples(dname, lam):
    state = (2,)
    forward = VPSDE() if dname == "exponential" else _reverse(state).forward_sde
    reverse = ReverseSDE(forward, TinyMLP(2), lam)
    x = sample(reverse, StandardNormal(state, dtype=F64), _grid(), (5,),
               discretizer=DISCRETIZERS[dname](), generator=_gen())
    assert x.shape == (5, 2) and torch.isfinite(x).all()


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("denoise", [True, False])
def test_return_trajectory_ends(lam, denoise):
    state = (3, 4, 4)
    reverse, prior = _reverse(state, lam), StandardNormal(state, dtype=F64)
    x_final = torch.randn((2,) + state, dtype=F64, generator=_gen(5))
    traj = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(1),
                  return_trajectory=True, denoise=denoise)
    x0 = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(1), denoise=denoise)
    assert traj.shape == (2, 7) + state
    assert torch.equal(traj[:, -1], x_final)
    torch.testing.assert_close(traj[:, 0], x0, rtol=0, atol=0)


@pytest.mark.parametrize("lam", [0.5, 1.0])
def test_denoise_last_step_is_noise_free(lam):
    state = (2,)
    reverse, prior, grid = _reverse(state, lam), StandardNormal(state, dtype=F64), _grid()
    t1, dt0 = grid.ts[1], grid.dts[0]
    n = 20000
    for denoise in (True, False):
        traj = sample(reverse, prior, grid, (n,), generator=_gen(2), return_trajectory=True,
                      denoise=denoise)
        with torch.no_grad():
            last_mean = traj[:, 1] - reverse.drift(traj[:, 1], t1) * dt0
        if denoise:
            torch.testing.assert_close(traj[:, 0], last_mean, rtol=1e-12, atol=1e-12)
        else:  # the last step carries noise of std lam g sqrt(dt): standardized, N(0, 1)
            residual = ((traj[:, 0] - last_mean) / (lam * 0.7 * dt0.sqrt())).reshape(-1)
            m = residual.numel()  # 2n iid N(0, 1): mean sd 1/sqrt(m), std sd ~ 1/sqrt(2m)
            assert abs(float(residual.mean())) < 5 / m**0.5
            assert abs(float(residual.std()) - 1.0) < 5 / (2 * m) ** 0.5


def test_probability_flow_is_deterministic_given_x_final():
    state = (3, 4, 4)
    reverse, prior = _reverse(state, lam=0.0), StandardNormal(state, dtype=F64)
    x_final = torch.randn((3,) + state, dtype=F64, generator=_gen(7))
    for denoise in (True, False):
        a = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(1), denoise=denoise)
        b = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(2), denoise=denoise)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # ... and the SDE (lam = 1) is not.
    reverse1 = reverse.with_lam(1.0)
    a = sample(reverse1, prior, _grid(), x_final=x_final, generator=_gen(1))
    b = sample(reverse1, prior, _grid(), x_final=x_final, generator=_gen(2))
    assert not torch.allclose(a, b)


def test_generator_reproducibility():
    state = (2,)
    reverse, prior = _reverse(state), StandardNormal(state, dtype=F64)
    x_final = torch.randn(4, 2, dtype=F64, generator=_gen(3))
    a = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(9))
    b = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen(9))
    assert torch.equal(a, b)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("denoise", [True, False])
@pytest.mark.parametrize("state", list(STATES.values()), ids=list(STATES))
def test_fast_path_matches_generic_step(lam, denoise, state):
    """The sampler's Euler–Maruyama path equals stepping through ``Discretizer.step``."""
    reverse, prior = _reverse(state, lam, g=LinearSchedule(0.4, 1.1)), StandardNormal(
        state, dtype=F64)
    x_final = torch.randn((3,) + state, dtype=F64, generator=_gen(4))
    kwargs = dict(x_final=x_final, denoise=denoise, return_trajectory=True)
    fast = sample(reverse, prior, _grid(), generator=_gen(6), **kwargs)
    plain = sample(reverse, prior, _grid(), generator=_gen(6),
                   discretizer=PlainEulerMaruyama(), **kwargs)
    torch.testing.assert_close(fast, plain, rtol=1e-12, atol=1e-12)


def test_no_autograd_by_default_and_gradients_on_request():
    state = (2,)
    reverse, prior = _reverse(state), StandardNormal(state, dtype=F64)
    assert not sample(reverse, prior, _grid(), (4,), generator=_gen()).requires_grad
    x_final = torch.randn(4, 2, dtype=F64, generator=_gen(1)).requires_grad_()
    with torch.enable_grad():
        x0 = sample(reverse, prior, _grid(), x_final=x_final, generator=_gen())
    x0.sum().backward()
    assert x_final.grad is not None and x_final.grad.abs().sum() > 0
    assert all(p.grad is not None for p in reverse.parameters())


# -- a reverse process known in closed form -------------------------------------------------------
class InverseVarianceScore(nn.Module):
    """``s(x, t) = -x / (v0 + t)``: the score of N(0, (v0 + t) I)."""

    def __init__(self, v0: float) -> None:
        super().__init__()
        self.v0 = v0

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return -x / (self.v0 + t)


def _linear_reverse(a, g, v0, lam, d):
    drift = LinearField(a * torch.eye(d, dtype=F64))
    return ReverseSDE(ForwardSDE(drift, g), InverseVarianceScore(v0), lam)


def _factors(a, g, v0, lam, grid):
    """Each reverse Euler step is x_i = J_i x_{i+1} + noise with
    J_i = 1 - (a + (1 + lam^2)/2 g^2 / (v0 + t_{i+1})) dt_i (the drift is linear in x)."""
    k = (1 + lam**2) / 2
    ts, dts = grid.ts, grid.dts
    return 1 - (a + k * g**2 / (v0 + ts[1:])) * dts


def test_probability_flow_of_a_linear_process_in_closed_form():
    a, g, v0, d = -0.3, 0.9, 0.5, 3
    grid = TimeGrid.power(8, 0.01, 1.0, 0.7, dtype=F64)
    reverse = _linear_reverse(a, g, v0, 0.0, d)
    x_final = torch.randn(5, d, dtype=F64, generator=_gen(8))
    traj = sample(reverse, StandardNormal((d,), dtype=F64), grid, x_final=x_final,
                  return_trajectory=True)
    J = _factors(a, g, v0, 0.0, grid)
    expected = [x_final]
    for i in reversed(range(grid.n_steps)):
        expected.append(J[i] * expected[-1])
    torch.testing.assert_close(traj, torch.stack(expected[::-1], 1), rtol=1e-12, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("lam,denoise", [(1.0, True), (1.0, False), (0.5, True)])
def test_sampling_a_known_gaussian_reverse_process(lam, denoise):
    """x_N ~ N(0, s_N^2); then x_i = J_i x_{i+1} + lam g sqrt(dt_i) delta_i, with delta_0 = 0 under
    denoise: Var x_i = J_i^2 Var x_{i+1} + lam^2 g^2 dt_i. The sample variance of each
    coordinate matches within 4 standard errors (M = 20000 samples, d = 2)."""
    a, g, v0, d, s_final = -0.3, 0.9, 0.5, 2, 1.3
    grid = TimeGrid.uniform(10, 0.01, 1.0, dtype=F64)
    reverse = _linear_reverse(a, g, v0, lam, d)
    prior = StandardNormal((d,), scale=s_final, dtype=F64)
    torch.manual_seed(0)
    x = sample(reverse, prior, grid, (20000,), generator=_gen(10), denoise=denoise)
    J = _factors(a, g, v0, lam, grid)
    var = torch.tensor(s_final**2, dtype=F64)
    for i in reversed(range(grid.n_steps)):
        noise_var = 0.0 if (i == 0 and denoise) else lam**2 * g**2 * grid.dts[i]
        var = J[i] ** 2 * var + noise_var
    se_var = var * math.sqrt(2 / x.shape[0])
    se_mean = (var / x.shape[0]).sqrt()
    assert (x.mean(0).abs() < 4 * se_mean).all()
    assert ((x.var(0) - var).abs() < 4 * se_var).all(), (x.var(0), var)
    if lam == 1.0:  # the test tells denoise from not: the last step's noise exceeds the error
        assert float(lam**2 * g**2 * grid.dts[0]) > 4 * float(se_var)

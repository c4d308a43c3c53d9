"""The discretizer test kit: it accepts the shipped schemes, rejects broken ones (naming the
failed check), and its strategies, problems and new schemes behave as documented."""

from __future__ import annotations

import math
import re

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import sdeflow.testing.strategies as sst
from sdeflow import (
    VPSDE,
    DiffFlowObjective,
    ForwardSDE,
    ForwardTrajectory,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
    sample,
)
from sdeflow.discretizers import DISCRETIZERS, EulerMaruyama
from sdeflow.discretizers.exponential import ExponentialIntegrator
from sdeflow.discretizers.heun import StochasticHeun
from sdeflow.testing import (
    GBM,
    OU,
    check_discretizer,
    check_shapes,
    check_trajectory_identities,
    check_transition,
    gbm_problem,
    measure_orders,
    ou_problem,
)

DT = torch.float64
FAST = settings(max_examples=15, deadline=None)


# --- deliberately broken schemes ------------------------------------------------------------------

class NoSqrtDt(EulerMaruyama):
    """Noise not scaled by sqrt(dt) (consistently in step and transition)."""

    def transition(self, sde, x, t, dt, drift=None):
        b = sde.drift(x, t) if drift is None else drift
        return x + b * dt, sde.diffusion(x, t) * torch.ones_like(dt)


class WrongTime(EulerMaruyama):
    """The step evaluates the drift at t + dt; the declared transition (EM's) at t."""

    def step(self, sde, x, t, dt, noise):
        return x + sde.drift(x, t + dt) * dt + sde.diffusion(x, t) * dt.abs().sqrt() * noise


class WrongAffine(EulerMaruyama):
    """Declares Euler's affine coefficients but steps with a drift 1% too large: every consumer
    would run the declared step, not this one."""

    def step(self, sde, x, t, dt, noise):
        return x + 1.01 * sde.drift(x, t) * dt + sde.diffusion(x, t) * dt.abs().sqrt() * noise

    def affine_steps(self, sde, t, dt):
        return super().affine_steps(sde, t, dt)


class WrongStd(EulerMaruyama):
    """The declared transition std is not the step's."""

    def transition(self, sde, x, t, dt, drift=None):
        mean, std = super().transition(sde, x, t, dt, drift)
        return mean, 1.3 * std

    def step(self, sde, x, t, dt, noise):
        mean, std = super().transition(sde, x, t, dt)
        return mean + std * noise


@pytest.fixture(scope="module")
def reports():
    cache = {}

    def get(cls):
        if cls not in cache:
            cache[cls] = check_discretizer(cls())
        return cache[cls]

    return get


@pytest.mark.parametrize("name", sorted(DISCRETIZERS))
def test_registered_schemes_pass_the_kit(reports, name):
    report = reports(DISCRETIZERS[name])
    report.assert_ok()
    measured = [r for r in report if r.name.startswith("strong_order") and r.status == "pass"]
    assert measured, "every shipped scheme has at least one measured order"


@pytest.mark.parametrize(("cls", "failing"), [
    (NoSqrtDt, "strong_order[gbm]"),
    (NoSqrtDt, "strong_order[ou]"),
    (WrongTime, "transition[diffflow, forward]"),
    (WrongTime, "I2_forward[diffflow, (2,)]"),
    (WrongStd, "transition[vp, reverse]"),
    (WrongAffine, "affine_steps[diffflow, forward]"),
])
def test_kit_rejects_broken_schemes(reports, cls, failing):
    report = reports(cls)
    assert not report.ok
    assert report[failing].status == "fail", str(report)
    with pytest.raises(AssertionError, match="FAIL  " + re.escape(failing)):
        report.assert_ok()


def test_broken_scheme_details_say_by_how_much(reports):
    r = reports(WrongStd)["transition[vp, forward]"]
    assert "differs from mean + std*noise by" in r.detail and r.value > r.expected
    r = reports(NoSqrtDt)["strong_order[ou]"]
    assert r.value is not None and abs(r.value - 1.0) > 0.4 and "declared 1" in r.detail
    assert "FAILED" in str(reports(NoSqrtDt)).splitlines()[0]


def test_wrong_time_is_caught_by_reverse_steps_too(reports):
    report = reports(WrongTime)
    assert report["transition[diffflow, reverse]"].status == "fail"
    # its orders are those of a first-order scheme: only the step/transition mismatch betrays it
    assert report["strong_order[gbm]"].status == "pass"


def test_check_discretizer_argument_errors():
    with pytest.raises(TypeError, match="Discretizer instance"):
        check_discretizer(EulerMaruyama)
    with pytest.raises(ValueError, match="n_weak_paths"):
        measure_orders(EulerMaruyama(), ou_problem(), n_weak_paths=2)


# --- the strategies drive the individual checks ---------------------------------------------------

@FAST
@given(scheme=sst.discretizers(), sde=st.one_of(sst.nonlinear_processes(),
                                                 sst.linear_processes()),
       x=sst.states(), t=st.floats(0.05, 0.9), dt=st.floats(1e-3, 0.1))
def test_shapes_property(scheme, sde, x, t, dt):
    t, dt = torch.tensor(t, dtype=DT), torch.tensor(dt, dtype=DT)
    if scheme.declines(sde) is not None:
        with pytest.raises(TypeError):  # a declined process is refused by step, with the reason
            scheme.step(sde, x, t, dt, torch.zeros_like(x))
        return
    assert check_shapes(scheme, sde, x, t, dt).ok
    assert check_transition(scheme, sde, x, t, dt).ok


@FAST
@given(rev=sst.reverse_processes(sst.linear_processes()), grid=sst.grids(t_min=0.05, t_max=0.95),
       shape=sst.state_shapes(max_state_dims=2), scheme=sst.discretizers(gaussian=True))
def test_identities_property_linear(rev, grid, shape, scheme):
    x0 = torch.randn(shape, dtype=DT)
    results = check_trajectory_identities(scheme, rev.forward_sde, rev, grid, x0)
    assert all(r.ok for r in results), [str(r) for r in results]


@FAST
@given(rev=sst.reverse_processes(sst.nonlinear_processes()), grid=sst.grids(),
       x0=sst.states())
def test_identities_property_nonlinear_em(rev, grid, x0):
    results = check_trajectory_identities(EulerMaruyama(), rev.forward_sde, rev, grid, x0)
    assert all(r.status == "pass" for r in results), [str(r) for r in results]


@FAST
@given(grid=sst.grids(kinds=("jittered",), min_steps=2), sched=sst.schedules())
def test_strategies_draw_valid_objects(grid, sched):
    assert grid.n_steps >= 2 and bool((grid.dts > 0).all())
    assert bool((sched(grid.ts) > 0).all())


# --- problems ---------------------------------------------------------------------------------

def test_gbm_solution_and_forms():
    p = gbm_problem(mu=0.3, sigma=0.5)
    dw = torch.randn(20000, 8, dtype=DT, generator=torch.Generator().manual_seed(0)) * 8**-0.5
    x = p.solution(torch.ones(20000, 1, dtype=DT), dw)
    mean_exact = torch.exp(torch.tensor(0.3, dtype=DT))  # E[x_T] = x0 e^{mu T}
    assert abs(float(x.mean()) - float(mean_exact)) < 4 * float(x.std()) / 20000**0.5
    x1 = torch.ones(1, 1)
    assert float(GBM(0.3, 0.5, "stratonovich").drift(x1, 0)) == pytest.approx(0.3 - 0.125)
    with pytest.raises(ValueError, match="sde_type"):
        GBM(0.3, 0.5, "strat")


def test_ou_reference_has_the_exact_marginal():
    p, ou = ou_problem(theta=1.5, sigma=0.8), OU(1.5, 0.8)
    n = 20000
    dw = torch.randn(n, 256, dtype=DT, generator=torch.Generator().manual_seed(1)) / 16
    x = p.solution(torch.ones(n, 1, dtype=DT), dw)
    mean, std = ou.marginal(torch.ones(1, 1, dtype=DT), torch.tensor(1.0, dtype=DT))
    assert abs(float(x.mean() - mean)) < 4 * float(std) / n**0.5
    assert abs(float(x.var()) / float(std) ** 2 - 1) < 4 * (2 / n) ** 0.5


# --- the new schemes everywhere Euler-Maruyama is ------------------------------------------------

@pytest.mark.parametrize("sde", [VPSDE(0.1, 8.0), OU(1.2, 0.7)])
def test_exponential_transition_is_exact_on_linear_processes(sde):
    """Propagating mean and variance through the steps gives the closed-form marginal."""
    sde = sde.to(DT)
    grid = TimeGrid.power(7, 0.0, 1.0, 1.5, dtype=DT)
    x0 = torch.tensor([[0.7]], dtype=DT)
    mean, var = x0, torch.zeros_like(x0)
    for t, dt in zip(grid.ts[:-1], grid.dts):
        m1, std = ExponentialIntegrator().transition(sde, mean, t, dt)
        ratio = m1 / mean
        mean, var = m1, ratio**2 * var + std**2
    m_exact, s_exact = sde.marginal(x0, grid.ts[-1])
    torch.testing.assert_close(mean, m_exact)
    torch.testing.assert_close(var, s_exact.expand_as(var) ** 2)


def _exponential_reverse_var(beta_min, beta_max, ts, lam=1.0, denoise=True):
    r"""Closed-form variance of :math:`x_0` when ``sample`` runs ``ExponentialIntegrator`` on
    ``ReverseSDE(VPSDE(beta_min, beta_max), s = -x, lam)`` from :math:`x_N \sim N(0, 1)`.

    Each step from :math:`t` down to :math:`t'` (``dt = t' - t < 0``) is linear Gaussian,
    :math:`x' = A x + \sqrt{V}\delta`, with :math:`\Delta B = B(t) - B(t')`, the linear part
    :math:`\Phi = m(t')/m(t) = e^{\Delta B/2}`, :math:`\Psi = dt\,\varphi_1(\Delta B/2)`, the
    remainder :math:`n = -c g^2 s = c\beta(t) x` (:math:`c = (1 + \lambda^2)/2`), so
    :math:`A = \Phi + \Psi c \beta(t)` and :math:`V = \lambda^2(\Phi^2\sigma(t)^2 - \sigma(t')^2)
    = \lambda^2(e^{\Delta B} - 1)`; the last step (to :math:`t_0`) has no noise with ``denoise``.
    Written from the module's equations in plain floats, independently of the code.
    """
    def big_b(t):
        return beta_min * t + 0.5 * (beta_max - beta_min) * t**2

    c, v = 0.5 * (1.0 + lam**2), 1.0
    for i in range(len(ts) - 2, -1, -1):
        t, t_next = ts[i + 1], ts[i]
        d_b = big_b(t) - big_b(t_next)
        psi = (t_next - t) * math.expm1(d_b / 2) / (d_b / 2)
        a = math.exp(d_b / 2) + psi * c * (beta_min + (beta_max - beta_min) * t)
        v = a * a * v + (0.0 if i == 0 and denoise else lam**2 * math.expm1(d_b))
    return v


def test_exponential_reverse_variance_recursion():
    """N(0, I) is stationary for VP with the exact score -x, but the scheme freezes the score term
    over each step: a first-order bias (Var x_0 = 0.807 on 8 steps, 0.86 without the noise-free
    last step), checked exactly through ``transition`` and shown to vanish like h."""
    vp = VPSDE(0.1, 5.0).to(DT)
    rev, ei = ReverseSDE(vp, lambda x, t: -x, lam=1.0), ExponentialIntegrator()
    errors = {True: [], False: []}
    for n in (8, 16, 32, 64, 128):
        grid = TimeGrid.uniform(n, 1e-3, 1.0, dtype=DT)
        for denoise in (True, False):
            var = torch.ones(1, 1, dtype=DT)
            for i in range(n - 1, -1, -1):
                mean, std = ei.transition(rev, torch.ones(1, 1, dtype=DT), grid.ts[i + 1],
                                          -grid.dts[i])
                var = mean**2 * var + (0.0 if i == 0 and denoise else std**2)
            expected = _exponential_reverse_var(0.1, 5.0, grid.ts.tolist(), denoise=denoise)
            torch.testing.assert_close(var, torch.full_like(var, expected), rtol=1e-12, atol=0)
            errors[denoise].append(1.0 - expected)
    for errs in errors.values():  # weak order 1: the error halves with h (past the 8-step grid)
        ratios = [e1 / e0 for e0, e1 in zip(errs[1:], errs[2:])]
        assert all(0.45 < r < 0.55 for r in ratios), (errs, ratios)


def test_exponential_in_objective_and_sampler():
    vp = VPSDE(0.1, 5.0).to(DT)
    rev = ReverseSDE(vp, lambda x, t: -x, lam=1.0)
    grid, prior = TimeGrid.uniform(8, 1e-3, 1.0, dtype=DT), StandardNormal((2,), dtype=DT)
    gen = torch.Generator().manual_seed(0)
    terms = DiffFlowObjective(rev, prior, grid, discretizer=ExponentialIntegrator())(
        torch.randn(6, 2, dtype=DT, generator=gen))
    assert torch.isfinite(terms.nelbo).all() and terms.step_terms.shape == (6, 8)
    n = 20000
    x = sample(rev, prior, grid, (n,), discretizer=ExponentialIntegrator(), generator=gen,
               x_final=torch.randn(n, 2, dtype=DT, generator=gen))
    # x is exactly N(0, v I) with v from the variance recursion (0.807, not 1: the scheme's bias
    # on 8 steps and the noise-free last step); the variance of 2n iid values has sd v sqrt(2/2n).
    v = _exponential_reverse_var(0.1, 5.0, grid.ts.tolist())
    assert x.shape == (n, 2) and abs(float(x.var()) - v) < 4 * v * (2 / (2 * n - 1)) ** 0.5
    with pytest.raises(TypeError, match="declared linear drift part"):
        sample(ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x), prior, grid,
               (3,), discretizer=ExponentialIntegrator())


def test_heun_samples_but_has_no_density():
    fwd = ForwardSDE(lambda x, t: -x, 0.5)
    grid, heun = TimeGrid.uniform(5, 0.0, 1.0), StochasticHeun()
    p_f = ForwardTrajectory(fwd, torch.zeros(3, 2), grid, heun)
    tau = p_f.rsample()
    assert tau.shape == (3, 6, 2)
    with pytest.raises(TypeError, match="Gaussian transition"):
        p_f.log_prob(tau)
    rev = ReverseSDE(fwd, lambda x, t: -x / 0.125)
    assert sample(rev, StandardNormal((2,)), grid, (4,), discretizer=heun).shape == (4, 2)
    with pytest.raises(TypeError, match="Gaussian transition"):
        DiffFlowObjective(rev, StandardNormal((2,)), grid, discretizer=heun)
    with pytest.raises(TypeError, match="Stratonovich"):
        heun.step(GBM(0.1, 0.2), torch.ones(2, 1), torch.tensor(0.0), torch.tensor(0.1),
                  torch.zeros(2, 1))

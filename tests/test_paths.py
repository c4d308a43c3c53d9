"""Affine paths as processes (issue 21), float64:

- the derivatives d_alpha, d_sigma of every built-in path (the linear and cosine paths, and the
  VP / sub-VP / VE processes read as paths) equal autograd's derivatives of alpha, sigma;
- the SDE form a = alpha'/alpha, g^2 = 2 sigma sigma' - 2 (alpha'/alpha) sigma^2 has the path's
  marginals: integrating the linear SDE's moment equations m' = a m, v' = 2 a v + g^2 from one
  time to another lands on (alpha, sigma^2);
- a path built from a linear SDE's marginals (MarginalPath) has the process's drift, diffusion and
  probability-flow drift;
- the four-target conversions are exact: each target made from (x0, eps) converts to each other
  one, round trips are the identity (1e-12), and on VP the noise target is DSM's score target;
- endpoints: where alpha = 0 or sigma = 0 the SDE form and undetermined conversions raise
  errors naming the problem; noise and score still convert at alpha = 0;
- contract: the existing ReverseSDE, sample (every scheme), the exponential integrator's exact
  transition, on the paths; with the exact score of Gaussian data the samples have its moments.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from path_problems import GAUSSIAN
from torchdiffeq import odeint

from sdeflow import (
    DISCRETIZERS,
    TARGETS,
    VESDE,
    VPSDE,
    AffinePath,
    ConvertedModel,
    CosinePath,
    ExponentialIntegrator,
    LinearPath,
    MarginalPath,
    PathODE,
    ReverseSDE,
    SubVPSDE,
    TimeGrid,
    convert,
    probability_flow,
    sample,
)
from sdeflow.processes.paths import conversion, target_coefficients

F64 = torch.float64


def paths():
    return {"linear": LinearPath(), "cosine": CosinePath(), "vp": VPSDE(), "subvp": SubVPSDE(),
            "ve": VESDE(0.01, 5.0), "marginal_vp": MarginalPath(VPSDE())}


PATHS = list(paths())


def _times(n=7, lo=0.02, hi=0.98, seed=0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(n, generator=g, dtype=F64)


@pytest.mark.parametrize("name", PATHS)
def test_derivatives_match_autograd(name):
    path = paths()[name]
    t = _times().requires_grad_(True)
    alpha, sigma, d_alpha, d_sigma = path.path_coefficients(t)
    ga, gs = (torch.autograd.grad(v.sum(), t, retain_graph=True)[0] if v.requires_grad
              else torch.zeros_like(t) for v in (alpha, sigma))  # VE: alpha = 1
    torch.testing.assert_close(d_alpha, ga, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(d_sigma, gs, rtol=1e-10, atol=1e-12)


class Quadratic(AffinePath):
    """A user's path: x_t = (1 - t^2) x0 + t eps."""

    def alpha(self, t):
        return 1 - t**2

    def sigma(self, t):
        return t

    def d_alpha(self, t):
        return -2 * t

    def d_sigma(self, t):
        return torch.ones_like(t)


@pytest.mark.parametrize("path", [LinearPath(), CosinePath(), Quadratic()],
                         ids=["linear", "cosine", "quadratic"])
def test_sde_form_has_the_path_marginals(path):
    """m' = a m, v' = 2 a v + g^2 integrated from s to t give alpha(t)/alpha(s) scaled, sigma^2."""
    s, t = 0.05, 0.9
    ts = torch.tensor([s, t], dtype=F64)

    def moments(u, state):
        m, v = state
        u = u.reshape(1)
        a, g = path.drift_coef(u)[0], path.g(u)[0]
        return a * m, 2 * a * v + g**2

    m0 = path.alpha(ts[:1])[0]
    v0 = path.sigma(ts[:1])[0] ** 2
    m, v = odeint(moments, (m0, v0), ts, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(m[-1], path.alpha(ts[1:])[0], rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(v[-1], path.sigma(ts[1:])[0] ** 2, rtol=1e-8, atol=1e-10)


def test_linear_and_cosine_sde_forms_in_closed_form():
    t = _times()
    torch.testing.assert_close(LinearPath().drift_coef(t), -1 / (1 - t), rtol=1e-13, atol=0)
    torch.testing.assert_close(LinearPath().g(t) ** 2, 2 * t / (1 - t), rtol=1e-13, atol=0)
    half_pi = 0.5 * torch.pi
    torch.testing.assert_close(CosinePath().drift_coef(t), -half_pi * torch.tan(half_pi * t))
    torch.testing.assert_close(CosinePath().g(t) ** 2, torch.pi * torch.tan(half_pi * t))
    assert LinearPath().prior_std() == 1.0 and CosinePath().prior_std() == 1.0


@pytest.mark.parametrize("process", [VPSDE(), SubVPSDE(), VESDE(0.01, 5.0), VPSDE(0.5, 5.0, 2.0)],
                         ids=["vp", "subvp", "ve", "vp_T2"])
def test_marginal_path_is_the_process(process):
    path = MarginalPath(process)
    assert path.T == process.T
    t = _times(hi=0.98 * process.T)
    x = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=F64)

    def score(x, t):
        return torch.tanh(x) * (1 + t)[:, None]

    torch.testing.assert_close(path.drift_coef(t), process.drift_coef(t), rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(path.diffusion_scale(t), process.diffusion_scale(t), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(probability_flow(path, score).drift(x, t),
                               probability_flow(process, score).drift(x, t),
                               rtol=1e-10, atol=1e-12)
    for lam in (0.5, 1.0):
        torch.testing.assert_close(ReverseSDE(path, score, lam).drift(x, t),
                                   ReverseSDE(process, score, lam).drift(x, t),
                                   rtol=1e-10, atol=1e-12)
    mean, std = path.marginal(x, t)
    ref_mean, ref_std = process.marginal(x, t)
    torch.testing.assert_close(mean, ref_mean, rtol=0, atol=0)
    torch.testing.assert_close(std, ref_std, rtol=0, atol=0)


def _targets_from(path, x0, eps, t):
    """Each target made directly from (x0, eps), the velocity by autograd of x_t in t."""
    t = t.clone().requires_grad_(True)
    alpha, sigma = path.marginal_coefs(t)
    x = alpha[:, None] * x0 + sigma[:, None] * eps
    velocity = torch.stack([torch.autograd.grad(x[:, j].sum(), t, retain_graph=True)[0]
                            for j in range(x.shape[1])], 1)
    sigma = sigma.detach()
    return x.detach(), {"velocity": velocity, "noise": eps, "data": x0,
                        "score": -eps / sigma[:, None]}


@pytest.mark.parametrize("name", PATHS)
def test_conversions_are_exact(name):
    path = paths()[name]
    g = torch.Generator().manual_seed(2)
    t = _times(hi=0.98 * getattr(path, "T", 1.0))
    x0, eps = torch.randn(7, 2, generator=g, dtype=F64), torch.randn(7, 2, generator=g, dtype=F64)
    x, made = _targets_from(path, x0, eps, t)
    for source, target in itertools.product(TARGETS, TARGETS):
        got = convert(path, made[source], x, t, source, target)
        torch.testing.assert_close(got, made[target], rtol=1e-10, atol=1e-10,
                                   msg=f"{source} -> {target}")
    # round trips and compositions of arbitrary values (not only targets of one pair)
    value = torch.randn(7, 2, generator=g, dtype=F64)
    for source, target in itertools.product(TARGETS, TARGETS):
        there = convert(path, value, x, t, source, target)
        back = convert(path, there, x, t, target, source)
        torch.testing.assert_close(back, value, rtol=1e-12, atol=1e-12)
        for via in TARGETS:
            two_steps = convert(path, convert(path, value, x, t, source, via), x, t, via, target)
            torch.testing.assert_close(two_steps, there, rtol=1e-12, atol=1e-12)


def test_target_coefficients_and_vp_noise_is_dsm_target():
    """The noise target on VP, converted to a score, is DSM's target -eps/sigma(t) of VPSDE."""
    vp, t = VPSDE(), _times()
    eps = torch.randn(7, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    x0 = torch.randn(7, 2, generator=torch.Generator().manual_seed(4), dtype=F64)
    mean, std = vp.marginal(x0, t)
    x = mean + std * eps
    torch.testing.assert_close(convert(vp, eps, x, t, "noise", "score"), -eps / std,
                               rtol=1e-14, atol=0)
    coefs = vp.path_coefficients(t)
    a, b = target_coefficients(coefs, "score")
    assert bool((a == 0).all()) and torch.equal(b, -1 / coefs.sigma)


def test_converted_model_and_path_ode_are_the_probability_flow():
    """PathODE(path, v) = probability_flow(path, score converted from v) where both exist."""
    g = torch.Generator().manual_seed(5)
    x, t = torch.randn(6, 2, generator=g, dtype=F64), _times(6)

    def velocity(x, t):
        return torch.sin(x) - x * t[:, None]

    for path in (LinearPath(), CosinePath(), VPSDE()):
        score = ConvertedModel(path, velocity, "velocity", "score")
        torch.testing.assert_close(PathODE(path, velocity).drift(x, t),
                                   probability_flow(path, score).drift(x, t),
                                   rtol=1e-11, atol=1e-11)
        noise = ConvertedModel(path, velocity, "velocity", "noise")
        torch.testing.assert_close(PathODE(path, noise, target="noise").drift(x, t),
                                   velocity(x, t), rtol=1e-11, atol=1e-11)


def test_endpoints_raise_clear_errors():
    path, x = LinearPath(), torch.ones(2, 2, dtype=F64)
    one = torch.ones(2, dtype=F64)
    with pytest.raises(ValueError, match=r"needs alpha\(t\) > 0.*PathODE"):
        path.drift_coef(one)
    with pytest.raises(ValueError, match="alpha"):
        sample(ReverseSDE(path, lambda x, t: -x), path.prior((2,), dtype=F64),
               TimeGrid.uniform(4, 0.0, 1.0, dtype=F64), 3)
    with pytest.raises(ValueError, match="cannot convert a 'noise' prediction to 'data'"):
        convert(path, x, x, one, "noise", "data")
    with pytest.raises(ValueError, match="cannot convert a 'data' prediction to 'noise'"):
        convert(path, x, x, torch.zeros(2, dtype=F64), "data", "noise")
    # noise and score are multiples of eps: they convert where alpha = 0 ...
    torch.testing.assert_close(convert(path, x, x, one, "noise", "score"), -x)
    # ... and so does velocity -> noise (at t = 1, x_t = eps)
    torch.testing.assert_close(convert(path, 3 * x, x, one, "velocity", "noise"), x)
    with pytest.raises(ValueError, match="target must be one of"):
        convert(path, x, x, one, "noise", "eps")

    class Shrinking(Quadratic):  # sigma/alpha decreasing: not a diffusion
        def sigma(self, t):
            return 1 - t

        def d_sigma(self, t):
            return -torch.ones_like(t)

    with pytest.raises(ValueError, match="sigma/alpha nondecreasing"):
        Shrinking().g(torch.tensor([0.5], dtype=F64))
    with pytest.raises(TypeError, match="affine_path"):
        MarginalPath(PathODE(path, lambda x, t: x))


@pytest.mark.parametrize("name", ["linear", "cosine", "marginal_vp", "vp"])
def test_exponential_integrator_is_exact_on_paths(name):
    path = paths()[name]
    x0 = torch.randn(3, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    t, dt = torch.tensor(0.0, dtype=F64), torch.tensor(0.7, dtype=F64)
    if name in ("vp", "marginal_vp"):
        t = torch.tensor(1e-3, dtype=F64)
    mean, std = ExponentialIntegrator().transition(path, x0, t, dt)
    a0, s0 = path.marginal_coefs(t)
    a1, s1 = path.marginal_coefs(t + dt)
    torch.testing.assert_close(mean, (a1 / a0) * x0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(std, (s1**2 - (a1 / a0) ** 2 * s0**2).sqrt(), rtol=1e-10,
                               atol=1e-12)


def _gaussian_score(path):
    return ConvertedModel(path, lambda x, t: GAUSSIAN.optimal(path, "noise", x, t), "noise",
                          "score")


@pytest.mark.parametrize("name", ["linear", "cosine", "marginal_vp"])
@pytest.mark.parametrize("scheme", sorted(DISCRETIZERS))
@pytest.mark.parametrize("lam", [0.0, 1.0])
def test_reverse_family_samples_gaussian_data(name, scheme, lam):
    """ReverseSDE(path, exact score, lam) sampled from the exact p_{t1} down to t0 = 1e-3 has the
    data's moments (the marginal at t0), within the schemes' bias on 400 steps (the exponential
    integrator's first-order bias at lam = 0 is the largest: ~0.1 in the covariance on 100 steps
    of the linear path, halving with each doubling of the steps)."""
    path = paths()[name]
    discretizer = DISCRETIZERS[scheme]()
    reverse = ReverseSDE(path, _gaussian_score(path), lam)
    assert discretizer.declines(reverse) is None
    t0, t1 = 1e-3, 0.95
    grid = TimeGrid.uniform(400, t0, t1, dtype=F64)
    g = torch.Generator().manual_seed(7)
    n = 4000
    a1, s1 = path.marginal_coefs(torch.tensor([t1], dtype=F64))
    x_final = a1 * GAUSSIAN.sample(n, g) + s1 * torch.randn(n, 2, generator=g, dtype=F64)
    xs = sample(reverse, path.prior((2,), dtype=F64), grid, discretizer=discretizer,
                generator=g, x_final=x_final)
    assert xs.shape == (n, 2) and bool(torch.isfinite(xs).all())
    a0, s0 = path.marginal_coefs(torch.tensor([t0], dtype=F64))
    mean = a0 * GAUSSIAN.mu[0]
    cov = a0**2 * GAUSSIAN.cov[0] + s0**2 * torch.eye(2, dtype=F64)
    torch.testing.assert_close(xs.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(xs.T), cov, atol=0.05, rtol=0)


def test_path_prior_and_ode_sample_shapes():
    path = LinearPath()
    prior = path.prior((1, 2, 2), dtype=F64)
    grid = TimeGrid.uniform(5, 0.0, 1.0, dtype=F64)
    xs = sample(PathODE(path, lambda x, t: -x), prior, grid, 3,
                generator=torch.Generator().manual_seed(0))
    assert xs.shape == (3, 1, 2, 2)
    assert conversion(path.path_coefficients(torch.ones(1, dtype=F64)), "score", "noise")[1] == -1

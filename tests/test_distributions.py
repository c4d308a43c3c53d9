"""A trained model as a distribution over x0 (issue 18): ProbabilityFlowDistribution and
SDESamplerDistribution against closed forms, finite differences, and inside Pyro programs.

The linear-Gaussian case: data N(0, s^2 I) under the VP SDE with its exact score has the
marginal p_t = N(0, (m(t)^2 s^2 + sigma(t)^2) I), so the probability-flow ODE's law at t0 is
that Gaussian exactly (identities in float64; statistics within 5 standard errors).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as pdist
import pytest
import torch
from pyro import poutine
from pyro.infer.importance import vectorized_importance_weights
from torch import nn
from torch.distributions import Independent, Normal

from sdeflow import (
    VPSDE,
    ForwardSDE,
    ProbabilityFlowDistribution,
    ReverseSDE,
    SDESamplerDistribution,
    StandardNormal,
    TimeGrid,
    probability_flow,
)
from sdeflow.distributions import MODEL_LAWS
from sdeflow.training import DiffFlowModel, FlowModel, ScoreModel
from tests.conftest import make_field

F64 = torch.float64
S, T0, T1 = 0.5, 1e-3, 1.0
SDE = VPSDE()


def exact_score(x, t):
    m, sigma = SDE.marginal_coefs(torch.as_tensor(t, dtype=x.dtype))
    return -x / (m**2 * S**2 + sigma**2)


def marginal_var(t: float) -> float:
    m, sigma = SDE.marginal_coefs(torch.tensor(t, dtype=F64))
    return float(m**2 * S**2 + sigma**2)


def marginal(t: float, d: int = 2) -> Independent:
    return Independent(Normal(torch.zeros(d, dtype=F64),
                              math.sqrt(marginal_var(t)) * torch.ones(d, dtype=F64)), 1)


def gaussian_model(**solver) -> ProbabilityFlowDistribution:
    solver.setdefault("rtol", 1e-9)
    solver.setdefault("atol", 1e-9)
    return ProbabilityFlowDistribution(probability_flow(SDE, exact_score), marginal(T1),
                                       TimeGrid.uniform(1, T0, T1, dtype=F64), **solver)


def check_moments(x: torch.Tensor, var: float) -> None:
    """Mean 0 and covariance var * I within 5 standard errors (x: (n, d))."""
    n, d = x.shape
    mean, cov = x.mean(0), torch.cov(x.T)
    assert (mean.abs() < 5 * math.sqrt(var / n)).all(), mean
    diag_se = var * math.sqrt(2 / (n - 1))
    assert ((cov.diagonal() - var).abs() < 5 * diag_se).all(), (cov, var)
    off = cov - torch.diag(cov.diagonal())
    assert (off.abs() < 5 * var / math.sqrt(n)).all(), cov


# -- the law of the probability-flow ODE ------------------------------------------------------
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_log_prob_is_the_gaussian_marginal(trace):
    d = gaussian_model(trace=trace)  # J = c I: Rademacher probes give the trace exactly
    x = S * torch.randn(5, 2, dtype=F64)
    expected = marginal(T0).log_prob(x)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=0, atol=1e-7)
    # differentiable in x: the score of the marginal
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(d.log_prob(x).sum(), x)
    torch.testing.assert_close(grad, -x.detach() / marginal_var(T0), rtol=0, atol=1e-7)


def test_shapes_expand_and_batched_log_prob():
    d = gaussian_model()
    assert d.batch_shape == () and d.event_shape == (2,)
    e = d.expand((3,))
    assert e.batch_shape == (3,) and e.event_shape == (2,)
    x = e.sample((4,))
    assert x.shape == (4, 3, 2) == e.shape((4,))
    lp = e.log_prob(x)
    assert lp.shape == (4, 3)
    torch.testing.assert_close(lp, marginal(T0).log_prob(x), rtol=0, atol=1e-7)
    # a value that broadcasts against the batch shape
    assert e.log_prob(x[:, :1]).shape == (4, 3)
    assert d.sample(5).shape == (5, 2) and d.rsample().shape == (2,)


def test_sample_has_the_marginal_moments():
    d = gaussian_model(rtol=1e-6, atol=1e-6)
    x = d.sample((4000,), generator=torch.Generator().manual_seed(1))
    check_moments(x, marginal_var(T0))


def test_generator_makes_draws_reproducible_and_leaves_the_global_rng():
    d = gaussian_model(rtol=1e-6, atol=1e-6)
    state = torch.get_rng_state()
    a = d.sample((3,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), state)
    b = d.sample((3,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


def test_samples_and_density_agree_on_a_nonlinear_model():
    """The ODE pushes prior draws to x; log_prob(x) is the prior's density at the pull-back plus
    the trace integral: run it on a nonlinear field and compare the round trip."""
    drift, score = make_field("mlp", 2, 3), make_field("mlp", 2, 4)
    ode = probability_flow(ForwardSDE(drift, 0.7), score)
    prior = StandardNormal((2,), dtype=F64)
    grid = TimeGrid.uniform(4, 0.0, 1.0, dtype=F64)
    d = ProbabilityFlowDistribution(ode, prior, grid, rtol=1e-10, atol=1e-10)
    torch.manual_seed(0)
    x_final = prior().sample((6,))
    x0 = d._solve_down(x_final)
    from sdeflow import ode_log_likelihood

    res = ode_log_likelihood(ode, prior, grid, x0, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(res.x_final, x_final, rtol=0, atol=1e-7)
    torch.testing.assert_close(d.log_prob(x0), res.log_prob, rtol=0, atol=1e-9)


class _LearnedPrior(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.tensor([0.3, -0.2], dtype=F64))

    def forward(self):
        return Independent(Normal(self.loc, torch.ones(2, dtype=F64)), 1)


def _fd_check(fn, params, eps=1e-6, rtol=1e-5):
    """Autograd gradient of the scalar fn() against central differences, entry by entry."""
    grads = torch.autograd.grad(fn(), params)
    for p, g in zip(params, grads):
        flat, gflat = p.data.view(-1), g.reshape(-1)
        for j in range(min(3, flat.numel())):
            old = float(flat[j])
            flat[j] = old + eps
            with torch.no_grad():
                up = float(fn())
            flat[j] = old - eps
            with torch.no_grad():
                down = float(fn())
            flat[j] = old
            fd = (up - down) / (2 * eps)
            assert abs(float(gflat[j]) - fd) <= rtol * max(1.0, abs(fd)), (p.shape, j, gflat[j], fd)


def _small_model():
    drift, score = make_field("mlp", 2, 11), make_field("mlp", 2, 12)
    rev = ReverseSDE(ForwardSDE(drift, 0.6), score)
    return drift, score, rev, TimeGrid.uniform(4, 0.05, 0.6, dtype=F64)


@pytest.mark.parametrize("law", ["probability_flow", "sde_sampler"])
def test_rsample_gradients_equal_finite_differences(law):
    drift, score, rev, grid = _small_model()
    prior = _LearnedPrior()
    if law == "probability_flow":  # a fixed-step solver: the map is smooth in the parameters
        d = ProbabilityFlowDistribution(rev, prior, grid, method="rk4")
    else:
        d = SDESamplerDistribution(rev, prior, grid)
    weights = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))

    def fn():
        torch.manual_seed(3)  # the same prior draw and step noises at every call
        return (weights * torch.sin(d.rsample((5,)))).sum()

    params = [drift.w1, drift.b1, score.w2, score.wt, prior.loc]
    _fd_check(fn, params)


def test_log_prob_gradients_equal_finite_differences():
    drift, score, rev, grid = _small_model()
    d = ProbabilityFlowDistribution(rev, StandardNormal((2,), dtype=F64), grid, method="rk4")
    x = torch.randn(3, 2, dtype=F64, generator=torch.Generator().manual_seed(1),
                    requires_grad=True)
    _fd_check(lambda: d.log_prob(x).sum(), [drift.w1, score.b1, x])


# -- samples with their log-density in one solve (issue 21) ----------------------------------
@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_sample_and_log_prob_is_the_gaussian_density(trace):
    """On the linear-Gaussian process with its exact score the law at t0 is N(0, v(t0) I): the
    one-pass density of each sample is that Gaussian's (J = c I: Rademacher probes are exact)."""
    d = gaussian_model(trace=trace).expand((3,))
    x, log_p = d.sample_and_log_prob((4,), generator=torch.Generator().manual_seed(0))
    assert x.shape == (4, 3, 2) and log_p.shape == (4, 3)
    torch.testing.assert_close(log_p, marginal(T0).log_prob(x), rtol=0, atol=1e-7)


@pytest.mark.parametrize("path", ["vp", "linear"])
def test_sample_and_log_prob_on_affine_paths_with_exact_scores(path):
    """Data N(mu, s^2 I) on an affine path: the marginal is N(alpha mu, (alpha^2 s^2 + sigma^2)
    I); with that as the prior at t1 and its exact score, the ODE's law at t0 is the data's."""
    from sdeflow import LinearPath

    process, t0, t1 = (SDE, T0, T1) if path == "vp" else (LinearPath(), 0.0, 0.9)
    mu = torch.tensor([0.7, -1.2], dtype=F64)

    def moments(t):
        alpha, sigma, _, _ = process.path_coefficients(torch.as_tensor(t, dtype=F64))
        return alpha * mu, alpha**2 * S**2 + sigma**2

    def score(x, t):
        mean, var = moments(t)
        return -(x - mean) / (var[:, None] if var.dim() else var)

    def gaussian(t):
        mean, var = moments(t)
        return Independent(Normal(mean, var.sqrt() * torch.ones(2, dtype=F64)), 1)

    d = ProbabilityFlowDistribution(probability_flow(process, score), gaussian(t1),
                                    TimeGrid.uniform(1, t0, t1, dtype=F64), rtol=1e-10,
                                    atol=1e-10)
    x, log_p = d.sample_and_log_prob((6,), generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(log_p, gaussian(t0).log_prob(x), rtol=0, atol=1e-7)
    if path == "linear":  # t0 = 0: the data law itself
        data = Independent(Normal(mu, S * torch.ones(2, dtype=F64)), 1)
        torch.testing.assert_close(log_p, data.log_prob(x), rtol=0, atol=1e-7)


def test_sample_and_log_prob_equals_log_prob_of_the_same_samples():
    """A nonlinear model: the downward solve's density of each sample equals log_prob (the
    upward solve) of it to the solver's tolerance."""
    drift, score = make_field("mlp", 2, 3), make_field("mlp", 2, 4)
    ode = probability_flow(ForwardSDE(drift, 0.7), score)
    d = ProbabilityFlowDistribution(ode, StandardNormal((2,), dtype=F64),
                                    TimeGrid.uniform(4, 0.0, 1.0, dtype=F64), trace="exact",
                                    rtol=1e-10, atol=1e-10)
    x, log_p = d.sample_and_log_prob((5,), generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(log_p, d.log_prob(x), rtol=0, atol=1e-7)
    # the same draw as sample(): one generator stream for the prior
    torch.testing.assert_close(x, d.sample((5,), generator=torch.Generator().manual_seed(2)),
                               rtol=0, atol=1e-8)


def test_rsample_and_log_prob_is_pathwise_and_matches_finite_differences():
    drift, score, rev, grid = _small_model()
    prior = _LearnedPrior()
    d = ProbabilityFlowDistribution(rev, prior, grid, method="rk4")
    weights = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(0))

    def fn():
        torch.manual_seed(3)  # the same prior draw at every call
        x, log_p = d.rsample_and_log_prob((5,))
        return (weights * torch.sin(x)).sum() + log_p.sum()

    _fd_check(fn, [drift.w1, drift.b1, score.w2, score.wt, prior.loc])
    with torch.no_grad():  # no graph under no_grad
        x, log_p = d.rsample_and_log_prob((2,))
    assert not x.requires_grad and not log_p.requires_grad
    torch.manual_seed(4)
    x, log_p = d.rsample_and_log_prob((3,))
    torch.testing.assert_close(log_p.detach(), d.log_prob(x.detach()), rtol=0, atol=1e-5)


# -- the law of the SDE sampler --------------------------------------------------------------
def test_sde_sampler_on_a_fine_grid_has_the_marginal_moments():
    rev = ReverseSDE(SDE, exact_score, lam=1.0)
    d = SDESamplerDistribution(rev, marginal(T1), TimeGrid.uniform(400, T0, T1, dtype=F64))
    x = d.sample((4000,), generator=torch.Generator().manual_seed(2))
    check_moments(x, marginal_var(T0))


def test_sde_sampler_log_prob_only_through_a_named_surrogate():
    drift, score, rev, grid = _small_model()
    prior = StandardNormal((2,), dtype=F64)
    x = torch.randn(4, 2, dtype=F64)
    with pytest.raises(NotImplementedError, match="log_prob_surrogate"):
        SDESamplerDistribution(rev, prior, grid).log_prob(x)
    ode_lp = ProbabilityFlowDistribution(rev, prior, grid).log_prob(x)
    d = SDESamplerDistribution(rev, prior, grid, log_prob_surrogate="probability_flow")
    torch.testing.assert_close(d.log_prob(x), ode_lp)
    with pytest.raises(ValueError, match="denoise=False"):
        SDESamplerDistribution(rev, prior, grid, log_prob_surrogate="elbo")
    d = SDESamplerDistribution(rev, prior, grid, denoise=False, log_prob_surrogate="elbo")
    assert d.log_prob(x).shape == (4,)
    assert d.expand((2,)).log_prob(x.reshape(2, 2, 2)).shape == (2, 2)


def _chain_gap(n_steps: int) -> tuple[float, float]:
    """E[log p_B(x0)] - E[ELBO] at a fixed x0 and its standard error, for the Euler-Maruyama
    chain of the exact linear-Gaussian reverse process on n_steps: p_B(x0) is Gaussian, its
    variance propagated through x_i = (1 - a_i dt_i) x_{i+1} + g_{i+1} sqrt(dt_i) delta_i."""
    rev = ReverseSDE(SDE, exact_score, lam=1.0)
    grid = TimeGrid.uniform(n_steps, T0, T1, dtype=F64)
    d = SDESamplerDistribution(rev, marginal(T1), grid, denoise=False, log_prob_surrogate="elbo")
    var = marginal_var(T1)
    for i in range(n_steps - 1, -1, -1):
        a = float(rev.drift(torch.ones(1, 1, dtype=F64), grid.ts[i + 1]).squeeze())  # b = a x
        g = float(rev.diffusion_scale(grid.ts[i + 1:i + 2]))
        dt = float(grid.dts[i])
        var = (1 - a * dt) ** 2 * var + g**2 * dt
    x = torch.tensor([[0.3, -0.1]], dtype=F64).expand(2000, 2)
    log_p = -(x[0] ** 2).sum() / (2 * var) - math.log(2 * math.pi * var)
    elbo = d.log_prob(x)
    return float(log_p - elbo.mean()), float(elbo.std()) / math.sqrt(len(elbo))


def test_elbo_surrogate_bounds_the_density_of_the_chain_it_samples():
    torch.manual_seed(0)
    coarse, se_coarse = _chain_gap(8)
    fine, se_fine = _chain_gap(64)
    assert coarse > -5 * se_coarse and fine > -5 * se_fine  # E[ELBO] <= log p_B(x0)
    assert fine < coarse - 5 * (se_coarse + se_fine)  # and tighter on a finer grid


# -- checks -----------------------------------------------------------------------------------
def test_bad_values_are_named():
    d = gaussian_model()
    with pytest.raises(ValueError, match="value must have shape"):
        d.log_prob(torch.zeros(3, 5, dtype=F64))
    with pytest.raises(ValueError, match="value must be finite"):
        d.log_prob(torch.tensor([[float("nan"), 0.0]], dtype=F64))
    with pytest.raises(TypeError, match="value has dtype torch.float32"):
        d.log_prob(torch.zeros(3, 2))
    with pytest.raises(TypeError, match="value must be a floating-point tensor"):
        d.log_prob(torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="trace must be one of"):
        gaussian_model(trace="fast")
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        ProbabilityFlowDistribution(probability_flow(SDE, exact_score), marginal(T1), [0., 1.])
    with pytest.raises(TypeError, match="prior has dtype torch.float32"):
        ProbabilityFlowDistribution(probability_flow(SDE, exact_score), StandardNormal((2,)),
                                    TimeGrid.uniform(1, T0, T1, dtype=F64))
    with pytest.raises(ValueError, match="log_prob_surrogate must be"):
        SDESamplerDistribution(ReverseSDE(SDE, exact_score), marginal(T1),
                               TimeGrid.uniform(3, T0, T1, dtype=F64), log_prob_surrogate="ode")


def test_a_process_with_noise_and_no_probability_flow_is_refused():
    d = ProbabilityFlowDistribution(ForwardSDE(lambda x, t: -x, 0.5),
                                    StandardNormal((2,), dtype=F64),
                                    TimeGrid.uniform(2, 0.0, 1.0, dtype=F64))
    with pytest.raises(ValueError, match="ode must have zero diffusion"):
        d.sample()


# -- trained models -----------------------------------------------------------------------------
def test_models_give_their_distributions():
    from sdeflow.nets import FourierMLP

    torch.manual_seed(0)
    grid = TimeGrid.power(4, 1e-3, 0.05, 0.9)
    diffflow = DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 0.2, grid,
                             StandardNormal((2,)))
    score = ScoreModel(FourierMLP(2, 8, 1), VPSDE(), (2,), sample_steps=5)
    flow = FlowModel(FourierMLP(2, 8, 1), grid, StandardNormal((2,)))
    x = torch.randn(3, 2)
    for model in (diffflow, score, flow):
        d = model.distribution()
        assert isinstance(d, ProbabilityFlowDistribution)
        with torch.no_grad():
            torch.testing.assert_close(d.log_prob(x), model.log_likelihood(x))
        assert d.sample((4,)).shape == (4, 2)
    for model in (diffflow, score):
        d = model.distribution("sde_sampler", lam=0.5)
        assert isinstance(d, SDESamplerDistribution) and d.reverse.lam == 0.5
        assert d.sample((4,)).shape == (4, 2)
    with pytest.raises(ValueError, match="FlowModel"):
        flow.distribution("sde_sampler")
    with pytest.raises(ValueError, match=str(MODEL_LAWS[0])):
        diffflow.distribution("ode")


# -- inside Pyro programs -----------------------------------------------------------------------
def test_in_a_plate_under_trace_and_condition():
    d = gaussian_model(rtol=1e-7, atol=1e-7)

    def model(x=None):
        with pyro.plate("data", 4):
            return pyro.sample("x", d, obs=x)

    tr = poutine.trace(model).get_trace()
    assert tr.nodes["x"]["value"].shape == (4, 2)
    tr.compute_log_prob()
    assert tr.nodes["x"]["log_prob"].shape == (4,)
    # observed, through poutine.condition: the site's log-density enters the trace
    x = S * torch.randn(4, 2, dtype=F64)
    tr = poutine.trace(poutine.condition(model, data={"x": x})).get_trace()
    assert tr.nodes["x"]["is_observed"] and torch.equal(tr.nodes["x"]["value"], x)
    torch.testing.assert_close(tr.log_prob_sum(), marginal(T0).log_prob(x).sum(), rtol=0,
                               atol=1e-6)
    # sample_shape through a second plate
    with pyro.plate("outer", 3, dim=-2):
        tr = poutine.trace(model).get_trace()
    assert tr.nodes["x"]["value"].shape == (3, 4, 2)


def _observation():
    A = torch.tensor([[1.0, 0.5], [0.0, 1.5]], dtype=F64)
    return A, 0.3, torch.tensor([0.4, -0.3], dtype=F64)


def _inverse_problem(d, A, sigma):
    def model(y):
        x = pyro.sample("x", d)
        pyro.sample("y", pdist.Normal(x @ A.T, sigma).to_event(1), obs=y)
        return x

    return model


def test_latent_site_in_importance():
    A, sigma, y = _observation()
    model = _inverse_problem(gaussian_model(rtol=1e-6, atol=1e-6), A, sigma)
    posterior = pyro.infer.Importance(model, num_samples=3).run(y)
    assert len(posterior.log_weights) == 3
    marginal_x = pyro.infer.EmpiricalMarginal(posterior, "x")
    assert marginal_x.sample().shape == (2,)


def test_posterior_of_a_linear_gaussian_prior_matches_the_closed_form():
    """Prior x ~ the model (exactly N(0, v I)), y | x ~ N(A x, sigma^2 I): Pyro's vectorized
    importance sampling through the distribution against the closed-form posterior."""
    A, sigma, y = _observation()
    v = marginal_var(T0)
    model = _inverse_problem(gaussian_model(rtol=1e-6, atol=1e-6), A, sigma)
    proposal = poutine.block(model, hide_types=["observe"])  # the prior, as Importance does
    n = 6000
    torch.manual_seed(5)
    with torch.no_grad():
        log_w, _, guide_trace = vectorized_importance_weights(
            model, proposal, y, num_samples=n, max_plate_nesting=0)
    x = guide_trace.nodes["x"]["value"]
    w = torch.softmax(log_w, 0)
    ess = float(1 / (w**2).sum())
    assert ess > 500
    cov_post = torch.linalg.inv(torch.eye(2, dtype=F64) / v + A.T @ A / sigma**2)
    mean_post = cov_post @ A.T @ y / sigma**2
    mean = w @ x
    centred = x - mean
    cov = (w[:, None] * centred).T @ centred
    se_mean = (cov_post.diagonal() / ess).sqrt()
    assert ((mean - mean_post).abs() < 5 * se_mean).all(), (mean, mean_post, se_mean)
    sd = cov_post.diagonal().sqrt()
    se_cov = torch.outer(sd, sd) * math.sqrt(2 / ess)
    assert ((cov - cov_post).abs() < 5 * se_cov).all(), (cov, cov_post)

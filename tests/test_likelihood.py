"""Exact ODE likelihood against closed forms; the ELBO bound; Hutchinson; bits/dim; bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

from sdeflow import (
    VPSDE,
    DiagonalNormal,
    DiffFlowObjective,
    ForwardSDE,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
    probability_flow,
)
from sdeflow.likelihood import (
    LikelihoodResult,
    bits_per_dim,
    elbo_bits_per_dim,
    ode_log_likelihood,
)

F64 = torch.float64

def _span(t0: float, t1: float, like: torch.Tensor) -> TimeGrid:
    """The one-step grid [t0, t1] in ``like``'s dtype (the likelihood's time description)."""
    return TimeGrid(torch.tensor([t0, t1], dtype=like.dtype, device=like.device))



def _gaussian_setup(seed: int = 0, d: int = 2):
    """VP SDE on Gaussian data x0 ~ N(mu, diag(sigma^2)) and its exact marginal score."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(d, generator=g, dtype=F64)
    sigma = 0.3 + torch.rand(d, generator=g, dtype=F64)
    sde = VPSDE(beta_min=0.1, beta_max=8.0)

    def marginal(t):
        m, s = sde.marginal_coefs(torch.as_tensor(t, dtype=F64))
        return m * mu, (m**2 * sigma**2 + s**2)  # mean, variance of x_t

    def score(x, t):
        mean, var = marginal(t.reshape(-1)[0] if t.dim() else t)
        return -(x - mean) / var

    mean_T, var_T = marginal(sde.T)
    prior = DiagonalNormal(mean_T, var_T.sqrt())
    return sde, score, prior, mu, sigma


def _data_log_prob(x, mu, sigma):
    return Independent(Normal(mu, sigma), 1).log_prob(x)


# -- closed forms ---------------------------------------------------------------------------------

def test_gaussian_under_vp_sde_equals_exact_density():
    sde, score, prior, mu, sigma = _gaussian_setup()
    x = mu + sigma * torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    res = ode_log_likelihood(
        probability_flow(sde, score), prior, _span(0.0, sde.T, x), x, rtol=1e-8, atol=1e-8
    )
    assert isinstance(res, LikelihoodResult)
    assert res.log_prob.shape == res.prior_log_prob.shape == res.delta_log_prob.shape == (64,)
    assert res.x_final.shape == x.shape and res.nfe > 0
    torch.testing.assert_close(res.log_prob, _data_log_prob(x, mu, sigma), atol=1e-4, rtol=0)
    torch.testing.assert_close(res.log_prob, res.prior_log_prob + res.delta_log_prob)
    torch.testing.assert_close(res.nll, -res.log_prob)


def _linear_flow(d: int, seed: int, shape=None):
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(d, d, generator=g, dtype=F64) * 0.7

    def drift(x, t):
        return (x.reshape(x.shape[0], d) @ A.T).reshape(x.shape)

    return A, ForwardSDE(drift, 0.0)


@pytest.mark.parametrize("state", [(3,), (2, 3)])
@pytest.mark.parametrize("trace", ["exact", "auto"])
def test_linear_flow_closed_form(state, trace):
    d, T = math.prod(state), 0.8
    A, flow = _linear_flow(d, seed=2)
    x = torch.randn((5, *state), generator=torch.Generator().manual_seed(3), dtype=F64)
    prior = StandardNormal(state, dtype=F64)
    res = ode_log_likelihood(
        flow, prior, _span(0.1, 0.1 + T, x), x, trace=trace, rtol=1e-9, atol=1e-9
    )
    x_T = (x.reshape(5, d) @ torch.linalg.matrix_exp(A * T).T).reshape(x.shape)
    torch.testing.assert_close(res.x_final, x_T, atol=1e-7, rtol=0)
    torch.testing.assert_close(res.delta_log_prob, (T * A.trace()).expand(5), atol=1e-7, rtol=0)
    expected = prior().log_prob(x_T) + T * A.trace()
    torch.testing.assert_close(res.log_prob, expected, atol=1e-7, rtol=0)


def test_float32_and_results_detached_by_default():
    A, _ = _linear_flow(2, seed=4)
    w = nn.Parameter(torch.tensor(0.5))
    A32 = A.float()
    scaled = ForwardSDE(lambda x, t: w * (x @ A32.T), 0.0)
    x = torch.randn(7, 2)
    res = ode_log_likelihood(scaled, StandardNormal((2,)), _span(0.0, 1.0, x), x)
    assert res.log_prob.dtype == torch.float32 and not res.log_prob.requires_grad
    assert not x.requires_grad
    expected = (
        StandardNormal((2,))().log_prob(x @ torch.linalg.matrix_exp(0.5 * A).T.float())
        + 0.5 * A.trace().float()
    )
    torch.testing.assert_close(res.log_prob, expected, atol=1e-4, rtol=0)


def test_create_graph_gives_the_closed_form_gradient():
    d, T = 2, 0.7
    A0 = torch.randn(d, d, generator=torch.Generator().manual_seed(5), dtype=F64) * 0.5
    A = nn.Parameter(A0.clone())
    flow = ForwardSDE(lambda x, t: x @ A.T, 0.0)
    x = torch.randn(6, d, generator=torch.Generator().manual_seed(6), dtype=F64)
    prior = StandardNormal((d,), dtype=F64)
    res = ode_log_likelihood(
        flow, prior, _span(0.0, T, x), x, create_graph=True, rtol=1e-10, atol=1e-10
    )
    (grad,) = torch.autograd.grad(res.log_prob.sum(), A)
    B = A0.clone().requires_grad_(True)
    exact = prior().log_prob(x @ torch.linalg.matrix_exp(B * T).T) + T * B.trace()
    (grad_exact,) = torch.autograd.grad(exact.sum(), B)
    torch.testing.assert_close(grad, grad_exact, atol=1e-6, rtol=1e-6)


# -- the ELBO bound -------------------------------------------------------------------------------


def _backward_chain_nll(x0, sde, mu, sigma, grid, prior):
    r"""Exact -log p_B(x0) of the Euler-Maruyama backward chain with the linear exact score:

    x_i = x_{i+1} - [f - g^2 s](x_{i+1}, t_{i+1}) dt_i + g_{i+1} sqrt(dt_i) delta, which is
    x_i = (1 - c dt) x_{i+1} - e dt + noise with f - g^2 s = c x + e, so each coordinate's
    marginal is Gaussian with (M, V) from the recursion below.
    """
    M, V = prior.loc.clone(), prior.scale.pow(2)
    for i in range(grid.n_steps - 1, -1, -1):
        t, dt = grid.ts[i + 1], grid.dts[i]
        m, s = sde.marginal_coefs(t)
        var = m**2 * sigma**2 + s**2
        beta = sde.beta(t)
        c = -0.5 * beta + beta / var
        e = -beta * m * mu / var
        M = (1 - c * dt) * M - e * dt
        V = (1 - c * dt) ** 2 * V + beta * dt
    return -_data_log_prob(x0, M, V.sqrt())


def test_elbo_bounds_the_backward_chain_nll_and_the_exact_nll():
    # VP's g(t) = sqrt(beta(t)) varies 9-fold, so the d log(g_{i+1}/g_i) terms add up to
    # d log(g_N / g_0) = 2.2 nats: a sign slip there or in any other term breaks the bound.
    sde, score, prior, mu, sigma = _gaussian_setup(seed=7)
    gen = torch.Generator().manual_seed(8)
    # (1) per point: E_tau[nelbo(x0)] >= -log p_B(x0) of the discretized chain; with the exact
    # score the continuous-time gap KL(p_F(tau|x0) || p_B(tau|x0)) is zero, so the gap must
    # shrink as the grid is refined.
    points = mu + sigma * torch.randn(3, 2, generator=gen, dtype=F64)
    reps, gaps = 2000, []
    for n_steps in (40, 160):
        grid = TimeGrid.uniform(n_steps, 0.0, sde.T, dtype=F64)
        objective = DiffFlowObjective(ReverseSDE(sde, score), prior, grid)
        terms = objective(points.repeat_interleave(reps, 0), generator=gen)
        nelbo = terms.nelbo.reshape(3, reps)
        gap = nelbo.mean(1) - _backward_chain_nll(points, sde, mu, sigma, grid, prior)
        se = nelbo.std(1) / math.sqrt(reps)
        assert (gap >= -4 * se).all(), (n_steps, gap, se)
        gaps.append(gap)
    assert (gaps[1] < gaps[0] / 2).all(), gaps
    # (2) over the data: E_q[nelbo] >= E_q[-log p_B] >= E_q[-log q] = the exact (ODE) NLL
    x = mu + sigma * torch.randn(2000, 2, generator=gen, dtype=F64)
    nelbo = objective(x, generator=gen).nelbo
    ode_nll = ode_log_likelihood(
        probability_flow(sde, score), prior, _span(0.0, sde.T, x), x, rtol=1e-7, atol=1e-7
    ).nll
    torch.testing.assert_close(ode_nll, -_data_log_prob(x, mu, sigma), atol=1e-4, rtol=0)
    gap = nelbo - ode_nll
    assert gap.mean() >= -4 * gap.std() / math.sqrt(gap.numel()), gap.mean()
    torch.testing.assert_close(elbo_bits_per_dim(terms), terms.nelbo / (2 * math.log(2)))


# -- Hutchinson -----------------------------------------------------------------------------------


class _TanhField(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(d + 1, 16), nn.Tanh(), nn.Linear(16, d)).double()

    def forward(self, x, t):
        tt = torch.as_tensor(t, dtype=x.dtype).expand(x.shape[0], 1)
        return self.net(torch.cat([x.reshape(x.shape[0], -1), tt], 1)).reshape(x.shape)


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(probe):
    d = 3
    flow = ForwardSDE(_TanhField(d), 0.0)
    prior = StandardNormal((d,), dtype=F64)
    x = torch.randn(2, d, generator=torch.Generator().manual_seed(9), dtype=F64)
    exact = ode_log_likelihood(flow, prior, _span(0.0, 1.0, x), x, trace="exact")
    reps = 1000
    est = ode_log_likelihood(
        flow,
        prior,
        _span(0.0, 1.0, x),
        x.repeat_interleave(reps, 0),
        trace="hutchinson",
        probe=probe,
        generator=torch.Generator().manual_seed(10),
    )
    torch.testing.assert_close(est.x_final[::reps], exact.x_final, atol=1e-4, rtol=0)
    delta = est.delta_log_prob.reshape(2, reps)
    mean, se = delta.mean(1), delta.std(1) / math.sqrt(reps)
    assert (se > 0).all()  # the estimator is random: probes differ across samples
    assert ((mean - exact.delta_log_prob).abs() < 4 * se).all(), (mean, se, exact.delta_log_prob)
    # more probes per sample: smaller spread, same mean
    est4 = ode_log_likelihood(
        flow,
        prior,
        _span(0.0, 1.0, x),
        x.repeat_interleave(reps, 0),
        trace="hutchinson",
        n_probes=4,
        probe=probe,
        generator=torch.Generator().manual_seed(11),
    )
    assert est4.delta_log_prob.reshape(2, reps).std(1).lt(delta.std(1)).all()


def test_hutchinson_is_seeded_and_auto_switches():
    flow = ForwardSDE(_TanhField(40), 0.0)
    prior = StandardNormal((40,), dtype=F64)
    x = torch.randn(3, 40, generator=torch.Generator().manual_seed(12), dtype=F64)
    a, b = (
        ode_log_likelihood(
            flow,
            prior,
            _span(0.0, 0.5, x),
            x,
            trace=tr,
            generator=torch.Generator().manual_seed(13),
            rtol=1e-3,
            atol=1e-3,
        )
        for tr in ("auto", "hutchinson")
    )
    torch.testing.assert_close(a.log_prob, b.log_prob, rtol=0, atol=0)


# -- bits per dimension ---------------------------------------------------------------------------


def test_bits_per_dim_uniform_8bit_is_8():
    d = 3 * 4 * 4
    nll_uniform = torch.full((5,), d * math.log(2.0), dtype=F64)  # p = 2^-d on [-1, 1]^d
    torch.testing.assert_close(
        bits_per_dim(nll_uniform, d, levels=256), torch.full((5,), 8.0, dtype=F64)
    )
    torch.testing.assert_close(bits_per_dim(nll_uniform, d), torch.ones(5, dtype=F64))


def test_bits_per_dim_equals_discrete_entropy_for_cellwise_constant_density():
    # A density constant on each level's cell, p_x = q_k / (2/L) in the cell of level k, makes
    # the dequantization bound an equality: bpd = -log2 P(k) / D with P(k) = prod q_k.
    L, D, n = 5, 3, 20
    g = torch.Generator().manual_seed(14)
    q = torch.rand(L, generator=g, dtype=F64) + 0.1
    q = q / q.sum()
    k = torch.randint(0, L, (n, D), generator=g)
    u = torch.rand(n, D, generator=g, dtype=F64)
    x = (k + u) / L * 2 - 1
    level = ((x + 1) / 2 * L).floor().long()  # the model only sees x
    nll = -(q[level] * L / 2).log().sum(-1)
    expected = -q[k].log2().sum(-1) / D
    torch.testing.assert_close(bits_per_dim(nll, D, levels=L), expected)


# -- bad input ------------------------------------------------------------------------------------


def _ok_args():
    flow = ForwardSDE(lambda x, t: -x, 0.0)
    return flow, torch.zeros(2, 2), StandardNormal((2,))


@pytest.mark.parametrize(
    "change, match",
    [
        (
            dict(ode=ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x)),
            "probability_flow",
        ),
        (
            dict(ode=ReverseSDE(ForwardSDE(lambda x, t: -x, 1.0), lambda x, t: -x, lam=0.5)),
            "with_lam",
        ),
        (dict(ode=ForwardSDE(lambda x, t: -x, 0.2)), "ForwardSDE"),
        (dict(ode=VPSDE()), "zero diffusion"),
        (dict(x0=torch.zeros(2, 3)), "x0"),
        (dict(x0=torch.zeros(2)), "x0"),
        (dict(x0=torch.zeros(0, 2)), "x0"),
        (dict(x0=torch.full((2, 2), float("nan"))), "x0"),
        (dict(trace="approx"), "trace"),
        (dict(n_probes=0), "n_probes"),
        (dict(probe="uniform"), "probe"),
        (dict(rtol=0.0), "rtol"),
    ],
)
def test_bad_input_raises_value_error(change, match):
    flow, x0, prior = _ok_args()
    kw = dict(ode=flow, x0=x0, prior=prior)
    kw.update(change)
    ode, x0, prior = kw.pop("ode"), kw.pop("x0"), kw.pop("prior")
    with pytest.raises(ValueError, match=match):
        ode_log_likelihood(ode, prior, TimeGrid.uniform(1, 0.0, 1.0), x0, **kw)


def test_no_grad_works_and_inference_mode_is_refused():
    flow, x0, prior = _ok_args()
    with torch.no_grad():
        res = ode_log_likelihood(flow, prior, _span(0.0, 1.0, x0), x0)
    torch.testing.assert_close(res.delta_log_prob, torch.full((2,), -2.0), atol=1e-5, rtol=0)
    with torch.inference_mode(), pytest.raises(RuntimeError, match="inference_mode"):
        ode_log_likelihood(flow, prior, _span(0.0, 1.0, x0), x0)


def test_bad_types_raise_type_error():
    flow, x0, prior = _ok_args()
    with pytest.raises(TypeError, match="ode"):
        ode_log_likelihood(lambda x, t: x, prior, _span(0.0, 1.0, x0), x0)
    with pytest.raises(TypeError, match="grid must be a TimeGrid"):
        ode_log_likelihood(flow, prior, (0.0, 1.0), x0)
    with pytest.raises(TypeError, match="x0"):
        ode_log_likelihood(flow, prior, _span(0.0, 1.0, x0), torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(TypeError, match="x0"):
        ode_log_likelihood(flow, prior, _span(0.0, 1.0, x0), torch.zeros(2, 2, dtype=F64))
    with pytest.raises(TypeError, match="terms"):
        elbo_bits_per_dim(torch.zeros(3))


@pytest.mark.parametrize("kw, match", [(dict(dim=0), "dim"), (dict(dim=2, levels=1), "levels")])
def test_bits_per_dim_bad_input(kw, match):
    with pytest.raises(ValueError, match=match):
        bits_per_dim(torch.zeros(2), **kw)

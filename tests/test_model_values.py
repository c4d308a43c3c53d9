"""Objectives and model families checked against closed forms, not only shapes (float64).

- Denoising score matching on Gaussian data with the exact score: the per-sample loss has the
  conditional mean ``d/2 m^2 s^2 / v(t)`` (sigma2 weighting) or ``d/2 g^2 m^2 s^2 / (sigma^2 v)``
  (likelihood weighting), ``v = m^2 s^2 + sigma^2``; a score with a flipped sign or a wrong scale
  is rejected by the same comparison.
- ``ScoreModel`` with the exact score: samples have the data's variance, the ODE likelihood is
  the exact marginal density.
- ``FlowModel`` with a linear drift ``f = -a x``: samples, exact NLL and the Euler flow's NLL in
  closed form.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sdeflow import (
    VPSDE,
    DenoisingScoreMatching,
    StandardNormal,
    TimeGrid,
    ode_log_likelihood,
    probability_flow,
)
from sdeflow.training import FlowModel, ScoreModel

F64 = torch.float64
D, S = 3, 0.6  # state size, data std


class ExactScore(nn.Module):
    """The score of N(0, s^2 I) data under a VP process: -x / (m(t)^2 s^2 + sigma(t)^2)."""

    def __init__(self, sde: VPSDE, s: float, sign: float = 1.0, scale: float = 1.0) -> None:
        super().__init__()
        self.sde, self.s, self.factor = sde, s, sign * scale

    def variance(self, t):
        m, sigma = self.sde.marginal_coefs(torch.as_tensor(t, dtype=F64))
        return m**2 * self.s**2 + sigma**2

    def forward(self, x, t):
        v = self.variance(t)
        v = v.reshape(-1, *([1] * (x.dim() - 1))) if v.dim() else v
        return -self.factor * x / v


def _dsm_check(score, weighting, n=40000, seed=0):
    """(mean of loss - mean of its closed-form conditional mean) in standard errors."""
    sde = VPSDE()
    dsm = DenoisingScoreMatching(sde, score, eps=1e-3, weighting=weighting)
    gen = torch.Generator().manual_seed(seed)
    x0 = S * torch.randn(n, D, generator=gen, dtype=F64)
    terms = dsm(x0, generator=gen)
    m, sigma = sde.marginal_coefs(terms.t)
    v = m**2 * S**2 + sigma**2
    expected = 0.5 * D * m**2 * S**2 / v
    if weighting == "likelihood":
        expected = expected * sde.diffusion_scale(terms.t) ** 2 / sigma**2
    diff = terms.values - expected
    return float(diff.mean() / (diff.std() / math.sqrt(n))), terms


@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_equals_closed_form_with_exact_score(weighting):
    z, terms = _dsm_check(ExactScore(VPSDE(), S), weighting)
    assert abs(z) < 4.5
    assert torch.equal(terms.loss, terms.values.mean()) and terms.per_sample is terms.values


@pytest.mark.parametrize("sign, scale", [(-1.0, 1.0), (1.0, 2.0), (1.0, 0.5)])
def test_dsm_closed_form_rejects_a_wrong_target(sign, scale):
    """The comparison has power: a sign or scale error in the score (equivalently, in DSM's
    target) moves the loss far outside the closed form's error bars."""
    z, _ = _dsm_check(ExactScore(VPSDE(), S, sign=sign, scale=scale), "sigma2")
    assert abs(z) > 20


def test_score_model_with_exact_score_samples_and_likelihood():
    sde = VPSDE()
    model = ScoreModel(ExactScore(sde, S), sde, (D,), eps=1e-3, sample_steps=1000).double()
    torch.manual_seed(0)
    n = 20000
    x = model.sample(n)
    # exact target at eps: N(0, v(eps)) with v(eps) = s^2 + O(eps); Euler bias O(1/steps)
    v_eps = float(ExactScore(sde, S).variance(1e-3))
    var = x.var(0)
    se = v_eps * math.sqrt(2 / (n - 1))
    assert torch.all((var - v_eps).abs() < 5 * se + 0.01 * v_eps), (var, v_eps)
    xs = S * torch.randn(64, D, dtype=F64, generator=torch.Generator().manual_seed(1))
    log_p = model.log_likelihood(xs, rtol=1e-9, atol=1e-9)
    res = ode_log_likelihood(probability_flow(sde, model.score_net), model.prior,
                             TimeGrid.uniform(1, 1e-3, sde.T, dtype=F64), xs, rtol=1e-9,
                             atol=1e-9)
    torch.testing.assert_close(log_p, res.log_prob, rtol=0, atol=1e-12)
    # the exact ODE maps the exact marginals onto each other: log p_eps(x) = log p_T(x_T) + int tr;
    # the model's prior N(0, I) differs from the exact p_T = N(0, v(T)) only in that first term
    exact = torch.distributions.Normal(0.0, math.sqrt(v_eps)).log_prob(xs).sum(-1)
    v_T = float(ExactScore(sde, S).variance(sde.T))
    prior_gap = (torch.distributions.Normal(0.0, 1.0).log_prob(res.x_final)
                 - torch.distributions.Normal(0.0, math.sqrt(v_T)).log_prob(res.x_final)).sum(-1)
    torch.testing.assert_close(log_p - prior_gap, exact, rtol=0, atol=1e-6)


class Shrink(nn.Module):
    def __init__(self, a: float) -> None:
        super().__init__()
        self.a = a

    def forward(self, x, t):
        return -self.a * x


def test_flow_model_in_closed_form():
    a, grid = 2.0, TimeGrid.power(8, 1e-3, 0.5, 0.9, dtype=F64)
    span = grid.t1 - grid.t0
    model = FlowModel(Shrink(a), grid, StandardNormal((D,), dtype=F64), jitter=False,
                      rtol=1e-9, atol=1e-9)
    x = torch.randn(16, D, dtype=F64, generator=torch.Generator().manual_seed(2))
    # continuous flow x_t = x_0 e^{-a (t - t0)}: log p(x0) = log N(x_T) - d a (t1 - t0)
    exact = StandardNormal((D,), dtype=F64)().log_prob(x * math.exp(-a * span)) - D * a * span
    torch.testing.assert_close(model.log_likelihood(x, rtol=1e-9, atol=1e-9), exact,
                               rtol=0, atol=1e-6)
    # Euler flow: x_{i+1} = (1 - a dt_i) x_i, log|det| = d log(1 - a dt_i)
    factors = 1 - a * grid.dts
    euler = (-StandardNormal((D,), dtype=F64)().log_prob(x * factors.prod())
             - D * factors.log().sum())
    torch.testing.assert_close(model.nelbo(x), euler, rtol=0, atol=1e-10)
    # sampling inverts the continuous flow: x_0 = x_T e^{a (t1 - t0)}
    torch.manual_seed(5)
    samples = model.sample(10)
    torch.manual_seed(5)
    x_T = StandardNormal((D,), dtype=F64)().sample((10,))
    torch.testing.assert_close(samples, x_T * math.exp(a * span), rtol=1e-6, atol=1e-7)

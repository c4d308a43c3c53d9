"""DiffFlow is variational inference in Pyro (issue 18): under the same noises, Pyro's
Trace_ELBO of DiffFlowVI's model and guide is DiffFlowObjective's negative ELBO summed over the
batch, value and gradients, in float64; SVI steps and objective steps leave the same parameters.
"""

from __future__ import annotations

import copy

import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import SVI, Trace_ELBO

from sdeflow import (
    VPSDE,
    DiffFlowObjective,
    DiffFlowVI,
    EulerMaruyama,
    ExponentialIntegrator,
    ForwardSDE,
    ForwardTrajectory,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    StochasticHeun,
    TimeGrid,
)
from tests.conftest import make_field

F64 = torch.float64


def diffflow(state=(2,), schedule=0.4, seed=0):
    d = 1
    for n in state:
        d *= n
    drift, score = make_field("mlp", d, seed), make_field("mlp", d, seed + 1)
    return ReverseSDE(ForwardSDE(drift, schedule), score)


def vp_score(state=(2,), seed=0):
    d = 1
    for n in state:
        d *= n
    return ReverseSDE(VPSDE(), make_field("mlp", d, seed))


CASES = {
    "em-constant-g": (lambda: diffflow(), EulerMaruyama(),
                      TimeGrid.uniform(5, 0.1, 0.6, dtype=F64)),
    "em-linear-g-image": (lambda: diffflow((1, 2, 2), LinearSchedule(0.3, 0.9, 0.0, 1.0), 3),
                          EulerMaruyama(), TimeGrid.power(4, 0.05, 0.8, 0.7, dtype=F64)),
    "exponential-vp": (lambda: vp_score(seed=5), ExponentialIntegrator(),
                       TimeGrid.uniform(4, 0.01, 1.0, dtype=F64)),
}


def _loss_pair(rev, discretizer, grid, x0, noise, condition=True):
    prior = StandardNormal(tuple(x0.shape[1:]), dtype=F64)
    vi = DiffFlowVI(rev, prior, grid, discretizer=discretizer)
    if condition:
        guide = poutine.condition(vi.guide, data=vi.noise_data(noise))
    else:  # replay a recorded guide trace, and give its noises to the objective
        recorded = poutine.trace(vi.guide).get_trace(x0)
        guide = poutine.replay(vi.guide, trace=recorded)
        noise = torch.stack([recorded.nodes[vi.noise_site(i)]["value"]
                             for i in range(grid.n_steps)])
    pyro_loss = Trace_ELBO().differentiable_loss(vi.model, guide, x0)
    objective = DiffFlowObjective(rev, prior, grid, discretizer=discretizer)
    return pyro_loss, objective(x0, noise=noise)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("condition", [True, False], ids=["condition", "replay"])
def test_trace_elbo_is_the_diffflow_objective(case, condition):
    make, discretizer, grid = CASES[case]
    rev = make()
    state = (2,) if case != "em-linear-g-image" else (1, 2, 2)
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn((6,) + state, generator=gen, dtype=F64)
    noise = torch.randn((grid.n_steps, 6) + state, generator=gen, dtype=F64)
    pyro.clear_param_store()
    pyro_loss, terms = _loss_pair(rev, discretizer, grid, x0, noise, condition)
    nelbo = terms.nelbo.sum()
    torch.testing.assert_close(nelbo, 6 * terms.loss)  # the plate's sum, the objective's mean
    torch.testing.assert_close(pyro_loss, nelbo, rtol=0, atol=1e-10)
    params = [p for p in rev.parameters() if p.requires_grad]
    assert params
    grads_pyro = torch.autograd.grad(pyro_loss, params)
    grads_obj = torch.autograd.grad(nelbo, params)
    for a, b in zip(grads_pyro, grads_obj):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def test_sites_and_the_guide_paths():
    rev, _, grid = CASES["em-constant-g"]
    rev = rev()
    vi = DiffFlowVI(rev, StandardNormal((2,), dtype=F64), grid)
    x0 = torch.randn(3, 2, dtype=F64)
    noise = torch.randn(grid.n_steps, 3, 2, dtype=F64)
    pyro.clear_param_store()
    guide_trace = poutine.trace(poutine.condition(vi.guide, data=vi.noise_data(noise))
                                ).get_trace(x0)
    model_trace = poutine.trace(poutine.replay(vi.model, trace=guide_trace)).get_trace(x0)
    n = grid.n_steps
    model_sites = [k for k, s in model_trace.nodes.items()
                   if s["type"] == "sample" and k != vi.plate]
    assert model_sites == [f"x_{i}" for i in range(n, -1, -1)]
    assert model_trace.nodes["x_0"]["is_observed"]
    aux = [k for k, s in guide_trace.nodes.items()
           if s["type"] == "sample" and s["infer"].get("is_auxiliary")]
    assert aux == [f"delta_F_{i}" for i in range(n)]
    # the guide's path is ForwardTrajectory's path from the same noises
    tau = ForwardTrajectory(rev.forward_sde, x0, grid).trajectory_from_noise(noise.transpose(0, 1))
    for i in range(1, n + 1):
        torch.testing.assert_close(guide_trace.nodes[f"x_{i}"]["value"], tau[:, i],
                                   rtol=0, atol=1e-12)
        assert model_trace.nodes[f"x_{i}"]["value"] is guide_trace.nodes[f"x_{i}"]["value"]
    # and the parameters entered the param store under one name, from the model and the guide
    names = set(pyro.get_param_store().keys())
    assert names and all(name.startswith("diffflow$$$") for name in names)


def test_svi_steps_equal_objective_steps():
    make, _, grid = CASES["em-constant-g"]
    rev_svi = make()
    rev_obj = copy.deepcopy(rev_svi)
    prior = StandardNormal((2,), dtype=F64)
    gen = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 2, generator=gen, dtype=F64),
                torch.randn(grid.n_steps, 5, 2, generator=gen, dtype=F64)) for _ in range(4)]

    pyro.clear_param_store()
    vi = DiffFlowVI(rev_svi, prior, grid)
    optim = pyro.optim.Adam({"lr": 1e-2})
    losses_svi = []
    for x0, noise in batches:
        svi = SVI(vi.model, poutine.condition(vi.guide, data=vi.noise_data(noise)), optim,
                  Trace_ELBO())
        losses_svi.append(svi.step(x0))

    objective = DiffFlowObjective(rev_obj, prior, grid)
    optimizer = torch.optim.Adam(rev_obj.parameters(), lr=1e-2)
    losses_obj = []
    for x0, noise in batches:
        loss = objective(x0, noise=noise).nelbo.sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses_obj.append(loss.item())

    assert losses_svi == pytest.approx(losses_obj, abs=1e-10)
    moved = False
    for (name, a), b in zip(rev_svi.named_parameters(), rev_obj.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10, msg=name)
        moved |= not torch.equal(a, make().get_parameter(name))
    assert moved


def test_svi_trains_without_conditioning():
    make, _, grid = CASES["em-constant-g"]
    rev = make()
    vi = DiffFlowVI(rev, StandardNormal((2,), dtype=F64), grid)
    pyro.clear_param_store()
    svi = SVI(vi.model, vi.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    x0 = torch.randn(8, 2, dtype=F64)
    loss = svi.step(x0)
    assert torch.isfinite(torch.tensor(loss))
    # a jittered grid per call, through the keyword both functions take
    assert torch.isfinite(torch.tensor(svi.step(x0, grid=grid.jitter())))


def test_bad_input_is_named():
    make, _, grid = CASES["em-constant-g"]
    rev = make()
    prior = StandardNormal((2,), dtype=F64)
    with pytest.raises(TypeError, match="reverse must be a reverse process"):
        DiffFlowVI(rev.forward_sde, prior, grid)
    with pytest.raises(TypeError, match="Gaussian transition"):
        DiffFlowVI(rev, prior, grid, discretizer=StochasticHeun())
    vi = DiffFlowVI(rev, prior)
    with pytest.raises(ValueError, match="grid must be a TimeGrid"):
        vi.model(torch.zeros(2, 2, dtype=F64))
    vi = DiffFlowVI(rev, prior, grid)
    with pytest.raises(ValueError, match=r"x0 must have shape \(batch, \*state\)"):
        vi.guide(torch.zeros(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        vi.guide(torch.zeros(2, 2))
    with pytest.raises(ValueError, match="noise must be"):
        vi.noise_data(torch.zeros(3))

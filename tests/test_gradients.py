"""Gradient strategies (DESIGN I8): every strategy's gradient equals plain backprop in float64."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sdeflow import (
    DiffFlowObjective,
    EulerMaruyama,
    ForwardSDE,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    TimeGrid,
)
from sdeflow.gradients import Backprop, Checkpointed, Sharded, StochasticAdjoint

DT = torch.float64
N_STEPS = 5
STRATEGIES = [StochasticAdjoint(), Checkpointed(2), Checkpointed(8), Sharded(shards=2),
              Sharded(StochasticAdjoint(), shards=3)]


class TinyMLP(nn.Module):
    """A small smooth net of (x, t) with a time-dependent hidden layer."""

    def __init__(self, d: int, width: int = 6) -> None:
        super().__init__()
        self.inp, self.time = nn.Linear(d, width), nn.Linear(1, width)
        self.out = nn.Linear(width, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.inp(x) + self.time(t.reshape(-1, 1)))
        return self.out(h)


class TinyConv(nn.Module):
    """A small conv net of (x, t) for image-shaped states (B, C, H, W)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, channels, 3, padding=1)
        self.scale = nn.Parameter(torch.tensor(0.7))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.conv2(torch.tanh(self.conv1(x) * (1 + self.scale * t)))


class DropoutMLP(TinyMLP):
    def __init__(self, d: int) -> None:
        super().__init__(d)
        self.drop = nn.Dropout(0.3)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.drop(super().forward(x, t))


class PlainEuler(EulerMaruyama):
    """Euler–Maruyama under another type: takes the objective's generic sweep."""


def make_problem(state: tuple[int, ...], schedule: str, seed: int = 0, net=None):
    torch.manual_seed(seed)
    if net is None:
        net = TinyConv if len(state) == 3 else (lambda c: TinyMLP(c))
    dim = state[0]
    drift, score = net(dim).to(DT), net(dim).to(DT)
    g = 0.3 if schedule == "constant" else LinearSchedule(0.2, 0.9, 0.0, 1.0)
    reverse = ReverseSDE(ForwardSDE(drift, g), score)
    prior = StandardNormal(state).to(DT)
    return reverse, prior


def make_grid(kind: str) -> TimeGrid:
    grid = TimeGrid.power(N_STEPS, 1e-3, 0.5, 0.9, dtype=DT)
    if kind == "jittered":
        grid = grid.jitter(torch.Generator().manual_seed(3))
    return grid


def loss_and_grads(objective, x0, noise, grid, wrt):
    terms = objective(x0, grid, noise=noise)
    return terms, torch.autograd.grad(terms.loss, wrt)


@pytest.mark.parametrize("strategy", STRATEGIES, ids=repr)
@pytest.mark.parametrize("state", [(3,), (2, 4, 4)], ids=["points", "images"])
@pytest.mark.parametrize("schedule", ["constant", "linear"])
@pytest.mark.parametrize("grid_kind", ["fixed", "jittered"])
@pytest.mark.parametrize("discretizer", [EulerMaruyama(), PlainEuler()], ids=["fast", "generic"])
def test_gradient_equals_backprop(strategy, state, schedule, grid_kind, discretizer):
    reverse, prior = make_problem(state, schedule)
    grid = make_grid(grid_kind)
    batch = 4
    x0 = torch.randn((batch,) + state, dtype=DT, requires_grad=True)
    noise = torch.randn((N_STEPS, batch) + state, dtype=DT)
    params = list(reverse.parameters())
    assert len(params) > 0
    wrt = params + [x0]
    expected = DiffFlowObjective(reverse, prior, grid, discretizer=discretizer)
    terms_bp, grads_bp = loss_and_grads(expected, x0, noise, grid, wrt)
    objective = DiffFlowObjective(reverse, prior, grid, discretizer=discretizer,
                                  gradient=strategy)
    terms, grads = loss_and_grads(objective, x0, noise, grid, wrt)
    torch.testing.assert_close(terms.step_terms, terms_bp.step_terms, rtol=0, atol=1e-12)
    torch.testing.assert_close(terms.x_final, terms_bp.x_final, rtol=0, atol=1e-12)
    for g, g_bp in zip(grads, grads_bp):
        assert g_bp.abs().max() > 0  # every parameter (and x0) is reached
        torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("schedule", ["constant", "linear"])
def test_fast_sweep_matches_generic_sweep(schedule):
    # The Euler/additive sweep (per-grid scalars, delta_B from I2) equals the generic one.
    reverse, prior = make_problem((3,), schedule)
    grid = make_grid("jittered")
    x0, noise = torch.randn(6, 3, dtype=DT), torch.randn(N_STEPS, 6, 3, dtype=DT)
    fast = DiffFlowObjective(reverse, prior, grid)(x0, noise=noise)
    generic = DiffFlowObjective(reverse, prior, grid, discretizer=PlainEuler())(x0, noise=noise)
    torch.testing.assert_close(fast.step_terms, generic.step_terms, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(fast.nelbo, generic.nelbo, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", [StochasticAdjoint(), Checkpointed(2), Sharded(shards=2)],
                         ids=repr)
def test_backward_accumulates_into_grad(strategy):
    # loss.backward() fills .grad exactly as Backprop does, and adds to existing .grad.
    reverse, prior = make_problem((2,), "linear")
    grid = make_grid("fixed")
    x0, noise = torch.randn(5, 2, dtype=DT), torch.randn(N_STEPS, 5, 2, dtype=DT)
    DiffFlowObjective(reverse, prior, grid)(x0, noise=noise).loss.backward()
    expected = [p.grad.clone() for p in reverse.parameters()]
    objective = DiffFlowObjective(reverse, prior, grid, gradient=strategy)
    objective(x0, noise=noise).loss.backward()
    for p, g in zip(reverse.parameters(), expected):
        torch.testing.assert_close(p.grad, 2 * g, rtol=0, atol=1e-10)


@pytest.mark.parametrize("strategy", [StochasticAdjoint(), Checkpointed(3)], ids=repr)
def test_dropout_recomputed_with_same_random_state(strategy):
    reverse, prior = make_problem((3,), "constant", net=DropoutMLP)
    grid = make_grid("fixed")
    x0, noise = torch.randn(8, 3, dtype=DT), torch.randn(N_STEPS, 8, 3, dtype=DT)
    params = list(reverse.parameters())
    results = []
    for gradient in (Backprop(), strategy):
        torch.manual_seed(11)
        objective = DiffFlowObjective(reverse, prior, grid, gradient=gradient)
        results.append(torch.autograd.grad(objective(x0, noise=noise).loss, params))
    for g, g_bp in zip(results[1], results[0]):
        torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("strategy", [StochasticAdjoint(), Sharded(shards=2)], ids=repr)
def test_parameters_hidden_in_a_closure_are_an_error(strategy):
    net = TinyMLP(2).to(DT)
    reverse = ReverseSDE(ForwardSDE(lambda x, t: net(x, t), 0.5), TinyMLP(2).to(DT))
    objective = DiffFlowObjective(reverse, StandardNormal((2,)).to(DT), make_grid("fixed"),
                                  gradient=strategy)
    with pytest.raises(ValueError, match="not among params"):
        objective(torch.randn(3, 2, dtype=DT))


@pytest.mark.parametrize("strategy", [StochasticAdjoint(), Sharded(shards=2)], ids=repr)
def test_no_grad_returns_the_same_values(strategy):
    reverse, prior = make_problem((2,), "constant")
    grid = make_grid("fixed")
    x0, noise = torch.randn(5, 2, dtype=DT), torch.randn(N_STEPS, 5, 2, dtype=DT)
    expected = DiffFlowObjective(reverse, prior, grid)(x0, noise=noise).nelbo
    objective = DiffFlowObjective(reverse, prior, grid, gradient=strategy)
    with torch.no_grad():
        got = objective(x0, noise=noise).nelbo
    assert not got.requires_grad
    torch.testing.assert_close(got, expected.detach(), rtol=0, atol=1e-12)


@pytest.mark.parametrize("segment", [0, -1, 1.5, True])
def test_bad_segment(segment):
    with pytest.raises(ValueError, match="segment"):
        Checkpointed(segment)


def test_repr():
    assert repr(StochasticAdjoint()) == "StochasticAdjoint()"
    assert repr(Checkpointed(4)) == "Checkpointed(segment=4)"
    assert repr(Backprop()) == "Backprop()"
    assert repr(Sharded()) == "Sharded(Backprop())"
    assert repr(Sharded(Checkpointed(3), shards=4)) == "Sharded(Checkpointed(segment=3), shards=4)"


@pytest.mark.parametrize("lam", [1.0, 0.5, 0.0])
@pytest.mark.parametrize("denoise", [True, False])
def test_sampling_fast_path_matches_generic(lam, denoise):
    # sample()'s Euler loop with per-grid scalars (the speed work of this issue) equals the
    # generic discretizer.step loop, noise draw for noise draw.
    from sdeflow import sample

    reverse, prior = make_problem((3,), "linear")
    reverse = reverse.with_lam(lam)
    grid = make_grid("jittered")
    x_final = torch.randn(4, 3, dtype=DT)
    runs = [sample(reverse, prior, grid, x_final=x_final, denoise=denoise, discretizer=d,
                   return_trajectory=True, generator=torch.Generator().manual_seed(5))
            for d in (EulerMaruyama(), PlainEuler())]
    torch.testing.assert_close(runs[0], runs[1], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("strategy", [StochasticAdjoint(), Checkpointed(2)], ids=repr)
def test_second_backward_with_retained_graph(strategy):
    # The kept carries live in the sweep's buffers, so a retained graph can be walked twice.
    reverse, prior = make_problem((2,), "linear")
    grid = make_grid("fixed")
    x0, noise = torch.randn(5, 2, dtype=DT), torch.randn(N_STEPS, 5, 2, dtype=DT)
    params = list(reverse.parameters())
    expected = torch.autograd.grad(DiffFlowObjective(reverse, prior, grid)(x0, noise=noise).loss,
                                   params)
    loss = DiffFlowObjective(reverse, prior, grid, gradient=strategy)(x0, noise=noise).loss
    for _ in range(2):
        got = torch.autograd.grad(loss, params, retain_graph=True)
        for g, g_bp in zip(got, expected):
            torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)

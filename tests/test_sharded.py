"""Sharded: batch slices in parallel CPU threads (its gradients are tested in test_gradients)."""

from __future__ import annotations

import os
import signal
import threading

import pytest
import torch
from test_gradients import DT, N_STEPS, DropoutMLP, TinyMLP, make_grid, make_problem

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal
from sdeflow.gradients import Backprop, Checkpointed, Sharded, StochasticAdjoint


def grads(objective, x0, noise):
    params = list(objective.reverse.parameters())
    return torch.autograd.grad(objective(x0, noise=noise).loss, params + [x0])


@pytest.fixture
def problem():
    reverse, prior = make_problem((3,), "linear")
    x0 = torch.randn(9, 3, dtype=DT, requires_grad=True)
    return reverse, prior, make_grid("jittered"), x0, torch.randn(N_STEPS, 9, 3, dtype=DT)


def test_runs_are_bitwise_reproducible(problem):
    # The shards' parameter gradients are added in shard order, not in finishing order.
    reverse, prior, grid, x0, noise = problem
    objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded(shards=3))
    first = grads(objective, x0, noise)
    for _ in range(3):
        for g, g0 in zip(grads(objective, x0, noise), first):
            assert torch.equal(g, g0)


@pytest.mark.parametrize("shards", [2, 4])
def test_shards_run_in_their_own_threads_with_one_intra_op_thread(shards):
    seen: list[tuple[int, int]] = []

    class Recording(TinyMLP):
        def forward(self, x, t):
            seen.append((threading.get_ident(), torch.get_num_threads()))
            return super().forward(x, t)

    reverse, prior = make_problem((2,), "constant", net=Recording)
    objective = DiffFlowObjective(reverse, prior, make_grid("fixed"),
                                  gradient=Sharded(shards=shards))
    threads = torch.get_num_threads()
    objective(torch.randn(8, 2, dtype=DT)).loss.backward()
    assert torch.get_num_threads() == threads  # restored
    assert len({ident for ident, _ in seen}) == shards
    assert threading.get_ident() not in {ident for ident, _ in seen}
    assert {n for _, n in seen} == {1}


def test_default_shards_follow_torch_threads_and_small_batches(problem):
    reverse, prior, grid, x0, noise = problem
    expected = grads(DiffFlowObjective(reverse, prior, grid), x0, noise)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded())
            for g, g_bp in zip(grads(objective, x0, noise), expected):
                torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)
    finally:
        torch.set_num_threads(threads)
    # A batch of one with shards=4: one shard, the inner strategy directly.
    objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded(shards=4))
    for g, g_bp in zip(grads(objective, x0[:1], noise[:, :1]),
                       grads(DiffFlowObjective(reverse, prior, grid), x0[:1], noise[:, :1])):
        torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)


def test_autocast_reaches_the_shard_threads():
    enabled: list[bool] = []

    class Recording(TinyMLP):
        def forward(self, x, t):
            enabled.append(torch.is_autocast_enabled("cpu"))
            return super().forward(x, t)

    reverse, prior = make_problem((2,), "constant", net=Recording)
    reverse, prior = reverse.float(), prior.float()
    objective = DiffFlowObjective(reverse, prior, make_grid("fixed").to(dtype=torch.float32),
                                  gradient=Sharded(StochasticAdjoint(), shards=2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = objective(torch.randn(6, 2)).loss
    loss.backward()  # the adjoint's recomputation runs outside the context: replayed there too
    assert enabled and all(enabled)


def test_random_draws_in_the_steps_are_an_error():
    reverse, prior = make_problem((3,), "constant", net=DropoutMLP)
    objective = DiffFlowObjective(reverse, prior, make_grid("fixed"), gradient=Sharded(shards=2))
    with pytest.raises(RuntimeError, match="drew random numbers"):
        objective(torch.randn(4, 3, dtype=DT))
    reverse.eval()  # no dropout: fine
    objective(torch.randn(4, 3, dtype=DT)).loss.backward()


def test_an_error_in_a_shard_is_raised_and_threads_restored():
    class Failing(TinyMLP):
        def forward(self, x, t):
            if x.shape[0] < 4:
                raise ArithmeticError("shard failed")
            return super().forward(x, t)

    reverse, prior = make_problem((2,), "constant", net=Failing)
    objective = DiffFlowObjective(reverse, prior, make_grid("fixed"), gradient=Sharded(shards=2))
    threads = torch.get_num_threads()
    with pytest.raises(ArithmeticError, match="shard failed"):
        objective(torch.randn(6, 2, dtype=DT))
    assert torch.get_num_threads() == threads


def test_second_backward_is_a_clear_error(problem):
    reverse, prior, grid, x0, noise = problem
    objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded(shards=2))
    loss = objective(x0.detach(), noise=noise).loss
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="second one"):
        loss.backward()


class _NoShard:
    n_steps = 2

    def init(self, x0):
        return (x0,)

    def step(self, i, carry):
        return carry, carry[0].sum(-1)


def test_requirements_are_checked():
    with pytest.raises(TypeError, match="shard\\(index\\) method; _NoShard has none"):
        Sharded(shards=2)(_NoShard(), torch.randn(4, 2), ())
    with pytest.raises(ValueError, match="CPU threads; x0 is on meta"):
        Sharded(shards=2)(_NoShard(), torch.randn(4, 2, device="meta"), ())
    with pytest.raises(TypeError, match="GradientStrategy"):
        Sharded(lambda sweep, x0, params: None)
    with pytest.raises(TypeError, match="Sharded"):
        Sharded(Sharded())
    for shards in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="shards"):
            Sharded(shards=shards)


@pytest.mark.parametrize("inner", [Backprop(), Checkpointed(2)], ids=repr)
def test_images_and_x0_without_grad(inner):
    reverse, prior = make_problem((2, 4, 4), "linear")
    grid = make_grid("fixed")
    x0, noise = torch.randn(5, 2, 4, 4, dtype=DT), torch.randn(N_STEPS, 5, 2, 4, 4, dtype=DT)
    params = list(reverse.parameters())
    expected = torch.autograd.grad(DiffFlowObjective(reverse, prior, grid)(x0, noise=noise).loss,
                                   params)
    objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded(inner, shards=2))
    got = torch.autograd.grad(objective(x0, noise=noise).loss, params)
    for g, g_bp in zip(got, expected):
        torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)


def test_sharded_inside_a_shard_is_an_error():
    inner_objective = []

    class Nesting(TinyMLP):
        def forward(self, x, t):
            if inner_objective:
                inner_objective[0](torch.randn(4, 2, dtype=DT))
            return super().forward(x, t)

    reverse, prior = make_problem((2,), "constant", net=Nesting)
    objective = DiffFlowObjective(reverse, prior, make_grid("fixed"), gradient=Sharded(shards=2))
    plain_reverse, _ = make_problem((2,), "constant")
    inner_objective.append(DiffFlowObjective(plain_reverse, prior, make_grid("fixed"),
                                             gradient=Sharded(shards=2)))
    with pytest.raises(RuntimeError, match="inside one of its own shards"):
        objective(torch.randn(6, 2, dtype=DT))


def test_networks_held_in_closures_only_keep_their_graph():
    # No registered parameters: nothing for the shards' threads to differentiate, so the graph
    # is kept whole and the caller's backward pass reaches the closures' networks.
    drift, score = TinyMLP(2).to(DT), TinyMLP(2).to(DT)
    reverse = ReverseSDE(ForwardSDE(lambda x, t: drift(x, t), 0.5), lambda x, t: score(x, t))
    prior, grid = StandardNormal((2,)).to(DT), make_grid("fixed")
    x0, noise = torch.randn(6, 2, dtype=DT), torch.randn(N_STEPS, 6, 2, dtype=DT)
    params = list(drift.parameters()) + list(score.parameters())
    results = [torch.autograd.grad(DiffFlowObjective(reverse, prior, grid, gradient=g)(
        x0, noise=noise).loss, params) for g in (Backprop(), Sharded(shards=2))]
    for g, g_bp in zip(results[1], results[0]):
        torch.testing.assert_close(g, g_bp, rtol=0, atol=1e-10)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_starts_its_own_threads(problem):
    reverse, prior, grid, x0, noise = problem
    objective = DiffFlowObjective(reverse, prior, grid, gradient=Sharded(shards=2))
    expected = objective(x0.detach(), noise=noise).nelbo.detach()  # threads started here
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: the parent's worker threads do not exist here
        signal.alarm(60)  # waiting on threads that do not exist ends the child, not the test run
        ok = torch.equal(objective(x0.detach(), noise=noise).nelbo.detach(), expected)
        os.write(write, b"1" if ok else b"0")
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as pipe:
        answer = pipe.read()
    os.waitpid(pid, 0)
    assert answer == b"1"

"""Couplings (issue 21): minibatch optimal transport lowers the paired transport cost against the
independent coupling, the exact one is the optimum over all permutations (brute force on small
batches), Sinkhorn's pairing is reproducible for a fixed generator, the data keep their order,
any state shape works, and the objective trains on the paired batch."""

from __future__ import annotations

import itertools

import pytest
import torch

from sdeflow import (
    IndependentCoupling,
    LinearPath,
    MinibatchOTCoupling,
    PathMatching,
    UniformTime,
)
from sdeflow.couplings import transport_cost

F64 = torch.float64


def _batch(n, shape=(2,), seed=0, shift=2.0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n, *shape), generator=g, dtype=F64) + shift
    return x0, torch.randn((n, *shape), generator=g, dtype=F64)


@pytest.mark.parametrize("seed", range(3))
def test_exact_ot_is_the_best_permutation(seed):
    x0, noise = _batch(6, seed=seed)
    paired_x0, paired = MinibatchOTCoupling("exact")(x0, noise)
    assert paired_x0 is x0
    best = min(float(transport_cost(x0, noise[list(p)])) for p in itertools.permutations(range(6)))
    assert abs(float(transport_cost(x0, paired)) - best) < 1e-12
    # a permutation of the noise: every draw used once
    assert sorted(paired[:, 0].tolist()) == sorted(noise[:, 0].tolist())


@pytest.mark.parametrize("method", ["exact", "sinkhorn"])
@pytest.mark.parametrize("shape", [(2,), (1, 3, 3)], ids=["points", "images"])
def test_ot_lowers_the_transport_cost(method, shape):
    x0, noise = _batch(256, shape)
    _, independent = IndependentCoupling()(x0, noise)
    coupling = MinibatchOTCoupling(method, reg=0.01)
    _, paired = coupling(x0, noise, generator=torch.Generator().manual_seed(0))
    assert paired.shape == noise.shape
    assert float(transport_cost(x0, paired)) < 0.8 * float(transport_cost(x0, independent))
    # each paired noise is one of the batch's draws
    flat, rows = noise.reshape(256, -1), paired.reshape(256, -1)
    assert bool((rows[:, None, :] == flat[None]).all(-1).any(1).all())


def test_auto_switches_to_sinkhorn_and_is_reproducible():
    x0, noise = _batch(64)
    coupling = MinibatchOTCoupling(exact_max=32, reg=0.5)  # blurred plan: the draws matter
    runs = [coupling(x0, noise, generator=torch.Generator().manual_seed(s))[1] for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1])
    assert not torch.equal(runs[0], runs[2])
    exact = MinibatchOTCoupling(exact_max=64)
    assert torch.equal(exact(x0, noise)[1], MinibatchOTCoupling("exact")(x0, noise)[1])
    plan = coupling.plan(x0, noise)
    torch.testing.assert_close(plan.sum(0), torch.full((64,), 1 / 64, dtype=F64), atol=1e-6,
                               rtol=0)


def test_objective_with_ot_coupling_is_reproducible():
    x0, _ = _batch(32)
    pm = PathMatching(LinearPath(), lambda x, t: -x, coupling=MinibatchOTCoupling(),
                      time=UniformTime(0.1, 0.9))
    a = pm(x0, generator=torch.Generator().manual_seed(3)).per_sample
    b = pm(x0, generator=torch.Generator().manual_seed(3)).per_sample
    assert torch.equal(a, b)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="method must be one of"):
        MinibatchOTCoupling("greedy")
    with pytest.raises(ValueError, match="reg must be > 0"):
        MinibatchOTCoupling(reg=0.0)
    with pytest.raises(ValueError, match="exact_max"):
        MinibatchOTCoupling(exact_max=0)
    with pytest.raises(ValueError, match="share a shape"):
        MinibatchOTCoupling()(torch.zeros(3, 2), torch.zeros(4, 2))
    with pytest.raises(TypeError, match="dtype"):
        IndependentCoupling()(torch.zeros(3, 2), torch.zeros(3, 2, dtype=F64))

"""Schedules of the number of time steps: the official "cont" switching convention, errors."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from sdeflow.training import ProgressiveSteps, SteppedSteps, StepsSchedule

CIFAR_B = ([5, 10, 20, 30, 50, 75], [5000, 15000, 20000, 25000, 30000])  # cont_cifar.yaml
CONT_MNIST = ([5, 10, 20, 30], [3000, 5000, 8000])  # cont_mnist.yaml


def official_n_per_iteration(values, milestones, n_iterations):
    """N seen by each training iteration in the official code: the jamtorch trainer increments
    ``iter_cnt`` before calling the loss, whose ``update_scalar`` rebuilds the timer when
    ``np.sum(iter_cnt > N_iter)`` exceeds the current index (``modules/sde_loss.py``); the timer
    starts with ``time_fn.num_steps`` = the first value."""
    n_iters, n_values = np.array(milestones), np.array(values)
    n_idx, num_steps, seen = 0, int(n_values[0]), []
    iter_cnt = 0
    for _ in range(n_iterations):
        iter_cnt += 1
        cur_idx = np.sum(iter_cnt > n_iters)
        if cur_idx > n_idx:
            num_steps, n_idx = int(n_values[cur_idx]), cur_idx
        seen.append(num_steps)
    return seen


@pytest.mark.parametrize("recipe", [CIFAR_B, CONT_MNIST], ids=["cont_cifar", "cont_mnist"])
def test_matches_the_official_switching(recipe):
    values, milestones = recipe
    schedule = SteppedSteps(values, milestones)
    n_iterations = milestones[-1] + 2000
    expected = official_n_per_iteration(values, milestones, n_iterations)
    assert [schedule(s) for s in range(1, n_iterations + 1)] == expected
    assert schedule.n_end == values[-1]


def test_switching_points():
    schedule = SteppedSteps(*CIFAR_B)
    assert [schedule(s) for s in (1, 4999, 5000, 5001)] == [5, 5, 5, 10]
    assert [schedule(s) for s in (15000, 15001, 20000, 20001)] == [10, 20, 20, 30]
    assert [schedule(s) for s in (25000, 25001, 30000, 30001, 10**9)] == [30, 50, 50, 75, 75]
    mnist = SteppedSteps(*CONT_MNIST)
    assert [mnist(s) for s in (3000, 3001, 5000, 5001, 8000, 8001)] == [5, 10, 10, 20, 20, 30]


def test_single_stage_and_other_sequences():
    assert SteppedSteps([30], [])(1) == 30 and SteppedSteps((30,), ()).n_end == 30
    from_arrays = SteppedSteps(np.array([2, 4]), torch.tensor([10]))
    assert (from_arrays(10), from_arrays(11)) == (2, 4)
    assert from_arrays.values == (2, 4) and all(type(v) is int for v in from_arrays.values)
    # values need not grow
    down = SteppedSteps([8, 3], [1])
    assert (down(1), down(2), down.n_end) == (8, 3, 3)


def test_repr_and_pickle():
    schedule = SteppedSteps(*CONT_MNIST)
    assert repr(schedule) == "SteppedSteps(values=(5, 10, 20, 30), milestones=(3000, 5000, 8000))"
    clone = pickle.loads(pickle.dumps(schedule))
    assert [clone(s) for s in (1, 3001, 9000)] == [5, 10, 30]


def test_both_schedules_are_steps_schedules():
    assert isinstance(SteppedSteps(*CIFAR_B), StepsSchedule)
    assert isinstance(ProgressiveSteps(5, 75, 700), StepsSchedule)
    with pytest.raises(TypeError):
        StepsSchedule()  # abstract


def test_progressive_steps_unchanged():
    schedule = ProgressiveSteps(5, 75, ramp_steps=700, every=100)
    # N(s) = 5 + floor(70 * min(1, s' / 700)), s' = s - 1 rounded down to a multiple of 100
    assert [schedule(s) for s in (1, 100, 101, 350, 351, 701, 5000)] == [5, 5, 15, 35, 35, 75, 75]
    assert schedule.n_end == 75
    assert repr(schedule) == "ProgressiveSteps(n_start=5, n_end=75, ramp_steps=700, every=100)"


@pytest.mark.parametrize("schedule", [SteppedSteps(*CIFAR_B), ProgressiveSteps(5, 75, 700)])
@pytest.mark.parametrize("step", [0, -1, 1.0, True, "1", None])
def test_bad_step(schedule, step):
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        schedule(step)


@pytest.mark.parametrize(
    "values, milestones, error, match",
    [
        ([5, 10], [], ValueError, r"one fewer entry than values \(len\(values\) - 1 = 1\)"),
        ([5, 10], [100, 200], ValueError, "one fewer entry than values"),
        ([], [], ValueError, "values must hold at least one"),
        ([5, 10, 20], [200, 100], ValueError, "milestones must be strictly increasing"),
        ([5, 10, 20], [100, 100], ValueError, "milestones must be strictly increasing"),
        ([5, 10], [0], ValueError, "milestones must be integers >= 1"),
        ([5, 0], [10], ValueError, "values must be integers >= 1"),
        ([5, 10.0], [10], TypeError, "values must hold integers"),
        ([5, True], [10], TypeError, "values must hold integers"),
        ([5, 10], [10.5], TypeError, "milestones must hold integers"),
        ("5", [], TypeError, "values must be a sequence"),
        (5, [], TypeError, "values must be a sequence"),
        ([5, 10], {10}, TypeError, "milestones must be a sequence"),
    ],
)
def test_bad_arguments(values, milestones, error, match):
    with pytest.raises(error, match=match):
        SteppedSteps(values, milestones)

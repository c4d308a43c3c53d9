"""The learning-rate schedules of the Trainer and the recipes: :func:`sdeflow.training.lr_decay`
(warm-up, then constant, linear or cosine decay) and its recipe keys."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from torch import nn

from sdeflow.recipes import apply_overrides, load_recipe, trainer_options
from sdeflow.runs.train import trainer_arguments
from sdeflow.training import Optimization, lr_decay


def _lrs(factory, steps: int, lr: float = 2.0) -> list[float]:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=lr)
    schedule = factory(opt)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        schedule.step()
    return out


def test_linear_and_cosine_end_at_the_final_fraction():
    lin = _lrs(lr_decay("linear", 10, final=0.1), 13)
    assert lin[0] == 2.0 and lin[5] == pytest.approx(2.0 * (1 - 0.9 * 0.5))
    assert lin[10:] == pytest.approx([0.2] * 3)  # held after the last step
    cos = _lrs(lr_decay("cosine", 10, final=0.0), 11)
    assert cos[5] == pytest.approx(1.0) and cos[10] == pytest.approx(0.0, abs=1e-15)
    assert all(a >= b for a, b in zip(cos, cos[1:]))  # monotone


def test_warmup_is_torchcfms_warmup_lr():
    """TorchCFM: ``LambdaLR(optim, lambda step: min(step, warmup) / warmup)``."""
    warmup = 7
    ours = _lrs(lr_decay("constant", 100, warmup=warmup), 20, lr=1.0)
    assert ours == pytest.approx([min(k, warmup) / warmup for k in range(20)])
    cosine = _lrs(lr_decay("cosine", 20, warmup=4, final=0.5), 21, lr=1.0)
    assert cosine[:5] == pytest.approx([0, 0.25, 0.5, 0.75, 1.0])
    assert cosine[20] == pytest.approx(0.5)
    p = (12 - 4) / 16
    assert cosine[12] == pytest.approx(0.5 + 0.25 * (1 + math.cos(math.pi * p)))


def test_schedule_is_picklable_and_resumes():
    opt_cfg = pickle.loads(pickle.dumps(Optimization(lr=1.0, scheduler=lr_decay("linear", 8))))
    params = [nn.Parameter(torch.zeros(1))]
    opt, schedule = opt_cfg.build(params)
    for _ in range(3):
        opt.step()
        schedule.step()
    state = schedule.state_dict()
    opt2, schedule2 = opt_cfg.build([nn.Parameter(torch.zeros(1))])
    schedule2.load_state_dict(state)
    opt2.step()
    schedule2.step()
    opt.step()
    schedule.step()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == pytest.approx(1 - 0.9 * 4 / 8)


@pytest.mark.parametrize("call, match", [
    (lambda: lr_decay("exp", 10), "kind must be one of"),
    (lambda: lr_decay("linear", 0), "lr_decay: total must be an integer >= 1"),
    (lambda: lr_decay("linear", 10, warmup=-1), "lr_decay: warmup must be an integer >= 0"),
    (lambda: lr_decay("linear", 10, final=1.5), r"final must be a number in \[0, 1\]"),
])
def test_lr_decay_errors_name_the_argument(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_recipe_keys_build_the_schedule():
    toy = load_recipe("toy-2d")
    recipe = apply_overrides(toy, ['optimizer.lr_schedule="cosine"', "optimizer.lr_final=0.2",
                                   "optimizer.lr_warmup=3", "train.iterations=10"])
    assert {k: trainer_options(recipe)[k] for k in ("lr_schedule", "lr_warmup", "lr_final")} == {
        "lr_schedule": "cosine", "lr_warmup": 3, "lr_final": 0.2}
    lrs = _lrs(trainer_arguments(recipe)["optimization"].scheduler, 11, lr=1.0)
    assert lrs[:4] == pytest.approx([0, 1 / 3, 2 / 3, 1.0]) and lrs[10] == pytest.approx(0.2)
    constant = apply_overrides(toy, ['optimizer.lr_schedule="constant"'])
    assert trainer_arguments(constant)["optimization"].scheduler is None
    fm = trainer_arguments(load_recipe("flow-matching-cifar"))["optimization"].scheduler
    assert _lrs(fm, 3, lr=1.0) == pytest.approx([0.0, 1 / 5000, 2 / 5000])


@pytest.mark.parametrize("overrides, match", [
    (['optimizer.lr_schedule="linear"', "optimizer.lr_final=2"], r"lr_final must be in \[0, 1\]"),
    (['optimizer.lr_schedule="linear"', "optimizer.lr_warmup=-2"], "lr_warmup must be >= 0"),
    (["optimizer.lr_warmup=5"], "lr_warmup does not combine with lr_schedule 'step'"),
    (['optimizer.lr_schedule="exp"'], "optimizer.lr_schedule"),
])
def test_recipe_schedule_errors(overrides, match):
    with pytest.raises(ValueError, match=match):
        trainer_options(apply_overrides(load_recipe("toy-2d"), overrides))

"""Training-loop parts of the official DiffFlow recipes: fp16 autocast with a gradient scaler,
the EMA started after k updates, checkpoints kept every k steps, TensorBoard event files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_training import assert_equal_states, make_trainer, params_of, tiny_diffflow
from torch import nn

from sdeflow import StandardNormal, TimeGrid
from sdeflow.nets import FourierMLP
from sdeflow.training import (
    EMA,
    Checkpointing,
    DiffFlowModel,
    EMAConfig,
    Logging,
    NonFiniteError,
    Optimization,
    Plots,
    TensorBatches,
    Trainer,
    load_checkpoint,
)
from sdeflow.training import precision as precision_module
from sdeflow.training import trainer as trainer_module
from sdeflow.training.checkpoint import kept_checkpoint_path, list_checkpoints
from sdeflow.training.tensorboard import TensorBoardLog


def records_of(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


class Crash(RuntimeError):
    pass


class NonFiniteGradAt(nn.Module):
    """``inner``'s loss, plus a term with value 0 and a non-finite gradient at chosen steps
    (``"all"``: every step): d/dw sqrt(|w - w0|) at w = w0."""

    def __init__(self, inner: nn.Module, bad_steps=()) -> None:
        super().__init__()
        self.inner, self.bad_steps = inner, set(bad_steps)

    def loss(self, batch, step):
        loss, info = self.inner.loss(batch, step)
        if step in self.bad_steps or "all" in self.bad_steps:
            w = next(self.inner.parameters())
            loss = loss + (w - w.detach()).abs().sqrt().sum()
        return loss, info


class Quadratic(nn.Module):
    """``|x - w|^2`` averaged over the batch, in the data's precision."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2, dtype=dtype))

    def loss(self, batch, step):
        return (batch - self.w).pow(2).sum(-1).mean(), {}


class AutocastProbe(Quadratic):
    """Records the autocast state its loss runs under."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.seen: list[tuple[bool, torch.dtype]] = []

    def loss(self, batch, step):
        self.seen.append((torch.is_autocast_enabled("cpu"), self.lin(batch).dtype))
        return super().loss(batch, step)[0] + self.lin(batch).float().pow(2).mean(), {}


# -- precision -----------------------------------------------------------------------------------
def test_fp16_runs_under_float16_autocast_on_the_cpu_or_is_refused():
    if not precision_module.autocast_supported("cpu", torch.float16):
        with pytest.raises(ValueError, match="precision='fp16'"):
            Trainer(AutocastProbe(), TensorBatches(torch.randn(16, 2), 4), steps=1,
                    precision="fp16", device="cpu")
        return
    probe = AutocastProbe()
    trainer = Trainer(probe, TensorBatches(torch.randn(16, 2), 4), steps=3, precision="fp16",
                      device="cpu", logging=Logging(progress=False))
    assert trainer.amp and trainer.scaler is not None
    trainer.fit()
    assert probe.seen == [(True, torch.float16)] * 3
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32
               for p in probe.parameters())


def test_unsupported_fp16_autocast_is_an_error_naming_precision(monkeypatch):
    monkeypatch.setattr(precision_module, "autocast_supported", lambda device_type, dtype: False)
    with pytest.raises(ValueError, match="precision='fp16'.*float16 autocast on cpu"):
        Trainer(Quadratic(), TensorBatches(torch.randn(8, 2), 4), steps=1, precision="fp16",
                device="cpu")


def test_bf16_precision_and_unknown_precisions():
    data = TensorBatches(torch.randn(16, 2), 4)
    probe = AutocastProbe()
    Trainer(probe, data, steps=1, precision="bf16", device="cpu",
            logging=Logging(progress=False)).fit()
    assert probe.seen == [(True, torch.bfloat16)]
    with pytest.raises(TypeError, match="mixed_precision"):  # the removed alias
        Trainer(Quadratic(), data, steps=1, mixed_precision=True)
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(Quadratic(), data, steps=1, precision="float16")
    plain = Trainer(Quadratic(), data, steps=1)
    assert plain.precision == "fp32" and not plain.amp and plain.scaler is None


def test_scaler_skipped_step_is_counted_and_logged_not_an_error(tmp_path):
    inner = Quadratic()
    model = NonFiniteGradAt(inner, bad_steps={3})
    seen = {}
    trainer = Trainer(model, TensorBatches(torch.randn(64, 2) + 1, 8), steps=6,
                      optimization=Optimization(lr=0.1), precision="fp16", device="cpu",
                      out_dir=tmp_path, logging=Logging(every=10, progress=False),
                      on_nonfinite="stop", ema=EMAConfig(0.9),
                      callbacks=[lambda t, s, r: seen.setdefault(
                          s, (inner.w.detach().clone(), t.ema.n_updates, t.scaler.get_scale()))])
    trainer.fit()
    assert trainer.step == 6 and trainer.scaler_skips == 1 and trainer.skipped == 0
    assert torch.equal(seen[2][0], seen[3][0])  # step 3 changed no weight
    assert not torch.equal(seen[3][0], seen[4][0])
    assert seen[3][1] == seen[2][1] == 2 and seen[4][1] == 3  # nor the EMA
    assert seen[3][2] == seen[2][2] / 2  # the scaler backed off
    records = {r["step"]: r for r in records_of(tmp_path) if "loss" in r}
    assert sorted(records) == [3, 6]  # logged although log_every=10
    assert records[3]["scaler_skipped"] is True and not np.isfinite(records[3]["grad_norm"])
    assert records[6]["loss_scale"] == records[3]["loss_scale"] / 2
    assert load_checkpoint(tmp_path / "checkpoint.pt")["scaler_skips"] == 1


def test_gradients_nonfinite_at_every_loss_scale_stop_training():
    trainer = Trainer(NonFiniteGradAt(Quadratic(), {"all"}), TensorBatches(torch.randn(16, 2), 4),
                      steps=100, precision="fp16", device="cpu",
                      logging=Logging(progress=False), on_nonfinite="skip")
    with pytest.raises(NonFiniteError, match="every loss scale"):
        trainer.fit()
    assert trainer.step == 33 - 1  # 2^16 halved 33 times is below 2^-16 (stopped in step 33)
    assert trainer.scaler_skips == 32


def test_fp16_resume_equals_uninterrupted_run_and_restores_the_scaler(tmp_path):
    def model(seed: int) -> nn.Module:
        return NonFiniteGradAt(tiny_diffflow(seed), bad_steps={2})  # one skip before the resume

    full = make_trainer(tmp_path / "full", 6, model(0), precision="fp16", device="cpu").fit()
    first = make_trainer(tmp_path / "part", 3, model(0), precision="fp16", device="cpu").fit()
    saved = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert saved["scaler"] == first.scaler.state_dict() and saved["scaler_skips"] >= 1
    torch.manual_seed(12345)  # the resumed run restores every state; not this seed or model
    resumed = make_trainer(tmp_path / "part", 6, model(99), precision="fp16", device="cpu")
    assert resumed.scaler.get_scale() == 2.0**16  # fresh, until the checkpoint is loaded
    resumed.fit(resume=True)
    assert resumed.step == 6
    assert_equal_states(params_of(full.model), params_of(resumed.model))
    assert_equal_states(params_of(full.eval_model), params_of(resumed.eval_model))
    assert resumed.scaler.state_dict() == full.scaler.state_dict()
    assert resumed.scaler_skips == full.scaler_skips >= 1
    assert full.scaler.get_scale() < 2.0**16
    losses = [r["loss"] for r in records_of(tmp_path / "part") if "loss" in r]
    assert losses == [r["loss"] for r in records_of(tmp_path / "full") if "loss" in r]


# -- EMA start -----------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_start_copies_then_decays(warmup):
    net = nn.Linear(3, 2).double()
    ema = EMA(net, decay=0.9, warmup=warmup, start=3)
    expected = None
    gen = torch.Generator().manual_seed(0)
    for k in range(1, 9):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        ema.update(net)
        current = {name: p.clone() for name, p in net.state_dict().items()}
        if k <= 3:  # a copy of the weights until 3 updates have happened
            expected = current
            assert_equal_states(params_of(ema.module), current)
        else:  # then the recursion, with the warm-up counted from the start
            beta = min(0.9, (k - 3) / (9 + k - 3)) if warmup else 0.9
            expected = {name: beta * expected[name] + (1 - beta) * current[name]
                        for name in current}
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-12, atol=1e-12)
    restored = EMA(net, decay=0.9, warmup=warmup)
    restored.load_state_dict(ema.state_dict())
    assert restored.start == 3 and restored.n_updates == 8
    assert_equal_states(params_of(restored.module), params_of(ema.module))


def test_ema_start_zero_is_the_old_average_and_bad_start_is_refused():
    net = nn.Linear(1, 1, bias=False).double()
    ema = EMA(net, decay=0.5, warmup=False, start=0)
    w0 = float(ema.module.weight)
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema.update(net)
    assert float(ema.module.weight) == 0.5 * w0 + 0.5 * 2.0
    for bad in (-1, 1.5, True):
        with pytest.raises(ValueError, match="start"):
            EMA(net, start=bad)


def test_trainer_ema_start_follows_the_official_semantics(tmp_path):
    """The official recipe: EMA 0.999 starting after 10 updates, no warm-up (here 0.9 after
    3): the EMA equals the weights up to update 3, then averages them."""
    model = Quadratic(torch.float64)
    weights = {}
    trainer = Trainer(model, TensorBatches(torch.randn(64, 2, dtype=torch.float64) + 2, 8),
                      steps=7, optimization=Optimization(lr=0.1),
                      ema=EMAConfig(decay=0.9, start=3, warmup=False), out_dir=tmp_path,
                      checkpointing=Checkpointing(every=2), logging=Logging(progress=False),
                      callbacks=[lambda t, s, r: weights.setdefault(
                          s, (model.w.detach().clone(), t.eval_model.w.detach().clone()))])
    trainer.fit()
    for step in (1, 2, 3):
        assert torch.equal(weights[step][1], weights[step][0])
    expected = weights[3][0]
    for step in range(4, 8):
        expected = 0.9 * expected + 0.1 * weights[step][0]
        torch.testing.assert_close(weights[step][1], expected, rtol=1e-12, atol=1e-12)
    assert not torch.equal(weights[7][1], weights[7][0])
    assert load_checkpoint(tmp_path / "checkpoint.pt")["ema"]["start"] == 3


# -- kept checkpoints ----------------------------------------------------------------------------
def test_kept_checkpoints_are_listed_by_step_and_resume_exactly(tmp_path):
    full = make_trainer(tmp_path / "full", 7, checkpoint_every=None, keep_every=2).fit()
    kept = list_checkpoints(tmp_path / "full")
    assert [p.name for p in kept] == ["step_0000002.pt", "step_0000004.pt", "step_0000006.pt"]
    assert kept[1] == kept_checkpoint_path(tmp_path / "full", 4)
    assert [load_checkpoint(p)["step"] for p in kept] == [2, 4, 6]
    assert load_checkpoint(tmp_path / "full" / "checkpoint.pt")["step"] == 7  # the final one
    # an intermediate checkpoint holds the whole state: continuing from it repeats the run
    again = make_trainer(tmp_path / "again", 7, model=tiny_diffflow(seed=5),
                         checkpoint_every=None)
    again.fit(resume=kept[1])
    assert_equal_states(params_of(full.model), params_of(again.model))
    assert_equal_states(params_of(full.eval_model), params_of(again.eval_model))
    assert list_checkpoints(tmp_path / "again") == []
    with pytest.raises(FileNotFoundError, match="run_dir"):
        list_checkpoints(tmp_path / "missing")


def test_recipe_arguments_are_checked(tmp_path):
    data = TensorBatches(torch.randn(8, 2), 4)
    with pytest.raises(ValueError, match="Checkpointing.keep_every"):
        Trainer(Quadratic(), data, steps=1, out_dir=tmp_path,
                checkpointing=Checkpointing(keep_every=0))
    with pytest.raises(ValueError, match="keep_every needs an out_dir"):
        Trainer(Quadratic(), data, steps=1, checkpointing=Checkpointing(keep_every=2))
    with pytest.raises(ValueError, match="EMAConfig.start"):
        Trainer(Quadratic(), data, steps=1, ema=EMAConfig(start=-1))
    with pytest.raises(ValueError, match="tensorboard=True needs an out_dir"):
        Trainer(Quadratic(), data, steps=1, logging=Logging(tensorboard=True))


# -- TensorBoard ---------------------------------------------------------------------------------
def read_events(folder: Path):
    accumulator = pytest.importorskip(
        "tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(folder), size_guidance={"scalars": 0,
                                                                      "images": 0})
    events.Reload()
    return events


def write_png(model, path):
    from PIL import Image

    Image.new("RGB", (6, 5), (200, 30, 10)).save(path)


def test_tensorboard_scalars_and_sample_images(tmp_path):
    pytest.importorskip("tensorboard")
    trainer = make_trainer(tmp_path, 4, plots=Plots(every=2, fn=write_png))
    assert trainer.tensorboard  # on by default when the package is installed
    trainer.fit()
    events = read_events(tmp_path / "tensorboard")
    assert {"train/loss", "train/grad_norm", "train/lr", "train/time_s"} <= set(
        events.Tags()["scalars"])
    records = [r for r in records_of(tmp_path) if "loss" in r]
    for key in ("loss", "grad_norm", "lr"):
        scalars = events.Scalars(f"train/{key}")
        assert [s.step for s in scalars] == [1, 2, 3, 4]
        assert [s.value for s in scalars] == [np.float32(r[key]) for r in records]
    images = events.Images("samples")
    assert [(i.step, i.width, i.height) for i in images] == [(2, 6, 5), (4, 6, 5)]


def test_tensorboard_after_resume_has_each_step_once(tmp_path):
    pytest.importorskip("tensorboard")

    def crash_at_5(trainer, step, record):
        if step == 5:
            raise Crash("after the events of steps 4 and 5 were written")

    make_trainer(tmp_path / "full", 6).fit()
    with pytest.raises(Crash):
        make_trainer(tmp_path / "run", 6, callbacks=[crash_at_5]).fit()
    before = read_events(tmp_path / "run" / "tensorboard")
    assert [s.step for s in before.Scalars("train/loss")] == [1, 2, 3, 4, 5]
    make_trainer(tmp_path / "run", 6, model=tiny_diffflow(seed=9)).fit(resume=True)
    after = read_events(tmp_path / "run" / "tensorboard")
    reference = read_events(tmp_path / "full" / "tensorboard")
    for tag in ("train/loss", "train/lr"):
        assert [(s.step, s.value) for s in after.Scalars(tag)] == \
            [(s.step, s.value) for s in reference.Scalars(tag)]
    assert [s.step for s in after.Scalars("train/loss")] == [1, 2, 3, 4, 5, 6]


def test_tensorboard_off_or_missing(tmp_path, monkeypatch):
    make_trainer(tmp_path / "off", 2, tensorboard=False).fit()
    assert not (tmp_path / "off" / "tensorboard").exists()
    assert (tmp_path / "off" / "metrics.jsonl").exists()
    monkeypatch.setattr(trainer_module, "tensorboard_available", lambda: False)
    assert not make_trainer(tmp_path / "auto", 1).tensorboard
    with pytest.raises(ImportError, match="pip install"):
        make_trainer(tmp_path / "on", 1, tensorboard=True)


def test_a_new_log_sorts_after_the_files_of_this_second(tmp_path):
    """TensorBoard reads a folder's event files in name order, and applies a resumed run's
    purge only to the files read before it: a log opened in the same second as an earlier one
    (here a name that sorts after any host name) must still come last."""
    pytest.importorskip("tensorboard")
    import time

    earlier = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.~~~~.99999.9"
    earlier.write_bytes(b"")
    with TensorBoardLog(tmp_path, purge_step=3) as log:
        log.scalars({"step": 3, "loss": 1.0})
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names[0] == earlier.name and len(names) == 2


def test_training_grid_drawn_by_a_callable_jitter():
    """The official S-curve recipe trains on ``TimeGrid.s_curve_random(N, t0, t1)`` at every
    step: ``jitter`` accepts such a callable, with a stepped N."""
    import functools

    from sdeflow.training import SteppedSteps

    draw = functools.partial(TimeGrid.s_curve_random, t0=1e-3, t1=0.05)
    model = DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 1.0,
                          functools.partial(TimeGrid.s_curve, t0=1e-3, t1=0.05),
                          StandardNormal((2,)), jitter=draw,
                          progressive=SteppedSteps([5, 10], [3]))
    torch.manual_seed(0)
    grids = [model.training_grid(step) for step in (1, 3, 4)]
    assert [g.n_steps for g in grids] == [5, 5, 10]
    torch.manual_seed(0)
    torch.testing.assert_close(grids[0].ts, draw(5).ts)
    assert model.grid.n_steps == 10 and torch.equal(model.grid.ts, TimeGrid.s_curve(10, 1e-3,
                                                                                      0.05).ts)
    assert not torch.equal(grids[0].ts, TimeGrid.s_curve(5, 1e-3, 0.05).ts)
    with pytest.raises(TypeError, match="jitter must be a bool or a callable"):
        DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 1.0, TimeGrid.uniform(3, 0, 1),
                      StandardNormal((2,)), jitter="yes")

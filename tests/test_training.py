"""The training loop: atomic, verified checkpoints; exact kill-and-resume; non-finite steps;
EMA; progressive N; batch sources; the three model families."""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import signal
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import sdeflow
from sdeflow import VPSDE, StandardNormal, TimeGrid
from sdeflow.data import load_toy
from sdeflow.nets import FourierMLP
from sdeflow.training import (
    EMA,
    CheckpointError,
    Checkpointing,
    DiffFlowModel,
    EMAConfig,
    FlowModel,
    Logging,
    NonFiniteError,
    Optimization,
    Plots,
    ProgressiveSteps,
    ScoreModel,
    TensorBatches,
    Trainer,
    load_checkpoint,
    save_checkpoint,
    step_lr,
    verify_checkpoint,
)
from sdeflow.training import checkpoint as checkpoint_module
from sdeflow.training.distributed import DistributedContext
from sdeflow.training.trainer import get_rng_state, set_rng_state

REPO = Path(__file__).resolve().parents[1]


# -- helpers -------------------------------------------------------------------------------------
def tiny_diffflow(seed: int = 0) -> DiffFlowModel:
    torch.manual_seed(seed)
    return DiffFlowModel(FourierMLP(2, 16, 1), FourierMLP(2, 16, 1), 0.2,
                         TimeGrid.power(5, 1e-3, 0.05, 0.9), StandardNormal((2,)))


def tiny_data(seed: int = 1) -> torch.Tensor:
    return load_toy("checkerboard", 256, 8, seed=seed)[0]


def make_trainer(out: Path | None, steps: int, model: nn.Module | None = None, *,
                 checkpoint_every: int | None = 3, keep_every: int | None = None,
                 seconds: float | None = None, tensorboard: bool | None = None,
                 **kwargs) -> Trainer:
    """A tiny DiffFlow run: checkpoints by step count only (by default none by time), every
    step logged."""
    kwargs.setdefault("optimization", Optimization(lr=1e-2))
    return Trainer(model or tiny_diffflow(), TensorBatches(tiny_data(), 32, seed=2),
                   steps=steps, out_dir=out,
                   checkpointing=Checkpointing(every=checkpoint_every, seconds=seconds,
                                               keep_every=keep_every),
                   logging=Logging(every=1, progress=False, tensorboard=tensorboard), **kwargs)


def params_of(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_equal_states(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


class Crash(RuntimeError):
    pass


def crash_at(step: int):
    def callback(trainer, s, record):
        if s == step:
            raise Crash(f"simulated kill at step {s}")
    return callback


class ScriptedLoss(nn.Module):
    """A quadratic loss that turns NaN (or gives an infinite gradient) at chosen steps."""

    def __init__(self, bad_steps=(), kind: str = "loss") -> None:
        super().__init__()
        self.w = nn.Parameter(torch.zeros(2))
        self.bad_steps, self.kind = set(bad_steps), kind

    def loss(self, batch, step):
        loss = (batch - self.w).pow(2).sum(-1).mean()
        if step in self.bad_steps or "all" in self.bad_steps:
            if self.kind == "loss":
                loss = loss * float("nan")
            else:  # finite loss, infinite gradient: d/dw sqrt(|w - w0|) at w = w0
                loss = loss + (self.w - self.w.detach()).abs().sqrt().sum()
        return loss, {}


# -- checkpoints ---------------------------------------------------------------------------------
def test_checkpoint_round_trip(tmp_path):
    state = {"w": torch.randn(3, dtype=torch.float64), "step": 7, "nested": {"a": [1, 2.5]}}
    path = save_checkpoint(state, tmp_path / "sub" / "c.pt")
    verify_checkpoint(path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 7
    assert loaded["nested"] == {"a": [1, 2.5]}


@pytest.mark.parametrize("failing", ["replace", "fsync", "write"])
def test_checkpoint_failure_during_write_keeps_old(tmp_path, monkeypatch, failing):
    path = tmp_path / "c.pt"
    save_checkpoint({"version": 1}, path)
    old_bytes = path.read_bytes()

    def boom(*args, **kwargs):
        raise OSError(f"simulated failure in {failing}")

    if failing == "replace":
        monkeypatch.setattr(checkpoint_module.os, "replace", boom)
    elif failing == "fsync":
        monkeypatch.setattr(checkpoint_module.os, "fsync", boom)
    else:  # the disk fills up mid-write: the first chunk lands, then the write fails
        real_fdopen = os.fdopen

        class HalfFile:
            def __init__(self, f):
                self.f = f

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

            def write(self, data):
                self.f.write(data[: len(data) // 2])
                raise OSError("No space left on device")

        monkeypatch.setattr(checkpoint_module.os, "fdopen",
                            lambda fd, mode: HalfFile(real_fdopen(fd, mode)))
    with pytest.raises(OSError, match="simulated failure|No space"):
        save_checkpoint({"version": 2}, path)
    monkeypatch.undo()
    assert path.read_bytes() == old_bytes
    assert load_checkpoint(path)["version"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.json", "c.pt"]  # no temp file left


def test_checkpoint_is_a_plain_torch_file_with_a_json_sidecar(tmp_path):
    state = {"w": torch.randn(5, dtype=torch.float64), "step": 12, "rng": get_rng_state()}
    path = save_checkpoint(state, tmp_path / "c.pt")
    plain = torch.load(path, weights_only=True)  # no sdeflow code involved
    assert torch.equal(plain["w"], state["w"]) and plain["step"] == 12
    side = json.loads((tmp_path / "c.json").read_text())
    data = path.read_bytes()
    assert side["format"] == 2 and side["step"] == 12 and side["size"] == len(data)
    assert side["sha256"] == hashlib.sha256(data).hexdigest()
    assert side["sdeflow"] == sdeflow.__version__ and side["time"].endswith("+00:00")
    # a trainer's checkpoint too
    trainer = make_trainer(tmp_path / "run", 2).fit()
    state = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)
    assert state["step"] == 2 and state["model"].keys() == trainer.model.state_dict().keys()
    assert json.loads((tmp_path / "run" / "checkpoint.json").read_text())["step"] == 2


def _flip(data: bytes, position: int) -> bytes:
    flipped = bytearray(data)
    flipped[position] ^= 0x01
    return bytes(flipped)


def _data_offset(data: bytes, member_suffix: str) -> int:
    """Where the stored bytes of the zip member ending in ``member_suffix`` start."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        (info,) = [i for i in archive.infolist() if i.filename.endswith(member_suffix)]
    header = data[info.header_offset:info.header_offset + 30]
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


def test_checkpoint_truncated_corrupt_and_foreign_files_are_named(tmp_path):
    path = save_checkpoint({"w": torch.arange(1000.0), "step": 3}, tmp_path / "c.pt")
    data = path.read_bytes()
    sidecar = (tmp_path / "c.json").read_bytes()

    for cut in (len(data) - 10, len(data) // 2, 20, 2):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value)
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="is empty"):
        verify_checkpoint(path)

    # a flipped byte in the middle of the stored tensor: torch.load alone would return the
    # changed numbers; the member's CRC-32 catches it, with or without the sidecar
    middle = _data_offset(data, "data/0") + 2000
    corrupt = _flip(data, middle)
    assert not torch.equal(torch.load(io.BytesIO(corrupt), weights_only=True)["w"],
                           torch.arange(1000.0))
    for with_sidecar in (True, False):
        path.write_bytes(corrupt)
        if not with_sidecar:
            (tmp_path / "c.json").unlink()
        with pytest.raises(CheckpointError, match="corrupt: CRC-32 mismatch") as err:
            load_checkpoint(path)
        assert str(path) in str(err.value)
    # a flipped byte that no CRC covers (the zip's padding): the sidecar's SHA-256 catches it
    (tmp_path / "c.json").write_bytes(sidecar)
    padding = _data_offset(data, "data.pkl") - 1
    path.write_bytes(_flip(data, padding))
    with pytest.raises(CheckpointError, match="SHA-256 checksum mismatch with its sidecar"):
        load_checkpoint(path)
    path.write_bytes(data + b"\0")  # padded: the sidecar's size disagrees (or the zip breaks)
    with pytest.raises(CheckpointError, match=str(path)):
        load_checkpoint(path)

    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not an sdeflow checkpoint"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")
    path.write_bytes(data)
    assert load_checkpoint(path)["step"] == 3


def test_a_stale_sidecar_of_another_step_is_ignored(tmp_path):
    """A crash between the two renames leaves a new .pt beside the previous step's sidecar."""
    path = save_checkpoint({"w": torch.zeros(3), "step": 4}, tmp_path / "c.pt")
    old_sidecar = (tmp_path / "c.json").read_bytes()
    save_checkpoint({"w": torch.ones(3), "step": 6}, path)
    (tmp_path / "c.json").write_bytes(old_sidecar)
    assert load_checkpoint(path)["step"] == 6
    verify_checkpoint(path)


def _first_format(state: dict, path: Path) -> None:
    """A file of the first format (header, then the payload), as sdeflow 0.1 wrote it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    header = struct.pack("<16sQ32s", b"SDEFLOW-CKPT-v1\n", len(payload),
                         hashlib.sha256(payload).digest())
    path.write_bytes(header + payload)


def test_first_format_checkpoints_still_load_and_are_checked(tmp_path):
    trainer = make_trainer(tmp_path / "new", 3).fit()
    old_run = tmp_path / "old"
    old_run.mkdir()
    _first_format(trainer.state_dict(), old_run / "checkpoint.pt")
    verify_checkpoint(old_run / "checkpoint.pt")
    data = (old_run / "checkpoint.pt").read_bytes()
    resumed = make_trainer(old_run, 6, model=tiny_diffflow(seed=4)).fit(resume=True)
    full = make_trainer(tmp_path / "full", 6).fit()
    assert_equal_states(params_of(full.model), params_of(resumed.model))
    (old_run / "checkpoint.pt").write_bytes(data[:-7])
    with pytest.raises(CheckpointError, match="truncated or padded"):
        load_checkpoint(old_run / "checkpoint.pt")
    _first_format({"step": 1}, old_run / "x.pt")
    (old_run / "x.pt").write_bytes(_flip((old_run / "x.pt").read_bytes(), 80))
    with pytest.raises(CheckpointError, match="SHA-256 checksum mismatch"):
        load_checkpoint(old_run / "x.pt")


def test_resume_from_corrupt_checkpoint_raises_naming_it(tmp_path):
    make_trainer(tmp_path, 3).fit()
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated") as err:
        make_trainer(tmp_path, 6).fit(resume=True)
    assert str(ckpt) in str(err.value)


def test_rng_state_round_trip():
    state = get_rng_state()
    expected = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    torch.manual_seed(123)
    np.random.seed(123)  # noqa: NPY002
    random.seed(123)
    set_rng_state(state)
    got = (torch.rand(3), np.random.rand(3), random.random())  # noqa: NPY002
    assert torch.equal(expected[0], got[0])
    assert np.array_equal(expected[1], got[1]) and expected[2] == got[2]


# -- resume equals an uninterrupted run ----------------------------------------------------------
def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    steps = 8
    full = make_trainer(tmp_path / "full", steps).fit()

    torch.manual_seed(0)
    crashed = make_trainer(tmp_path / "killed", steps, callbacks=[crash_at(5)])
    with pytest.raises(Crash):
        crashed.fit()
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 3

    torch.manual_seed(12345)  # the resumed run must restore the RNG, not inherit this one
    resumed = make_trainer(tmp_path / "killed", steps, model=tiny_diffflow(seed=99))
    resumed.fit(resume=True)
    assert resumed.step == steps
    assert_equal_states(params_of(full.model), params_of(resumed.model))
    assert_equal_states(params_of(full.eval_model), params_of(resumed.eval_model))
    assert full.optimizer.state_dict()["param_groups"] == \
        resumed.optimizer.state_dict()["param_groups"]
    # the killed run's records after step 3 were dropped: each step is logged once
    records = [json.loads(line) for line in
               (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    logged = [r["step"] for r in records if "loss" in r]
    assert logged == list(range(1, steps + 1))
    full_losses = [json.loads(line)["loss"] for line in
                   (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in records if "loss" in r] == full_losses


_SCRIPT = textwrap.dedent("""
    import os, signal, sys
    import torch
    sys.path.insert(0, {tests!r})
    torch.set_num_threads(1)
    from test_training import make_trainer, tiny_diffflow
    from pathlib import Path
    mode, tmp = sys.argv[1], Path(sys.argv[2])

    def kill(trainer, step, record):
        if step == 5:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "kill":
        make_trainer(tmp / "killed", 8, model=tiny_diffflow(0), callbacks=[kill]).fit()
    else:  # resume the killed run, then run the same training uninterrupted
        resumed = make_trainer(tmp / "killed", 8, model=tiny_diffflow(7)).fit(resume=True)
        full = make_trainer(tmp / "full", 8, model=tiny_diffflow(0)).fit()
        torch.save({{"resumed": resumed.model.state_dict(), "full": full.model.state_dict(),
                    "step": resumed.step}}, tmp / "final.pt")
""")


@pytest.mark.slow
def test_sigkill_and_resume_in_fresh_processes(tmp_path):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(REPO / "tests")))
    env = dict(os.environ, PYTHONPATH=str(REPO))

    def run(mode: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, str(script), mode, str(tmp_path)], env=env,
                              capture_output=True, text=True, timeout=300)

    killed = run("kill")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert load_checkpoint(tmp_path / "killed" / "checkpoint.pt")["step"] == 3
    resumed = run("resume")
    assert resumed.returncode == 0, resumed.stderr
    final = torch.load(tmp_path / "final.pt")
    assert final["step"] == 8
    assert_equal_states(final["full"], final["resumed"])


def test_resume_without_checkpoint_starts_afresh_and_finished_run_is_noop(tmp_path):
    trainer = make_trainer(tmp_path, 2).fit(resume=True)
    assert trainer.step == 2
    before = params_of(trainer.model)
    again = make_trainer(tmp_path, 2, model=tiny_diffflow(seed=5)).fit(resume=True)
    assert again.step == 2
    assert_equal_states(before, params_of(again.model))


def test_plotting_does_not_change_the_training_stream(tmp_path):
    calls = []

    def plot_fn(model, path):
        calls.append(path)
        model.sample(16)  # draws from the (forked) global RNG
        Path(path).write_bytes(b"png")

    plain = make_trainer(None, 4).fit()
    plotted = make_trainer(tmp_path, 4, plots=Plots(every=2, fn=plot_fn)).fit()
    assert [p.name for p in calls] == ["step_000002.png", "step_000004.png"]
    assert_equal_states(params_of(plain.model), params_of(plotted.model))


def test_default_plot_hook_writes_png(tmp_path):
    trainer = make_trainer(tmp_path, 1, checkpoint_every=None)
    trainer.fit()
    path = trainer.plot()
    assert path.exists() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- non-finite steps ----------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_nonfinite_stops_names_step_and_keeps_checkpoint(tmp_path, kind):
    snapshots = {}

    def snapshot(trainer, step, record):
        path = tmp_path / "checkpoint.pt"
        if path.exists():
            snapshots[step] = path.read_bytes()

    model = ScriptedLoss(bad_steps={5}, kind=kind)
    trainer = Trainer(model, TensorBatches(torch.randn(64, 2), 8), steps=10, out_dir=tmp_path,
                      checkpointing=Checkpointing(every=2, seconds=None),
                      logging=Logging(progress=False), callbacks=[snapshot])
    with pytest.raises(NonFiniteError) as err:
        trainer.fit()
    message = str(err.value)
    assert "step 5" in message and str(tmp_path / "checkpoint.pt") in message
    assert "(step 4)" in message and ("loss" if kind == "loss" else "gradient") in message
    assert (tmp_path / "checkpoint.pt").read_bytes() == snapshots[4]
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4
    assert torch.isfinite(model.w).all()
    events = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "nonfinite" and events[-1]["step"] == 5


def test_nonfinite_before_any_checkpoint_says_so(tmp_path):
    trainer = Trainer(ScriptedLoss({1}), TensorBatches(torch.randn(16, 2), 4), steps=3,
                      out_dir=tmp_path, logging=Logging(progress=False))
    with pytest.raises(NonFiniteError, match="step 1.*no checkpoint was written yet"):
        trainer.fit()
    assert not (tmp_path / "checkpoint.pt").exists()


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_skip_mode_skips_the_step(tmp_path, kind):
    seen = {}
    model = ScriptedLoss(bad_steps={3}, kind=kind)
    trainer = Trainer(model, TensorBatches(torch.randn(64, 2) + 1, 8), steps=6,
                      optimization=Optimization(lr=0.1), out_dir=tmp_path,
                      logging=Logging(progress=False), on_nonfinite="skip", ema=EMAConfig(0.9),
                      callbacks=[lambda t, s, r: seen.setdefault(s, (model.w.detach().clone(),
                                                                    t.ema.n_updates))])
    trainer.fit()
    assert trainer.step == 6 and trainer.skipped == 1
    assert torch.equal(seen[2][0], seen[3][0])  # step 3 changed nothing
    assert not torch.equal(seen[3][0], seen[4][0])
    assert seen[3][1] == seen[2][1] == 2  # and did not update the EMA
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("skipped") and r["step"] == 3 for r in records)


def test_skip_mode_gives_up_after_too_many_consecutive_skips():
    trainer = Trainer(ScriptedLoss({"all"}), TensorBatches(torch.randn(16, 2), 4), steps=50,
                      logging=Logging(progress=False), on_nonfinite="skip")
    trainer.max_consecutive_skips = 3
    with pytest.raises(NonFiniteError, match="4 consecutive non-finite steps skipped at step 4"):
        trainer.fit()


# -- EMA -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("warmup", [False, True])
def test_ema_matches_the_recursion(warmup):
    net = nn.Linear(3, 2).double()
    ema = EMA(net, decay=0.9, warmup=warmup)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    for k in range(7):
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        beta = min(0.9, (1 + k) / (10 + k)) if warmup else 0.9
        for name, p in net.state_dict().items():
            expected[name] = beta * expected[name] + (1 - beta) * p
        ema.update(net)
    for name, value in ema.module.state_dict().items():
        torch.testing.assert_close(value, expected[name], rtol=1e-12, atol=1e-12)
    restored = EMA(net, decay=0.9, warmup=warmup)
    restored.load_state_dict(ema.state_dict())
    assert restored.n_updates == 7
    assert_equal_states(params_of(restored.module), params_of(ema.module))
    target = nn.Linear(3, 2).double()
    ema.copy_to(target)
    assert_equal_states(params_of(target), params_of(ema.module))


def test_ema_converges_to_a_constant_target():
    net = nn.Linear(1, 1, bias=False).double()
    ema = EMA(net, decay=0.5, warmup=False)
    w0 = float(ema.module.weight)
    with torch.no_grad():
        net.weight.fill_(2.0)
    for _ in range(10):
        ema.update(net)
    assert math.isclose(float(ema.module.weight), 2.0 + (w0 - 2.0) * 0.5**10, rel_tol=1e-12)


def test_ema_rejects_bad_decay():
    with pytest.raises(ValueError, match="decay"):
        EMA(nn.Linear(1, 1), decay=1.0)


# -- progressive N -------------------------------------------------------------------------------
def test_progressive_steps_schedule():
    schedule = ProgressiveSteps(5, 75, ramp_steps=100)
    values = [schedule(s) for s in range(1, 300)]
    assert values[0] == 5 and values[100] == 75 and values[-1] == 75
    assert all(a <= b for a, b in zip(values, values[1:]))
    assert set(values) == set(range(5, 76))
    coarse = ProgressiveSteps(5, 75, ramp_steps=100, every=25)
    assert len({coarse(s) for s in range(1, 200)}) == 5
    with pytest.raises(ValueError, match="n_start"):
        ProgressiveSteps(0, 5, 10)
    with pytest.raises(ValueError, match="step"):
        schedule(0)


def test_diffflow_model_uses_the_progressive_grid():
    from functools import partial

    torch.manual_seed(0)
    factory = partial(TimeGrid.power, t0=1e-3, t1=0.05, exponent=0.9)
    model = DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 0.2, factory,
                          StandardNormal((2,)), progressive=ProgressiveSteps(2, 6, 8))
    assert model.grid.n_steps == 6
    batch = torch.randn(4, 2)
    assert [model.loss(batch, s)[1]["n_steps"] for s in (1, 5, 9, 100)] == [2, 4, 6, 6]
    grid = model.training_grid(1)
    assert grid.n_steps == 2 and grid.t0 == pytest.approx(1e-3) and grid.t1 == pytest.approx(0.05)
    with pytest.raises(ValueError, match="factory"):
        DiffFlowModel(FourierMLP(2, 8, 1), FourierMLP(2, 8, 1), 0.2, TimeGrid.uniform(3, 0, 1),
                      StandardNormal((2,)), progressive=ProgressiveSteps(2, 6, 8))


def test_jittered_training_grids_differ_and_keep_end_points():
    model = tiny_diffflow()
    a, b = model.training_grid(1), model.training_grid(2)
    assert not torch.equal(a.ts, b.ts)
    assert torch.equal(a.ts[[0, -1]], model.grid.ts[[0, -1]])


# -- batch sources -------------------------------------------------------------------------------
def test_tensor_batches_state_round_trip_across_epochs():
    source = TensorBatches(torch.arange(20.0)[:, None], 6, seed=3)  # 3 batches per epoch
    for _ in range(2):
        source.next_batch()
    state = source.state_dict()
    ahead = [source.next_batch() for _ in range(5)]  # crosses into epochs 1 and 2
    fresh = TensorBatches(torch.arange(20.0)[:, None], 6, seed=99)
    fresh.load_state_dict(state)
    assert all(torch.equal(a, b) for a, b in zip(ahead, (fresh.next_batch() for _ in range(5))))


def test_tensor_batches_epoch_covers_data_once_and_shards_are_disjoint():
    data = torch.arange(24.0)[:, None]
    ranks = [TensorBatches(data, 4, seed=1, rank=r, world_size=2) for r in range(2)]
    seen = torch.cat([torch.cat([src.next_batch() for _ in range(3)]) for src in ranks])
    assert sorted(seen.flatten().tolist()) == list(range(24))
    with pytest.raises(ValueError, match="rank"):
        TensorBatches(data, 4, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        TensorBatches(data, 25)


# -- the model families and the trainer's arguments ----------------------------------------------
@pytest.mark.parametrize("family", ["diffflow", "score", "flow"])
def test_model_families_interface(family):
    torch.manual_seed(0)
    if family == "diffflow":
        model = tiny_diffflow()
    elif family == "score":
        model = ScoreModel(FourierMLP(2, 16, 1), VPSDE(), (2,), sample_steps=20, elbo_steps=20)
    else:
        model = FlowModel(FourierMLP(2, 16, 1), TimeGrid.power(5, 1e-3, 0.05, 0.9),
                          StandardNormal((2,)))
    x = torch.randn(16, 2)
    loss, info = model.loss(x, step=1)
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert all(isinstance(v, (int, float)) for v in info.values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    assert model.sample(5).shape == (5, 2)
    log_p, nelbo = model.log_likelihood(x), model.nelbo(x)
    assert log_p.shape == nelbo.shape == (16,)
    assert torch.isfinite(log_p).all() and torch.isfinite(nelbo).all()
    assert model.state_shape == (2,)


def test_trainer_rejects_bad_arguments():
    data = TensorBatches(torch.randn(8, 2), 4)
    with pytest.raises(ValueError, match="on_nonfinite"):
        Trainer(ScriptedLoss(), data, steps=1, on_nonfinite="ignore")
    with pytest.raises(TypeError, match="BatchSource"):
        Trainer(ScriptedLoss(), torch.randn(8, 2), steps=1)
    with pytest.raises(TypeError, match="loss"):
        Trainer(nn.Linear(2, 2), data, steps=1)
    with pytest.raises(ValueError, match="steps"):
        Trainer(ScriptedLoss(), data, steps=0)
    with pytest.raises(ValueError, match="distributed: need 0 <= rank < world_size"):
        Trainer(ScriptedLoss(), data, steps=1, distributed=DistributedContext(rank=1))
    with pytest.raises(TypeError, match="distributed must be a DistributedContext"):
        Trainer(ScriptedLoss(), data, steps=1, distributed=1)
    with pytest.raises(TypeError, match="optimization must be a Optimization or None"):
        Trainer(ScriptedLoss(), data, steps=1, optimization={"lr": 0.1})
    with pytest.raises(TypeError, match="checkpointing must be a Checkpointing"):
        Trainer(ScriptedLoss(), data, steps=1, checkpointing=10)
    for name in ("ema", "logging", "plots"):
        with pytest.raises(TypeError, match=f"^{name} must be a "):
            Trainer(ScriptedLoss(), data, steps=1, **{name: 1})
    with pytest.raises(ValueError, match="checkpointing.keep_every needs an out_dir"):
        Trainer(ScriptedLoss(), data, steps=1, checkpointing=Checkpointing(keep_every=2))
    with pytest.raises(ValueError, match="logging.tensorboard=True needs an out_dir"):
        Trainer(ScriptedLoss(), data, steps=1, logging=Logging(tensorboard=True))


@pytest.mark.parametrize(("build", "error", "match"), [
    (lambda: Optimization(lr=0), ValueError, r"Optimization\.lr must be a finite number > 0"),
    (lambda: Optimization(lr=float("nan")), ValueError, r"Optimization\.lr must be"),
    (lambda: Optimization(optimizer="adam"), TypeError,
     r"Optimization\.optimizer must be a factory params -> Optimizer"),
    (lambda: Optimization(scheduler=0.95), TypeError,
     r"Optimization\.scheduler must be a factory optimizer -> LR scheduler"),
    (lambda: Optimization(grad_clip=-1.0), ValueError,
     r"Optimization\.grad_clip must be a finite number > 0 or None, got -1\.0"),
    (lambda: EMAConfig(decay=1.0), ValueError, r"EMAConfig\.decay must be a number in \[0, 1\)"),
    (lambda: EMAConfig(warmup="yes"), TypeError, r"EMAConfig\.warmup must be a bool"),
    (lambda: EMAConfig(start=-1), ValueError, r"EMAConfig\.start must be an integer >= 0"),
    (lambda: Checkpointing(every=0), ValueError,
     r"Checkpointing\.every must be an integer >= 1 or None, got 0"),
    (lambda: Checkpointing(seconds=0), ValueError,
     r"Checkpointing\.seconds must be a finite number > 0 or None"),
    (lambda: Checkpointing(keep_every=2.5), ValueError,
     r"Checkpointing\.keep_every must be an integer >= 1 or None"),
    (lambda: Checkpointing(name="ckpt.json"), ValueError,
     r"Checkpointing\.name must be a plain file name ending in \.pt"),
    (lambda: Logging(every=0), ValueError, r"Logging\.every must be an integer >= 1, got 0"),
    (lambda: Logging(progress=None), TypeError, r"Logging\.progress must be a bool"),
    (lambda: Logging(tensorboard="on"), TypeError, r"Logging\.tensorboard must be a bool or None"),
    (lambda: Plots(every=-2), ValueError, r"Plots\.every must be an integer >= 1 or None"),
    (lambda: Plots(fn="plot.png"), TypeError, r"Plots\.fn must be a function"),
    (lambda: step_lr(0, 0.95), ValueError, r"step_lr: step_size must be an integer >= 1"),
    (lambda: step_lr(10, 0.0), ValueError, r"step_lr: gamma must be a finite number > 0"),
])
def test_option_errors_name_the_field(build, error, match):
    with pytest.raises(error, match=match):
        build()


def test_options_are_frozen_and_picklable():
    import pickle

    opt = Optimization(lr=0.5, scheduler=step_lr(3, 0.5))
    with pytest.raises(AttributeError):
        opt.lr = 1.0
    again = pickle.loads(pickle.dumps(opt))
    assert again.lr == 0.5
    optimizer = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=again.lr)
    schedule = again.scheduler(optimizer)
    assert isinstance(schedule, torch.optim.lr_scheduler.StepLR)
    assert (schedule.step_size, schedule.gamma) == (3, 0.5)


class _OtherRank(DistributedContext):
    """Rank 1 of 2 without a process group (the trainer sees no DDP, only its rank)."""

    @property
    def enabled(self) -> bool:
        return False


def test_non_main_rank_writes_nothing(tmp_path):
    trainer = make_trainer(tmp_path, 3, distributed=_OtherRank(rank=1, world_size=2))
    assert (trainer.rank, trainer.world_size, trainer.is_main) == (1, 2, False)
    trainer.fit()
    assert list(tmp_path.iterdir()) == []


def test_default_lr_is_constant_and_step_lr_decays():
    data = TensorBatches(torch.randn(16, 2), 4)
    constant = Trainer(ScriptedLoss(), data, steps=60, optimization=Optimization(lr=1.0),
                       logging=Logging(progress=False)).fit()
    assert constant.scheduler is None and constant.optimizer.param_groups[0]["lr"] == 1.0
    decayed = Trainer(ScriptedLoss(), TensorBatches(torch.randn(16, 2), 4), steps=60,
                      optimization=Optimization(lr=1.0, scheduler=step_lr(2, 0.95)),
                      logging=Logging(progress=False)).fit()
    assert decayed.optimizer.param_groups[0]["lr"] == pytest.approx(0.95**30)


def test_a_checkpoint_of_another_schedule_set_up_is_refused(tmp_path):
    make_trainer(tmp_path, 1, optimization=Optimization(lr=1e-2, scheduler=step_lr(2, 0.9))).fit()
    with pytest.raises(ValueError, match="LR schedule.*Optimization.scheduler"):
        make_trainer(tmp_path, 2).fit(resume=True)

"""Runs are never lost: SIGINT and SIGTERM stop training after a whole step with a checkpoint
that resumes to the uninterrupted run's numbers; a restarted run logs each step once; the
rolling checkpoint is also written by wall time."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from test_training import assert_equal_states, make_trainer, params_of, tiny_diffflow

from sdeflow.training import TrainingInterrupted, load_checkpoint
from sdeflow.training import trainer as trainer_module
from sdeflow.training.interrupts import StopRequests

STEPS = 8


def send_at(step: int, *signals: signal.Signals):
    """A callback that sends ``signals`` to this process after ``step``."""

    def callback(trainer, s, record):
        if s == step:
            for signum in signals:
                os.kill(os.getpid(), signum)

    return callback


def logged_steps(out: Path) -> list[int]:
    return [r["step"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("at", [5, 6])  # between scheduled checkpoints (every 3), and on one
def test_a_signal_stops_after_the_step_with_a_checkpoint_that_resumes_exactly(tmp_path, signum,
                                                                             at):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    run = tmp_path / "run"
    trainer = make_trainer(run, STEPS, callbacks=[send_at(at, signum)])
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit()
    assert (err.value.step, err.value.checkpoint) == (at, run / "checkpoint.pt")
    assert err.value.signal_name == signum.name and "fit(resume=True)" in str(err.value)
    assert {s: signal.getsignal(s) for s in before} == before  # the handlers are restored
    assert trainer.step == at and load_checkpoint(run / "checkpoint.pt")["step"] == at
    events = [r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
              if r.get("event") == "interrupt"]
    assert events == [{"event": "interrupt", "step": at, "signal": signum.name}]

    torch.manual_seed(777)  # the resumed run restores the RNG
    resumed = make_trainer(run, STEPS, model=tiny_diffflow(seed=3)).fit(resume=True)
    full = make_trainer(tmp_path / "full", STEPS).fit()
    assert resumed.step == STEPS
    assert_equal_states(params_of(full.model), params_of(resumed.model))
    assert_equal_states(params_of(full.eval_model), params_of(resumed.eval_model))
    assert logged_steps(run) == list(range(1, STEPS + 1))


def test_interrupt_without_out_dir_and_at_the_last_step(tmp_path):
    trainer = make_trainer(None, 4, callbacks=[send_at(2, signal.SIGTERM)])
    with pytest.raises(TrainingInterrupted) as err:
        trainer.fit()
    assert (err.value.step, err.value.checkpoint) == (2, None)
    # a signal in the last step: the run is complete, fit returns normally
    done = make_trainer(tmp_path, 4, callbacks=[send_at(4, signal.SIGTERM)]).fit()
    assert done.step == 4 and load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 4


def test_a_second_sigint_raises_keyboard_interrupt_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN in a shell's background job
    trainer = make_trainer(tmp_path, STEPS, callbacks=[send_at(5, signal.SIGINT, signal.SIGINT)])
    with pytest.raises(KeyboardInterrupt):
        trainer.fit()
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 3  # the scheduled one only
    assert signal.getsignal(signal.SIGINT) is before  # restored


def test_stop_requests_restore_the_previous_handlers():
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with StopRequests() as stop:
            os.kill(os.getpid(), signal.SIGTERM)
            os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM only repeats the request
        assert stop.requested and stop.signal_name == "SIGTERM" and seen == []
        os.kill(os.getpid(), signal.SIGTERM)
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_fresh_start_drops_the_records_of_a_run_killed_before_its_first_checkpoint(tmp_path):
    class Killed(RuntimeError):
        pass

    def kill(trainer, step, record):
        if step == 2:
            raise Killed

    with pytest.raises(Killed):
        make_trainer(tmp_path, STEPS, callbacks=[kill]).fit()
    assert not (tmp_path / "checkpoint.pt").exists() and logged_steps(tmp_path) == [1, 2]
    make_trainer(tmp_path, STEPS).fit(resume=True)  # no checkpoint: starts afresh
    assert logged_steps(tmp_path) == list(range(1, STEPS + 1))
    # a fresh fit() (resume=False) in a finished run's folder starts the log over, events too
    make_trainer(tmp_path, 2).fit()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [1, 2] and all("loss" in r for r in records)


def test_the_rolling_checkpoint_is_also_written_by_time(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    written = []

    def tick(trainer, step, record):  # each step takes 25 s; note what is on disk
        path = tmp_path / "checkpoint.pt"
        if path.exists() and (not written or written[-1] != load_checkpoint(path)["step"]):
            written.append(load_checkpoint(path)["step"])
        clock[0] += 25.0

    make_trainer(tmp_path, STEPS, checkpoint_every=None, seconds=60.0, tensorboard=False,
                 callbacks=[tick]).fit()
    # fit starts at t=0; a step's checkpoint is due once 60 s passed since the last one: the
    # decision of step s sees t = 25 (s - 1)
    assert written == [4, 7, 8]


def test_time_and_step_checkpoints_together(tmp_path, monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(trainer_module.time, "monotonic", lambda: clock[0])
    steps_on_disk = []

    def tick(trainer, step, record):
        steps_on_disk.append(load_checkpoint(tmp_path / "checkpoint.pt")["step"]
                             if (tmp_path / "checkpoint.pt").exists() else 0)
        clock[0] += 40.0

    make_trainer(tmp_path, 6, checkpoint_every=100, seconds=60.0, tensorboard=False,
                 callbacks=[tick]).fit()
    # every=100 never comes; 60 s do: after steps 3 (t=80) and 5 (t=160), and at the end
    assert steps_on_disk == [0, 0, 3, 3, 5, 6]

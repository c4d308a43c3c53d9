"""The ``sdeflow`` command on a tiny budget: ``train`` (every preset through one runner), its
short form ``toy``, ``sample`` and ``evaluate``, and runs that are never lost."""

from __future__ import annotations

import functools
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow.cli import MODELS, main
from sdeflow.data import TOY_DATASETS
from sdeflow.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--batch-size", "64", "--n-train", "512", "--n-test", "64", "--n-samples", "300",
        "--n-grid", "12", "--width", "16", "--depth", "1", "--log-every", "1", "--no-progress",
        "--threads", "1"]


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # --threads 1 sets them for the whole process
    yield
    torch.set_num_threads(threads)


def toy(out: Path, *extra: str, steps: int = 3, recipe: str | None = None) -> list[str]:
    chosen = [] if recipe is None else ["--recipe", recipe]
    return ["toy", "--steps", str(steps), *TINY, "--checkpoint-every", "2", "--out", str(out),
            *chosen, *extra]


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def loss_steps(out: Path) -> list[int]:
    return [r["step"] for r in records(out) if "loss" in r]


def same_weights(a: Path, b: Path) -> bool:
    sa, sb = (load_checkpoint(p / "checkpoint.pt") for p in (a, b))
    return sa["step"] == sb["step"] and all(
        torch.equal(v, sb["model"][k]) for k, v in sa["model"].items()) and all(
        torch.equal(v, sb["ema"]["module"][k]) for k, v in sa["ema"]["module"].items())


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_toy_end_to_end(tmp_path, model):
    out = tmp_path / "run"
    assert main(toy(out, "--model", model, "--dataset", "moons")) == 0
    for name in ("samples.png", "density.png", "loss.png"):
        assert (out / name).read_bytes()[:8] == PNG, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == model and metrics["dataset"] == "moons" and metrics["steps"] == 3
    for key in ("nll_ode_nats", "nll_ode_nats_data", "nll_elbo_nats", "nll_elbo_nats_data",
                "train_time_s", "eval_time_s", "log_abs_det_preprocessing"):
        assert math.isfinite(metrics[key]), key
    # data coordinates: -log p_x(x) = -log p_y(T(x)) - log|det dT/dx|
    log_det = metrics["log_abs_det_preprocessing"]
    assert metrics["nll_ode_nats_data"] == pytest.approx(metrics["nll_ode_nats"] - log_det)
    config = json.loads((out / "config.json").read_text())
    preset = "toy-2d-fast" if model == "diffflow" else "toy-2d"  # sdeflow toy's default recipe
    assert config["preset"] == preset and config["recipe"]["model"]["family"] == model
    assert config["recipe"]["train"]["batch_size"] == 64 and metrics["n_test"] == 64
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    assert loss_steps(out) == [1, 2, 3]


@pytest.mark.slow
def test_train_preset_equals_the_toy_short_form(tmp_path):
    """``sdeflow toy --recipe paper`` is ``sdeflow train --preset toy-2d`` with its overrides:
    identical metrics and weights."""
    assert main(toy(tmp_path / "toy", "--dataset", "moons", "--recipe", "paper")) == 0
    sets = ["model.family=diffflow", "data.dataset=moons", "data.train_size=512",
            "data.val_size=64", "train.iterations=3", "train.batch_size=64",
            "optimizer.lr=0.01", "train.precision=fp32", "train.gradient=backprop",
            "train.ema_warmup=true", "train.ema_start=0", "drift.width=16", "drift.depth=1",
            "score.width=16", "score.depth=1"]
    argv = ["train", "--preset", "toy-2d", "--out", str(tmp_path / "train"), "--n-samples",
            "300", "--n-grid", "12", "--log-every", "1", "--checkpoint-every", "2",
            "--no-progress", "--threads", "1"]
    assert main(argv + [a for s in sets for a in ("--set", s)]) == 0
    a, b = (json.loads((tmp_path / d / "metrics.json").read_text()) for d in ("toy", "train"))
    for key in ("nll_ode_nats", "nll_elbo_nats", "final_loss", "steps"):
        assert a[key] == b[key], key
    assert same_weights(tmp_path / "toy", tmp_path / "train")
    assert loss_steps(tmp_path / "toy") == loss_steps(tmp_path / "train") == [1, 2, 3]


def test_toy_fast_is_the_fast_preset_with_its_overrides(tmp_path):
    """``sdeflow toy`` (DiffFlow's default, ``--recipe fast``) trains ``toy-2d-fast``: its ramp
    of N, jittered grid and linear LR decay, at the command's sizes."""
    assert main(toy(tmp_path / "run", "--dataset", "moons", steps=2)) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    recipe = config["recipe"]
    assert config["preset"] == "toy-2d-fast"
    assert recipe["schedule"] == {"kind": "ramp", "n_start": 5, "n_end": 30,
                                  "ramp_fraction": 0.7}
    assert recipe["grid"]["jitter"] is True and recipe["optimizer"]["lr_schedule"] == "linear"
    assert (recipe["drift"]["width"], recipe["train"]["iterations"]) == (16, 2)  # TINY, steps


@pytest.mark.parametrize("extra, match", [
    (["--model", "score", "--recipe", "fast"], "--recipe fast trains DiffFlow"),
    (["--lr-step-epochs", "3"], "--lr-step-epochs sets toy-2d's StepLR"),
])
def test_toy_recipe_errors(tmp_path, capsys, extra, match):
    assert main(toy(tmp_path / "run", *extra, steps=1)) == 1
    assert match in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_rerun_resumes_exactly_and_says_so(tmp_path, capsys):
    # the paper recipe: its StepLR at these sizes does not depend on the run's length, so the
    # extended run equals the longer one (the fast recipe's LR decay and ramp of N stretch)
    paper = functools.partial(toy, recipe="paper")
    assert main(paper(tmp_path / "full", steps=4)) == 0
    split = tmp_path / "split"
    assert main(paper(split, steps=2)) == 0
    capsys.readouterr()
    assert main(paper(split, steps=4)) == 0  # the same command with more steps: extends
    assert f"extending {split} from 2 to 4 iterations, at step 2" in capsys.readouterr().err
    assert same_weights(tmp_path / "full", split)
    assert loss_steps(split) == [1, 2, 3, 4]
    assert main(paper(split, steps=4)) == 0  # finished: nothing to train
    assert "is finished (step 4 of 4)" in capsys.readouterr().err
    assert main(paper(split, steps=3)) == 1  # would end before the checkpoint
    assert "is at step 4; train.iterations=3 would end before it" in capsys.readouterr().err


def test_another_recipe_is_refused_naming_the_keys(tmp_path, capsys):
    assert main(toy(tmp_path, steps=1)) == 0
    capsys.readouterr()
    assert main(toy(tmp_path, "--lr", "0.5", "--set", "grid.t1=0.1", steps=1)) == 1
    err = capsys.readouterr().err
    assert "grid.t1: 0.05 -> 0.1" in err and "optimizer.lr: 0.01 -> 0.5" in err
    assert err.count("\n") == 1  # one line
    assert main(toy(tmp_path, "--seed", "3", steps=1)) == 1
    assert "seed: 0 -> 3" in capsys.readouterr().err
    assert main(toy(tmp_path, "--overwrite", "--seed", "3", steps=1)) == 0
    assert json.loads((tmp_path / "config.json").read_text())["seed"] == 3


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_overwrite_checks_the_device_before_deleting(tmp_path, capsys):
    assert main(toy(tmp_path, steps=1)) == 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(toy(tmp_path, "--overwrite", "--device", "cuda", steps=1)) == 1
    assert "CUDA is not available" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_overwrite_checks_the_data_before_deleting(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "cifar-b", "--smoke", "--out", str(run), "--no-progress",
                 "--fid-samples", "0", "--set", "train.iterations=1"]) == 0
    before = sorted(p.name for p in run.iterdir())
    assert main(["train", "--preset", "cifar-b", "--smoke", "--out", str(run), "--overwrite",
                 "--data-dir", str(tmp_path / "nowhere"), "--no-progress"]) == 1
    assert "nowhere" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before


def test_unusable_out_folders_are_named(tmp_path, capsys):
    file = tmp_path / "file"
    file.write_text("x")
    assert main(toy(file, steps=1)) == 1
    assert f"--out {file} is a file" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(toy(other, steps=1)) == 1
    assert "holds files but no config.json (notes.txt)" in capsys.readouterr().err
    assert main(toy(other, "--overwrite", steps=1)) == 0
    assert (other / "notes.txt").read_text() == "mine"  # --overwrite deletes run files only
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        assert main(toy(locked / "run", steps=1)) == 1
        assert "is not writable" in capsys.readouterr().err


def _spawn(argv: list[str]) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "sdeflow", *argv], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _wait_for(proc: subprocess.Popen, ready, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended early: {proc.communicate()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the run")
        time.sleep(0.005)


def _logged(out: Path) -> int:
    path = out / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


KILL_ARGS = ["--n-grid", "4", "--n-samples", "100"]


@pytest.mark.slow
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_killed_run_resumes_to_the_uninterrupted_numbers(tmp_path, when):
    steps, every = 300, 150
    argv = lambda out: toy(out, "--checkpoint-every", str(every), *KILL_ARGS,  # noqa: E731
                           steps=steps)
    assert main(argv(tmp_path / "full")) == 0
    run = tmp_path / "killed"
    proc = _spawn(argv(run))
    if when == "before":
        _wait_for(proc, lambda: _logged(run) >= 3 and not (run / "checkpoint.pt").exists())
    else:
        _wait_for(proc, lambda: (run / "checkpoint.json").exists() and _logged(run) > every + 3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run / "metrics.json").exists()  # it was killed mid-run
    assert main(argv(run)) == 0
    assert same_weights(tmp_path / "full", run)
    assert loss_steps(run) == list(range(1, steps + 1))  # each step once
    a, b = (json.loads((p / "metrics.json").read_text()) for p in (tmp_path / "full", run))
    assert a["nll_ode_nats"] == b["nll_ode_nats"] and a["final_loss"] == b["final_loss"]


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_saves_a_resumable_checkpoint_with_one_line(tmp_path, sig, code):
    run = tmp_path / "run"
    argv = toy(run, "--checkpoint-every", "1000", *KILL_ARGS, steps=300)
    proc = _spawn(argv)
    _wait_for(proc, lambda: _logged(run) >= 5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and "run the same command to resume" in lines[-1]
    step = load_checkpoint(run / "checkpoint.pt")["step"]
    assert 5 <= step < 300 and f"at step {step}" in lines[-1]
    assert main(argv) == 0
    assert loss_steps(run) == list(range(1, 301))


def test_unknown_names_list_the_valid_ones(capsys):
    for flag, bad, valid in [("--dataset", "spiral", TOY_DATASETS), ("--model", "vae", MODELS)]:
        with pytest.raises(SystemExit) as exit_info:
            main(["toy", flag, bad])
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert repr(bad) in err and all(name in err for name in valid)
    with pytest.raises(SystemExit):
        main(["train", "--preset", "cifar-c"])
    assert "cifar-b" in capsys.readouterr().err


@pytest.mark.parametrize("argv, message", [
    (["toy", "--lr", "nan"], "--lr: must be a finite number > 0, got nan"),
    (["toy", "--device", "tpu"], "--device: must be a torch device such as cpu, cuda or cuda:1"),
    (["toy", "--device", "mps"], "--device: must be cpu, cuda or cuda:N, got 'mps'"),
    (["toy", "--steps", "0"], "--steps: must be a positive integer, got 0"),
    (["sample", "RUN", "--lam", "-1"], "--lam: must be a finite number >= 0, got -1"),
])
def test_bad_numbers_and_devices_are_argument_errors(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_bad_recipe_entries_are_named(tmp_path, capsys):
    assert main(["train", "--preset", "toy-2d", "--out", str(tmp_path), "--set",
                 "grid.kind=spiral"]) == 1
    assert "grid.kind" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written


def test_python_dash_m_entry_point():
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "sdeflow", "toy", "--dataset", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr and "checkerboard" in done.stderr


def test_a_corrupt_checkpoint_is_named(tmp_path, capsys):
    assert main(toy(tmp_path, steps=1)) == 0
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-7])
    assert main(toy(tmp_path, steps=2)) == 1
    err = capsys.readouterr().err
    assert str(ckpt) in err


@pytest.mark.slow
def test_sample_and_evaluate_a_2d_run(tmp_path):
    run = tmp_path / "run"
    assert main(toy(run, "--dataset", "moons", steps=2)) == 0
    assert main(["sample", str(run), "--n", "50", "--steps", "7", "--lam", "0", "--out",
                 str(tmp_path / "s.npz"), "--no-progress"]) == 0
    with np.load(tmp_path / "s.npz") as f:
        assert f["samples"].shape == (50, 2) and int(f["steps"]) == 7
    assert main(["sample", str(run), "--n", "20", "--no-progress"]) == 0
    assert (run / "samples_lam1.png").read_bytes()[:8] == PNG  # the model's own grid
    assert main(["evaluate", str(run), "--n-samples", "100", "--n-grid", "6"]) == 0
    result = json.loads((run / "eval" / "2" / "eval.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    assert result["nll_elbo_nats"] == pytest.approx(metrics["nll_elbo_nats"])
    assert result["nll_ode_nats"] == pytest.approx(metrics["nll_ode_nats"], rel=1e-5)
    assert (run / "eval" / "2" / "density.png").read_bytes()[:8] == PNG
    from sdeflow.runs import evaluate

    with pytest.raises(ValueError, match="num_samples apply to image runs"):
        evaluate(run, num_samples=10)


@pytest.mark.slow
def test_train_sample_and_evaluate_a_smoke_image_run(tmp_path):
    run = tmp_path / "run"
    assert main(["train", "--preset", "mnist", "--smoke", "--out", str(run), "--no-progress",
                 "--fid-samples", "0"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["steps"] == 4 and math.isfinite(metrics["bpd_ode"])
    assert (run / "samples.png").read_bytes()[:8] == PNG
    assert main(["sample", str(run), "--n", "4", "--steps", "3", "--out",
                 str(tmp_path / "x.npz"), "--no-progress"]) == 0
    with np.load(tmp_path / "x.npz") as f:
        assert f["samples"].shape == (4, 1, 32, 32) and f["samples"].dtype == np.uint8
    assert main(["evaluate", str(run), "--no-fid", "--bpd-images", "2", "--no-progress"]) == 0
    result = json.loads((run / "eval" / "4" / "eval.json").read_text())
    assert math.isfinite(result["bpd"]["ode"]["mean"])
    assert (run / "eval" / "4" / "samples.png").read_bytes()[:8] == PNG  # without FID too

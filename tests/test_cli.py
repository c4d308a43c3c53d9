"""End-to-end runs of the main-job command ``sdeflow toy`` on a tiny budget."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sdeflow.cli import GRADIENTS, MODELS, build_toy_model, main
from sdeflow.data import TOY_DATASETS
from sdeflow.training import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()  # --threads 1 sets them for the whole process
    yield
    torch.set_num_threads(threads)


def tiny_args(out: Path, *extra: str, steps: int = 3) -> list[str]:
    return ["toy", "--steps", str(steps), "--batch-size", "64", "--n-train", "512",
            "--n-test", "64", "--n-samples", "300", "--n-grid", "12", "--width", "16",
            "--depth", "1", "--checkpoint-every", "2", "--log-every", "1", "--no-progress",
            "--threads", "1", "--out", str(out), *extra]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_toy_end_to_end(tmp_path, model):
    out = tmp_path / "run"
    assert main(tiny_args(out, "--model", model, "--dataset", "moons")) == 0
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
    assert metrics["nll_elbo_nats_data"] == pytest.approx(metrics["nll_elbo_nats"] - log_det)
    assert metrics["config"]["batch_size"] == 64 and metrics["n_test"] == 64
    assert load_checkpoint(out / "checkpoint.pt")["step"] == 3
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]


@pytest.mark.slow
def test_toy_resume_continues_exactly(tmp_path):
    assert main(tiny_args(tmp_path / "full", steps=4)) == 0
    assert main(tiny_args(tmp_path / "split", steps=2)) == 0
    assert main(tiny_args(tmp_path / "split", "--resume", steps=4)) == 0
    split = load_checkpoint(tmp_path / "split" / "checkpoint.pt")
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    assert split["step"] == full["step"] == 4
    for key, value in full["model"].items():
        assert torch.equal(value, split["model"][key]), key
    assert json.loads((tmp_path / "split" / "metrics.json").read_text())["steps"] == 4


def test_toy_refuses_to_clobber_a_run_and_checks_the_resumed_config(tmp_path, capsys):
    assert main(tiny_args(tmp_path, steps=1)) == 0
    with pytest.raises(SystemExit, match="--resume.*--overwrite"):
        main(tiny_args(tmp_path, steps=1))
    with pytest.raises(SystemExit, match="model: checkpoint 'diffflow' vs now 'flow'"):
        main(tiny_args(tmp_path, "--resume", "--model", "flow", steps=2))
    assert main(tiny_args(tmp_path, "--overwrite", steps=1)) == 0


@pytest.mark.parametrize("name, expected", zip(GRADIENTS, [
    "Backprop()", "StochasticAdjoint()", "Sharded(Backprop())", "Sharded(StochasticAdjoint())"]))
def test_gradient_names_build_the_strategies(name, expected):
    assert repr(build_toy_model("diffflow", width=8, depth=1, gradient=name).objective.gradient) \
        == expected


def test_sharded_gradient_run_and_its_misuse(tmp_path):
    out = tmp_path / "run"
    args = tiny_args(out, "--gradient", "sharded-adjoint", steps=2)
    args[args.index("--threads") + 1] = "2"
    assert main(args) == 0
    assert json.loads((out / "metrics.json").read_text())["config"]["gradient"] == "sharded-adjoint"
    with pytest.raises(SystemExit, match="--gradient adjoint applies to --model diffflow only, "
                                         "not score"):
        main(tiny_args(tmp_path / "score", "--model", "score", "--gradient", "adjoint"))
    with pytest.raises(ValueError, match="gradient must be one of backprop, adjoint"):
        build_toy_model("diffflow", gradient="sharded-backprop")


@pytest.mark.parametrize("flag, bad, valid", [("--dataset", "spiral", TOY_DATASETS),
                                              ("--model", "vae", MODELS)])
def test_unknown_names_list_the_valid_ones(capsys, flag, bad, valid):
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", flag, bad])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert repr(bad) in err and all(name in err for name in valid)


@pytest.mark.parametrize("flag, bad, message", [
    ("--lr", "nan", "--lr: must be a finite number > 0, got nan"),
    ("--lr", "0", "--lr: must be a finite number > 0, got 0"),
    ("--device", "tpu", "--device: must be a torch device such as cpu, cuda or cuda:1"),
    ("--device", "mps", "--device: must be cpu, cuda or cuda:N, got 'mps'"),
    ("--steps", "0", "--steps: must be a positive integer, got 0"),
])
def test_bad_numbers_and_devices_are_argument_errors(capsys, flag, bad, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["toy", flag, bad])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_python_dash_m_entry_point(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "sdeflow", "toy", "--dataset", "nope"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2
    assert "invalid choice: 'nope'" in done.stderr and "checkerboard" in done.stderr


def test_toy_resume_from_a_corrupt_checkpoint_names_it(tmp_path, capsys):
    assert main(tiny_args(tmp_path, steps=1)) == 0
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:-7])
    assert main(tiny_args(tmp_path, "--resume", steps=2)) == 1
    err = capsys.readouterr().err
    assert "truncated" in err and str(ckpt) in err

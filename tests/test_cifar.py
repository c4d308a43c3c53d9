"""End to end: ``sdeflow train --preset cifar-b --smoke`` on a tiny archive in the real CIFAR-10
format (loss finite, sample grid written, bits/dim reported, exact resume), its errors on
missing or damaged data, its GPU options (``--channels-last``, ``--compile``) and their
checkpoints; and ``benchmarks/cifar_train.py`` on tiny nets (variants, errors, time limit)."""

from __future__ import annotations

import copy
import importlib.util
import json
import math
import types
from pathlib import Path

import pytest
import torch
from conftest import needs_cpp_compiler

from sdeflow.cli import main
from sdeflow.data import write_tiny_cifar10_archive
from sdeflow.recipes import apply_overrides, build_model, load_recipe
from sdeflow.runs import ImageBatches, smoke_overrides
from sdeflow.training import TensorBatches, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
BENCHMARK = ROOT / "benchmarks" / "cifar_train.py"


def _load_benchmark():
    spec = importlib.util.spec_from_file_location("cifar_train_benchmark", BENCHMARK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_tiny_cifar10_archive(folder, n_train=24, n_test=8, seed=1)
    return folder


def _argv(data_dir: Path, out: Path, *extra: str, steps: int = 4) -> list[str]:
    # the generated archive is not CIFAR-10: its MD5 check is turned off explicitly; FID (real
    # Inception network, seconds per image on the CPU) is tested in tests/test_evaluate.py
    return ["train", "--preset", "cifar-b", "--smoke", "--data-dir", str(data_dir),
            "--no-verify", "--out", str(out), "--eval-size", "2", "--eval-every", "2",
            "--fid-samples", "0", "--no-progress", "--log-every", "1", "--plot-every", "2",
            "--checkpoint-every", "2", "--set", f"train.iterations={steps}", *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_smoke_run_then_resume_equals_uninterrupted(data_dir: Path, tmp_path: Path,
                                                     capsys) -> None:
    out = tmp_path / "run"
    assert main(_argv(data_dir, out, steps=2)) == 0
    assert json.loads((out / "metrics.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(_argv(data_dir, out, steps=4)) == 0  # the same command, more steps
    assert f"extending {out} from 2 to 4 iterations, at step 2" in capsys.readouterr().err
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == 4 and resumed["world_size"] == 1
    assert math.isfinite(resumed["final_loss"])
    # bits/dim by both routes, with the 8-bit dequantization term: a few bits/dim or more
    for key in ("bpd_elbo", "bpd_ode"):
        assert math.isfinite(resumed[key]) and resumed[key] > 1.0, (key, resumed[key])
    assert [e["step"] for e in _records(out / "eval.jsonl")] == [2, 4]
    records = _records(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in records)
    assert [r["n_steps"] for r in records if "loss" in r] == [2, 3, 4, 4]  # stepped N
    import matplotlib.image

    for grid in (out / "samples" / "step_000004.png", out / "samples.png"):
        image = matplotlib.image.imread(grid)
        assert image.shape[0] > 32 and image.shape[1] > 32 and image.shape[2] in (3, 4)

    # the same four steps without interruption: bit-identical weights, EMA and optimizer
    straight = tmp_path / "straight"
    assert main(_argv(data_dir, straight, steps=4)) == 0
    a = load_checkpoint(out / "checkpoint.pt")
    b = load_checkpoint(straight / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        sa, sb = (a[part] if part == "model" else a[part]["module"],
                  b[part] if part == "model" else b[part]["module"])
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (part, key)


def test_missing_data_dir_is_named(tmp_path: Path, capsys) -> None:
    missing = tmp_path / "no-such-folder"
    assert main(_argv(missing, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert str(missing) in err and "does not exist" in err
    assert not (tmp_path / "run").exists()  # nothing was written


def test_truncated_archive_is_named(data_dir: Path, tmp_path: Path, capsys) -> None:
    archive = data_dir / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    assert main(_argv(data_dir, tmp_path / "run")) == 1
    err = capsys.readouterr().err
    assert "truncated or corrupt" in err and str(archive) in err


def test_corrupt_archive_fails_its_md5(data_dir: Path, tmp_path: Path, capsys) -> None:
    # verification is on unless --no-verify: the generated archive is not the published one
    argv = [a for a in _argv(data_dir, tmp_path / "run") if a != "--no-verify"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "MD5" in err and str(data_dir / "cifar-10-python.tar.gz") in err


def test_an_image_recipe_needs_its_data(tmp_path: Path, capsys) -> None:
    assert main(["train", "--preset", "cifar-b", "--out", str(tmp_path / "run")]) == 1
    assert "needs --data-dir" in capsys.readouterr().err


# -- GPU options: --channels-last and --compile ------------------------------------------------
def test_gpu_layout_options_build_as_asked() -> None:
    tiny = apply_overrides(load_recipe("cifar-b"), smoke_overrides(load_recipe("cifar-b")))
    plain = build_model(tiny)
    model = build_model(tiny, channels_last=True, compile=True)
    for net in (model.drift_net, model.score_net):
        weight = net.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last)
        assert not weight.is_contiguous()
        assert net._compiled_call_impl is not None  # compiled in place (lazily: no work yet)
    assert plain.drift_net._compiled_call_impl is None
    assert not plain.drift_net.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    # the parameter names (hence the checkpoints) are the plain model's
    assert sorted(model.state_dict()) == sorted(plain.state_dict())
    # the EMA's deep copy is a plain, uncompiled network with its own weights
    clone = copy.deepcopy(model)
    assert clone.drift_net._compiled_call_impl is None
    assert clone.drift_net.conv_in.weight.data_ptr() != model.drift_net.conv_in.weight.data_ptr()


def test_channels_last_batches_hold_the_same_values() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    batches = {}
    for channels_last in (False, True):
        torch.manual_seed(3)  # the dequantization and flip noise
        source = ImageBatches(TensorBatches(images, 4, seed=0), channels_last=channels_last)
        batches[channels_last] = source.next_batch()
    assert batches[True].is_contiguous(memory_format=torch.channels_last)
    assert batches[False].is_contiguous()
    assert not batches[True].is_contiguous()
    assert torch.equal(batches[True], batches[False])


@pytest.mark.slow
def test_smoke_channels_last_trains_and_resumes(data_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main(_argv(data_dir, out, "--channels-last", steps=2)) == 0
    state = load_checkpoint(out / "checkpoint.pt")
    weight = state["model"]["drift_net.conv_in.weight"]
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert main(_argv(data_dir, out, "--channels-last", steps=4)) == 0
    resumed = json.loads((out / "metrics.json").read_text())
    assert resumed["steps"] == 4 and math.isfinite(resumed["final_loss"])
    records = _records(out / "metrics.jsonl")
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in records)
    final = load_checkpoint(out / "checkpoint.pt")
    assert final["step"] == 4
    assert not torch.equal(final["model"]["drift_net.conv_in.weight"], weight)  # it trained


@pytest.mark.slow  # compiling the tiny U-Nets takes a minute or more on a 2-core CPU
@needs_cpp_compiler
def test_smoke_compile_checkpoints_resume_with_or_without_it(data_dir: Path,
                                                             tmp_path: Path) -> None:
    compiled, plain = tmp_path / "compiled", tmp_path / "plain"
    assert main(_argv(data_dir, compiled, "--compile", steps=2)) == 0
    assert main(_argv(data_dir, plain, steps=2)) == 0
    a, b = load_checkpoint(compiled / "checkpoint.pt"), load_checkpoint(plain / "checkpoint.pt")
    assert sorted(a["model"]) == sorted(b["model"])  # no "_orig_mod." anywhere
    assert sorted(a["ema"]["module"]) == sorted(b["ema"]["module"])
    assert not any("_orig_mod" in key for key in a["model"])
    # compiled and eager compute the same losses (up to float32 rounding)
    la = [r["loss"] for r in _records(compiled / "metrics.jsonl") if "loss" in r]
    lb = [r["loss"] for r in _records(plain / "metrics.jsonl") if "loss" in r]
    assert la == pytest.approx(lb, rel=1e-4)
    # a compiled run resumes without --compile, a plain one with it
    assert main(_argv(data_dir, compiled, steps=3)) == 0
    assert main(_argv(data_dir, plain, "--compile", steps=3)) == 0
    for out in (compiled, plain):
        assert json.loads((out / "metrics.json").read_text())["steps"] == 3
        assert any(r.get("event") == "resume" and r["step"] == 2
                   for r in _records(out / "metrics.jsonl"))


# -- benchmarks/cifar_train.py -------------------------------------------------------------------
@pytest.fixture
def cifar_train():
    threads = torch.get_num_threads()
    yield _load_benchmark()
    torch.set_num_threads(threads)


def _bench_argv(out: Path, *extra: str) -> list[str]:
    return ["--small", "--device", "cpu", "--n-steps", "2", "--iters", "1", "--warmup", "1",
            "--batch-size", "2", "--adjoint-batch", "0", "--precisions", "fp32",
            "--gradients", "adjoint", "--out", str(out), *extra]


def test_benchmark_variants_and_a_failing_one(cifar_train, tmp_path: Path, monkeypatch) -> None:
    class Broken(torch.nn.Module):  # fails when first called, as a compilation failure does
        def __init__(self, net: torch.nn.Module) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("no compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", Broken)
    out = tmp_path / "ct.json"
    rows = cifar_train.main(_bench_argv(out, "--variants", "compile,base,channels_last"))
    assert [r["variant"] for r in rows] == ["compile", "base", "channels_last"]
    assert rows[0]["error"] == "RuntimeError: no compiler here" and "step_seconds" not in rows[0]
    for row in rows[1:]:  # the failure stopped nothing
        assert "error" not in row and row["step_seconds"] > 0 and row["images_per_s"] > 0
        assert row["warmup_seconds"] > 0
    saved = json.loads(out.read_text())
    assert saved["variants"] == ["compile", "base", "channels_last"]
    assert saved["rows"] == rows
    text = cifar_train.table(rows)
    assert "| variant |" in text and "| channels_last | fp32 | adjoint |" in text
    assert "RuntimeError: no compiler here" in text


def test_benchmark_default_is_one_base_variant(cifar_train, tmp_path: Path) -> None:
    args = cifar_train.parse_args(_bench_argv(tmp_path / "ct.json"))
    assert args.variants == ["base"]
    args = cifar_train.parse_args(_bench_argv(tmp_path / "ct.json", "--compile", "--channels-last"))
    assert args.variants == ["channels_last+compile"]
    args = cifar_train.parse_args(_bench_argv(tmp_path / "ct.json", "--variants",
                                            "compile+channels_last,base,base"))
    assert args.variants == ["channels_last+compile", "base"]
    # rows of an older JSON (no variant) still tabulate
    assert "| base | fp32 |" in cifar_train.table([{"precision": "fp32", "gradient": "adjoint",
                                                   "batch_size": 2, "n_steps": 2}])


@pytest.mark.parametrize("extra, message", [
    (["--variants", "base,fast"], "--variants"),
    (["--variants", ","], "--variants"),
    (["--variants", "compile", "--compile"], "--variants cannot be combined"),
    (["--variants", "compile", "--warmup", "0"], "--warmup"),
    (["--time-limit", "0"], "--time-limit"),
])
def test_benchmark_bad_arguments_are_named(cifar_train, tmp_path: Path, capsys, extra,
                                           message) -> None:
    with pytest.raises(SystemExit):
        cifar_train.parse_args(_bench_argv(tmp_path / "ct.json", *extra))
    assert message in capsys.readouterr().err


def test_benchmark_time_limit_skips_the_rest(cifar_train, tmp_path: Path, monkeypatch) -> None:
    clock = iter(range(0, 10_000, 10))  # every reading of the script's clock: 10 s later
    monkeypatch.setattr(cifar_train, "time", types.SimpleNamespace(
        perf_counter=lambda: float(next(clock))))
    ran = []

    def fake_run(args, nets, row, device):
        ran.append(row["variant"])
        row |= {"step_seconds": 1.0, "images_per_s": 2.0}
        return row

    monkeypatch.setattr(cifar_train, "run_config", fake_run)
    out = tmp_path / "ct.json"
    # started at 0; each configuration reads the clock once before it starts: 10, 20, ...
    rows = cifar_train.main(_bench_argv(out, "--variants", "base,channels_last",
                                      "--gradients", "backprop", "adjoint",
                                      "--time-limit", "25"))
    assert ran == ["base", "base"]
    assert [("skipped" in r) for r in rows] == [False, False, True, True]
    assert all("--time-limit 25 s" in r["skipped"] for r in rows[2:])
    assert json.loads(out.read_text())["rows"] == rows

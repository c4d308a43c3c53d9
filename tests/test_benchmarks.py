"""The benchmarks' own parts: the official-algorithm reference (same loss and gradients as
sdeflow, the official number of network calls, time features once per call), the CIFAR
benchmark's FLOP counting and rows, the paired before/after runner and the GPU summary."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
from sdeflow.gradients import Backprop
from sdeflow.nets import FourierMLP

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ROOT / "benchmarks"


def _load(name: str):
    """A benchmark script as a module (its folder on sys.path, for its sibling imports)."""
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def reference():
    return _load("reference_diffflow")


@pytest.fixture(scope="module")
def cifar_train():
    threads = torch.get_num_threads()
    yield _load("cifar_train")
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def paired():
    return _load("paired")


# -- the reference: the official algorithm -------------------------------------------------------
def _problem(reference, seed: int = 0, n: int = 6, b: int = 5):
    torch.manual_seed(seed)
    drift, score = FourierMLP(2, 8, 2).double(), FourierMLP(2, 8, 2).double()
    ref_d, ref_s = (reference.ReferenceFourierMLP.from_fourier_mlp(m) for m in (drift, score))
    grid = TimeGrid.power(n, 1e-3, 0.05, 0.9, dtype=torch.float64)
    x0 = torch.randn(b, 2, dtype=torch.float64)
    noise = torch.randn(n, b, 2, dtype=torch.float64)
    return drift, score, ref_d, ref_s, grid, x0, noise


@pytest.mark.parametrize("loss_name", ["reference_loss", "reference_adjoint_loss"])
def test_reference_matches_sdeflow_loss_and_gradients(reference, loss_name) -> None:
    drift, score, ref_d, ref_s, grid, x0, noise = _problem(reference)
    pairs = ref_d.parameter_pairs(drift) + ref_s.parameter_pairs(score)
    objective = DiffFlowObjective(ReverseSDE(ForwardSDE(drift, 0.2), score),
                                  StandardNormal((2,)).double(), grid, gradient=Backprop())
    ours = objective(x0, noise=noise).loss
    ours_grads = torch.autograd.grad(ours, [q for _, q in pairs])
    theirs = getattr(reference, loss_name)(ref_d, ref_s, x0, grid.ts, 0.2, noise)
    theirs_grads = torch.autograd.grad(theirs, [p for p, _ in pairs])
    # for a constant g the official loss is sdeflow's negative ELBO, constants included
    assert abs((theirs - ours).item()) <= 1e-10 * abs(ours.item())
    for (_, q), g_ref, g_ours in zip(pairs, theirs_grads, ours_grads):
        assert g_ours.abs().max() > 0
        err = (g_ref.reshape(g_ours.shape) - g_ours).abs().max() / g_ours.abs().max()
        assert err <= 1e-10, (tuple(q.shape), float(err))


def test_reference_network_is_fourier_mlp_with_features_once_per_call(reference) -> None:
    drift, _, ref_d, _, _, x0, _ = _problem(reference)
    t = torch.tensor(0.02, dtype=torch.float64)
    torch.testing.assert_close(ref_d(x0, t), drift(x0, t), rtol=1e-12, atol=1e-12)
    seen = []
    ref_d.time_embed.register_forward_hook(lambda m, inp, out: seen.append(inp[0].shape))
    ref_d(x0, t)
    assert seen == [torch.Size([1, 16])]  # (1, 2w): computed once, broadcast over the batch
    with pytest.raises(ValueError, match="one time"):
        ref_d(x0, torch.full((5,), 0.02, dtype=torch.float64))


class _Counting(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net, self.calls = net, 0

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.net(x, t)


@pytest.mark.parametrize("loss_name, per_step", [("reference_loss", (2, 1)),
                                                 ("reference_adjoint_loss", (4, 2))])
def test_reference_calls_the_networks_as_the_official_code(reference, loss_name,
                                                           per_step) -> None:
    """Naive: a fresh drift call at x_{i+1} (2N drift, N score). Adjoint: the same forward
    sweep, then per step drift and score at x_{i+1} and drift at x_i again (4N and 2N)."""
    _, _, ref_d, ref_s, grid, x0, noise = _problem(reference, n=4)
    drift, score = _Counting(ref_d), _Counting(ref_s)
    loss = getattr(reference, loss_name)(drift, score, x0, grid.ts, 0.2, noise)
    loss.backward()
    assert (drift.calls, score.calls) == (per_step[0] * 4, per_step[1] * 4)


def test_reference_draws_noise_per_step_when_not_given(reference) -> None:
    _, _, ref_d, ref_s, grid, x0, noise = _problem(reference)
    torch.manual_seed(3)
    drawn = reference.reference_loss(ref_d, ref_s, x0, grid.ts, 0.2)
    torch.manual_seed(3)
    steps = torch.stack([torch.randn_like(x0) for _ in range(grid.n_steps)])
    given = reference.reference_loss(ref_d, ref_s, x0, grid.ts, 0.2, steps)
    assert drawn.item() == given.item()
    with pytest.raises(ValueError, match="noise must have shape"):
        reference.reference_loss(ref_d, ref_s, x0, grid.ts, 0.2, noise[:-1])
    with pytest.raises(ValueError, match="g must be"):
        reference.reference_loss(ref_d, ref_s, x0, grid.ts, torch.ones(3), noise)


def test_train_step_checks_both_references_and_names_bad_arguments(capsys) -> None:
    train_step = _load("train_step")
    diffs = train_step.check_same_gradient()
    assert diffs["loss"] <= 1e-10 and diffs["gradient"] <= 1e-10
    with pytest.raises(SystemExit):
        train_step.parse_args(["--repeats", "0"])
    assert "--repeats" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        train_step.parse_args(["--strategies", "reference,Fastest"])
    assert "--strategies: unknown ['Fastest']" in capsys.readouterr().err
    args = train_step.parse_args(["--strategies", "reference-adjoint,Backprop", "--compile-mode",
                                  "reduce-overhead", "--steps", "30"])
    assert args.strategies == ["reference-adjoint", "Backprop"] and args.steps == [30]


# -- the CIFAR benchmark --------------------------------------------------------------------------
def test_flop_count_is_positive_and_doubles_with_the_batch(cifar_train) -> None:
    import argparse

    nets = cifar_train.build_nets(argparse.Namespace(small=True), frozenset(),
                                  torch.device("cpu"))
    counts = []
    for batch in (2, 4):
        step = cifar_train.TrainStep(nets, "adjoint", "fp32", batch, 2, torch.device("cpu"),
                                     image_size=cifar_train.SMALL_SIZE)
        flops, loss = cifar_train.count_flops(step)
        assert torch.isfinite(loss)
        counts.append(flops)
    assert counts[0] > 0
    assert counts[1] / counts[0] == pytest.approx(2.0, rel=0.01)


def test_cifar_train_small_cpu_rows(cifar_train, tmp_path: Path) -> None:
    out = tmp_path / "ct.json"
    rows = cifar_train.main(["--small", "--device", "cpu", "--n-steps", "2", "--iters", "1",
                             "--warmup", "1", "--configs", "base/fp32/adjoint/2",
                             "--sample-steps", "2", "--sample-batch", "2", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] == rows and [r["gradient"] for r in rows] == ["adjoint", "sampling"]
    for row in rows:
        for key in ("images_per_s", "seconds_per_step", "peak_memory_bytes", "flops_per_step",
                    "peak_share", "datasheet_share"):
            assert key in row, key
        assert row["images_per_s"] > 0 and row["flops_per_step"] > 0
        assert 0 < row["peak_share"] and row["datasheet_share"] is None  # no datasheet: CPU
    assert saved["summary"]["sampling"]["images_per_s"] == rows[1]["images_per_s"]
    assert "| base | fp32 | adjoint | 2 |" in out.with_suffix(".md").read_text()


def test_cifar_configs_and_levers_parse(cifar_train, tmp_path: Path, capsys) -> None:
    args = cifar_train.parse_args(["--configs", "base/bf16/adjoint/100,compile+channels_last/"
                                   "fp16/checkpointed:5/200", "--out", str(tmp_path / "x.json")])
    assert args.rows == [("base", "bf16", "adjoint", 100),
                         ("channels_last+compile", "fp16", "checkpointed:5", 200)]
    assert cifar_train.make_gradient("checkpointed:5").segment == 5
    grid = cifar_train.parse_args(["--batch-sizes", "100,200", "--precisions", "bf16",
                                   "--gradients", "adjoint", "--variants",
                                   "base,compile-reduce-overhead"])
    assert grid.rows == [("base", "bf16", "adjoint", 100), ("base", "bf16", "adjoint", 200),
                         ("compile-reduce-overhead", "bf16", "adjoint", 100),
                         ("compile-reduce-overhead", "bf16", "adjoint", 200)]
    assert cifar_train.compile_mode(frozenset({"compile-max-autotune"})) == (
        True, "max-autotune-no-cudagraphs")
    assert cifar_train.datasheet_rate("NVIDIA H200", "bf16") == 989e12
    assert cifar_train.datasheet_rate("cpu", "bf16") is None
    for bad, message in [(["--configs", "base/bf8/adjoint/100"], "precision"),
                         (["--configs", "base/bf16/checkpointed:0/100"], "checkpointed:K"),
                         (["--configs", "base/bf16/adjoint"], "variant/precision"),
                         (["--configs", "base/bf16/adjoint/0"], "batch"),
                         (["--configs", "base/bf16/adjoint/2", "--variants", "base"],
                          "cannot be combined"),
                         (["--variants", "compile+compile-max-autotune"], "more than one"),
                         (["--gradients", "adjoint", "sharded"], "--gradients"),
                         (["--batch-sizes", "100,x"], "--batch-sizes")]:
        with pytest.raises(SystemExit):
            cifar_train.parse_args(bad)
        assert message in capsys.readouterr().err, bad


# -- the paired runner ----------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["fast.py"], "script must be one of"),
    (["--rounds", "0", "train_step.py"], "--rounds"),
    (["--a", "no-such-revision-xyz", "train_step.py"], "--a: git knows no commit"),
    (["--b", "no-such-revision-xyz", "sampling.py"], "--b: git knows no commit"),
    (["train_step.py", "--", "--out", "x"], "--out"),
    (["--timeout", "0", "train_step.py"], "--timeout"),
])
def test_paired_bad_arguments_are_named(paired, capsys, argv, message) -> None:
    with pytest.raises(SystemExit):
        paired.parse_args(argv)
    assert message in capsys.readouterr().err


def test_paired_arguments_pass_through(paired) -> None:
    args = paired.parse_args(["--a", "HEAD", "--rounds", "2", "train_step.py", "--",
                              "--steps", "30", "--repeats", "3"])
    assert args.script_args == ["--steps", "30", "--repeats", "3"]
    assert len(args.a_commit) == 40 and args.b_commit == paired.WORKTREE


def test_paired_rows_are_median_ratios_per_round(paired) -> None:
    def run(times):
        return {"result": {"rows": [{"strategy": s, "n_steps": 30, "seconds": t}
                                    for s, t in times.items()]}}

    runs = [{"a": run({"Backprop": 2.0, "reference": 4.0}), "b": run({"Backprop": 1.0})},
            {"a": run({"Backprop": 3.0}), "b": run({"Backprop": 3.0, "reference": 4.0})},
            {"a": run({"Backprop": 1.0}), "b": {"error": "exit 1"}}]
    rows = {r["row"]: r for r in paired.pair_rows("train_step.py", runs)}
    backprop = rows["Backprop / 30"]
    assert backprop["rounds"] == 2
    assert backprop["ratio_b_over_a"] == pytest.approx(0.75)  # median of 0.5 and 1.0
    assert (backprop["ratio_min"], backprop["ratio_max"]) == (0.5, 1.0)
    assert backprop["a_seconds"] == 2.0 and backprop["b_seconds"] == 2.0
    assert rows["reference / 30"]["rounds"] == 0 and rows["reference / 30"]["ratio_b_over_a"] \
        is None


def test_paired_exports_a_revision(paired, tmp_path: Path) -> None:
    paired.export_tree(paired.resolve("HEAD"), tmp_path / "tree")
    assert (tmp_path / "tree" / "sdeflow" / "__init__.py").is_file()
    assert not (tmp_path / "tree" / ".git").exists()


# -- the GPU summary ------------------------------------------------------------------------------
def test_gpu_summary_marks_targets(tmp_path: Path) -> None:
    summary = _load("gpu_summary")
    row = {"variant": "base", "precision": "bf16", "gradient": "adjoint", "n_steps": 30,
           "peak_memory_gib": 11.0, "peak_share": 0.05}
    (tmp_path / "cifar_train.json").write_text(json.dumps({"rows": [
        row | {"batch_size": 100, "images_per_s": 28.9, "step_seconds": 3.46, "label": "today"},
        row | {"batch_size": 100, "images_per_s": 120.0, "step_seconds": 0.83,
               "gradient": "checkpointed:5"},
        row | {"batch_size": 800, "error": "out of memory"},
        row | {"batch_size": 200, "images_per_s": 90.0, "step_seconds": 2.2, "n_steps": 100,
               "gradient": "sampling"}]}))
    (tmp_path / "train_step.json").write_text(json.dumps({"config": {"batch": 5000}, "rows": [
        {"strategy": "Backprop", "n_steps": 30, "seconds": 0.085},
        {"strategy": "Backprop [compile reduce-overhead]", "n_steps": 30, "seconds": 0.02}]}))
    text = summary.main([str(tmp_path)])
    lines = text.splitlines()
    assert any("today" in line and "not met" in line for line in lines)
    assert any("checkpointed:5" in line and ">= 115 images/s: met" in line for line in lines)
    assert any("fastest at batch 100" in line and "120.0 images/s" in line for line in lines)
    assert any("out of memory" in line for line in lines)
    assert any("sampling" in line and "90.0 images/s" in line for line in lines)
    assert any("reduce-overhead" in line and ": met" in line for line in lines)
    assert any(line.startswith("| 2D train step | Backprop,") and "not met" in line
               for line in lines)
    assert (tmp_path / "summary.md").read_text() == text


# -- time_to_quality.py --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ttq():
    return _load("time_to_quality")


def test_time_to_quality_schedules(ttq) -> None:
    ramp = ttq.Arm(n=(5, 30, 0.5))
    assert [ttq.n_at(ramp, f) for f in (0.0, 0.25, 0.5, 1.0)] == [5, 18, 30, 30]
    assert ttq.n_at(ttq.Arm(n=10), 0.7) == 10
    linear, cosine = ttq.Arm(lr=1.0), ttq.Arm(lr=1.0, schedule="cosine", warmup=0.1)
    assert [ttq.lr_at(linear, f) for f in (0.0, 0.5, 1.0)] == pytest.approx([1.0, 0.55, 0.1])
    assert [ttq.lr_at(cosine, f) for f in (0.05, 0.1, 1.0)] == pytest.approx([0.5, 1.0, 0.1])


def test_warm_start_targets_are_the_paths_drift_and_score(ttq) -> None:
    r"""For Gaussian data :math:`x_0 \sim N(0, s^2 I)` the linear path on :math:`[t_0, t_1]` has
    :math:`\operatorname{var}_u = (1-u)^2 s^2 + u^2`, score :math:`-x / \operatorname{var}_u` and
    the forward drift with its marginals :math:`f^* = [(u - (1-u) s^2) / \Delta - g^2/2]\,x /
    \operatorname{var}_u`: the warm-start loss is stationary there (its derivative along a
    scaling of each network vanishes), and not at a scaled field."""
    cfg = ttq.Config()
    model = ttq.RampedDiffFlow(cfg)
    s, delta = 0.7, cfg.t1 - cfg.t0

    class Field(torch.nn.Module):
        def __init__(self, kind: str) -> None:
            super().__init__()
            self.kind, self.c = kind, torch.nn.Parameter(torch.tensor(1.0, dtype=torch.float64))

        def forward(self, x, t):
            u = ((t - cfg.t0) / delta).to(x.dtype)[:, None]
            var = (1 - u) ** 2 * s**2 + u**2
            if self.kind == "score":
                return self.c * (-x / var)
            return self.c * (((u - (1 - u) * s**2) / delta - 0.5 * cfg.g**2) * x / var)

    model.drift, model.score = Field("drift"), Field("score")
    x = s * torch.randn(400_000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))

    def grads(c: float) -> tuple[float, float]:
        for f in (model.drift, model.score):
            f.c.data.fill_(c)
            f.c.grad = None
        model.warm_loss(x, torch.Generator().manual_seed(2)).backward()
        return float(model.drift.c.grad), float(model.score.c.grad)

    at_optimum, scaled = grads(1.0), grads(1.2)
    for g0, g1 in zip(at_optimum, scaled):
        assert abs(g0) < 0.02 * abs(g1), (at_optimum, scaled)


def test_subsampled_steps_is_exact_at_all_steps_and_unbiased_at_half(ttq) -> None:
    """The step-subsampling lever: with every step drawn it is Backprop to the last bit; with half
    of them (weights N / K) its mean over draws is the full loss, in float64."""
    cfg = ttq.Config()
    model = ttq.RampedDiffFlow(replace(cfg, n_steps=6, width=16, depth=1)).double()
    model.grid = ttq.TimeGrid.power(6, cfg.t0, cfg.t1, cfg.exponent, dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, dtype=torch.float64, generator=gen)
    noise = torch.randn(6, 64, 2, dtype=torch.float64, generator=gen)
    reverse, prior = model.parts()
    prior = prior.to(torch.float64)

    def loss(gradient=None) -> torch.Tensor:
        objective = ttq.DiffFlowObjective(reverse, prior, model.grid, gradient=gradient)
        return objective(x, noise=noise).loss.detach()

    full = loss()
    assert loss(ttq.SubsampledSteps(1.0, torch.Generator())) == full
    draw = torch.Generator().manual_seed(1)
    half = torch.stack([loss(ttq.SubsampledSteps(0.5, draw)) for _ in range(400)])
    assert half.std() > 0  # it does draw
    assert abs(half.mean() - full) < 4 * half.std() / 20, (float(half.mean()), float(full))


def test_antithetic_batch_pairs_each_sample_with_negated_noise(ttq, monkeypatch) -> None:
    cfg = ttq.Config()
    model = ttq.build(replace(ttq.ARMS["fast-anti"], width=16), replace(cfg, depth=1))
    seen = {}

    def spy(self, x0, grid=None, *, noise=None, generator=None, **kwargs):
        seen.update(x0=x0, noise=noise)
        return original(self, x0, grid, noise=noise, generator=generator, **kwargs)

    original = ttq.DiffFlowObjective.forward
    monkeypatch.setattr(ttq.DiffFlowObjective, "forward", spy)
    x = torch.randn(10, 2)
    model.loss(x, torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen["x0"], torch.cat([x[:5], x[:5]]))
    torch.testing.assert_close(seen["noise"][:, 5:], -seen["noise"][:, :5])


def test_time_to_quality_merges_runs_made_side_by_side(ttq, tmp_path: Path) -> None:
    def payload(arm: str, nll: float, budget: float = 150.0) -> dict:
        curve = {"seconds": [75.0, 150.0], "steps": [10, 20], "nll": [nll + 0.1, nll],
                 "nll_se": [0.01, 0.01]}
        row = {"nll": nll, "nll_se": 0.004, "steps": 20, "curve": curve}
        return {"budget_seconds": budget, "arms": [arm], "arm_specs": {arm: {}},
                "environment": {"threads": 1}, "results": {"moons": {arm: row}}}

    paths = []
    for arm, nll in (("fast", 1.9), ("nsf-3e-3", 1.8)):
        paths.append(tmp_path / f"{arm}.json")
        paths[-1].write_text(json.dumps(payload(arm, nll)))
    assert ttq.main(["--merge", *map(str, paths), "--out", str(tmp_path), "--tag", "_m"]) == 0
    merged = json.loads((tmp_path / "time_to_quality_m.json").read_text())
    assert merged["arms"] == ["fast", "nsf-3e-3"]
    assert set(merged["results"]["moons"]) == {"fast", "nsf-3e-3"}
    table = (tmp_path / "time_to_quality_m.md").read_text()
    assert "| moons | 1.900 ± 0.004 (20) | **1.800 ± 0.004 (20)** |" in table
    assert (tmp_path / "time_to_quality_m_moons.png").stat().st_size > 0
    paths[1].write_text(json.dumps(payload("nsf-3e-3", 1.8, budget=300.0)))
    with pytest.raises(SystemExit, match="different budgets"):
        ttq.main(["--merge", *map(str, paths), "--out", str(tmp_path)])


def test_time_to_quality_quick_run_writes_curves(ttq, tmp_path: Path) -> None:
    assert ttq.main(["--quick", "--datasets", "moons", "--arms", "fast", "warm", "fm",
                     "--out", str(tmp_path)]) == 0
    payload = json.loads((tmp_path / "time_to_quality.json").read_text())
    rows = payload["results"]["moons"]
    assert set(rows) == {"fast", "warm", "fm"} and payload["budget_seconds"] == 3.0
    for row in rows.values():
        curve = row["curve"]
        assert row["steps"] > 0 and len(curve["seconds"]) == 2
        assert curve["seconds"] == sorted(curve["seconds"]) and all(
            torch.isfinite(torch.tensor(curve["nll"])))
    assert "| moons |" in (tmp_path / "time_to_quality.md").read_text()

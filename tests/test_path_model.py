"""The path-matching model family (issue 21): PathMatchingModel trains, samples and scores; the
"path_matching" recipe family and the flow-matching presets go through sdeflow train / sample /
evaluate; the presets hold their cited values."""

from __future__ import annotations

import json

import pytest
import torch

from sdeflow import VPSDE, LinearPath, MinibatchOTCoupling, TimeGrid
from sdeflow.nets import TimeMLP
from sdeflow.recipes import apply_overrides, build_model, load_recipe, sampling_grid
from sdeflow.runs import smoke_overrides
from sdeflow.training import PathMatchingModel

F64 = torch.float64


def _model(path=None, grid=None, **kwargs) -> PathMatchingModel:
    torch.manual_seed(0)
    grid = grid or TimeGrid.uniform(8, 0.0, 1.0, dtype=F64)
    return PathMatchingModel(TimeMLP(2, 32, 2).double(), path or LinearPath(), grid, (2,),
                             **kwargs).double()


@pytest.mark.parametrize("coupling", [None, MinibatchOTCoupling()])
def test_loss_falls_on_gaussian_data(coupling):
    model = _model(coupling=coupling)
    gen = torch.Generator().manual_seed(1)
    data = 0.5 * torch.randn(4096, 2, generator=gen, dtype=F64) + torch.tensor([1.0, -1.0],
                                                                              dtype=F64)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)

    def held_out() -> float:  # the loss on a fixed batch with fixed times and noise
        torch.manual_seed(5)
        with torch.no_grad():
            return float(model.loss(data[:1024], 0)[0])

    before = held_out()
    for step in range(60):
        batch = data[torch.randint(0, 4096, (256,), generator=gen)]
        loss, info = model.loss(batch, step)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert set(info) == {"path_matching"}
    assert held_out() < 0.7 * before


def test_exact_likelihood_equals_the_distribution_and_the_one_pass_density():
    model = _model()
    x = torch.randn(5, 2, dtype=F64, generator=torch.Generator().manual_seed(2))
    tight = {"rtol": 1e-9, "atol": 1e-9}
    d = model.distribution(**tight)
    torch.testing.assert_close(model.log_likelihood(x, **tight), d.log_prob(x), rtol=0,
                               atol=1e-10)
    samples, log_p = d.sample_and_log_prob((4,), generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.log_likelihood(samples, **tight), log_p, rtol=0,
                               atol=1e-6)
    # the linear path has no SDE form at t1 = 1: nelbo is the exact NLL and says so
    assert not model.stochastic and model.nelbo_kind.startswith("exact NLL")
    torch.testing.assert_close(model.nelbo(x), -model.log_likelihood(x), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="sde_sampler"):
        model.distribution("sde_sampler")


def test_sampling_ode_adaptive_euler_and_the_reverse_family_on_a_vp_path():
    model = _model()
    torch.manual_seed(0)
    assert model.sample(7).shape == (7, 2)
    grid = TimeGrid.uniform(3, 0.0, 1.0, dtype=F64)
    torch.manual_seed(1)
    euler = model.sample(4, lam=0.0, grid=grid)
    torch.manual_seed(1)  # the same prior draw pushed by Euler steps of the same field
    x = model.prior().sample((4,))
    for t, s in zip(grid.ts.flip(0)[:-1], grid.ts.flip(0)[1:]):
        x = x + (s - t) * model.ode.drift(x, t)
    torch.testing.assert_close(euler, x.detach(), rtol=0, atol=1e-12)
    # a VP path has an SDE form: lam > 0 samples the reverse family, nelbo is the bound
    vp = _model(VPSDE(), TimeGrid.uniform(8, 1e-3, 1.0, dtype=F64), target="noise",
                weighting="noise")
    assert vp.stochastic and vp.nelbo_kind.startswith("trajectory")
    assert vp.sample(5, lam=1.0).shape == (5, 2)
    x = torch.randn(6, 2, dtype=F64)
    assert vp.nelbo(x).shape == (6,) and bool(torch.isfinite(vp.nelbo(x)).all())
    assert vp.distribution("sde_sampler", lam=0.5).sample((3,)).shape == (3, 2)


def _tiny(name: str) -> dict:
    base = load_recipe(name)
    return apply_overrides(base, smoke_overrides(base))


def test_recipe_family_builds_and_validates_by_name():
    recipe = _tiny("flow-matching")
    model = build_model(recipe)
    assert isinstance(model, PathMatchingModel) and isinstance(model.path, LinearPath)
    assert sampling_grid(recipe, 5).n_steps == 5
    vp = apply_overrides(recipe, ["path.kind=vp", "path.beta_max=10.0", "grid.t0=0.001",
                                  "model.target=noise", "model.time=logit_normal",
                                  "model.time_scale=0.5", "model.coupling=minibatch_ot"])
    model = build_model(vp)
    assert float(model.path.beta_max) == 10.0 and model.objective.time.scale == 0.5
    assert isinstance(model.objective.coupling, MinibatchOTCoupling)
    for override, message in (("path.kind=spiral", "path.kind must be one of"),
                              ("model.target=drift", "model.target must be one of"),
                              ("model.coupling=greedy", "model.coupling must be one of"),
                              ("model.time=beta", "model.time must be one of"),
                              ("model.target=noise", "model.target 'noise' does not determine"),
                              ("path.sigma=1.0", "unknown key .sigma. in .path.")):
        with pytest.raises(ValueError, match=message):
            build_model(apply_overrides(recipe, [override]))


def test_presets_hold_their_cited_values():
    fm = load_recipe("flow-matching")  # Meta's examples/2d_flow_matching.ipynb
    assert fm["model"] == {"family": "path_matching", "target": "velocity",
                           "weighting": "target", "time": "uniform", "coupling": "independent"}
    assert fm["path"] == {"kind": "linear"} and fm["data"]["dataset"] == "checkerboard"
    assert fm["drift"] == {"net": "mlp", "width": 512, "depth": 4, "activation": "silu"}
    assert fm["optimizer"] == {"name": "adam", "lr": 1e-3, "lr_schedule": "constant"}
    assert (fm["train"]["batch_size"], fm["train"]["iterations"]) == (4096, 20001)
    assert "grad_clip" not in fm["train"] and fm["train"]["ema"] == 0.0
    assert fm["schedule"] == {"kind": "fixed", "n": 20}  # step_size 0.05
    assert sum(p.numel() for p in build_model(fm).net.parameters()) == 791_042
    cfm = load_recipe("flow-matching-cifar")  # TorchCFM examples/images/cifar10
    assert cfm["model"]["coupling"] == "minibatch_ot" and cfm["model"]["ot_method"] == "exact"
    assert {k: cfm["drift"][k] for k in ("ch", "ch_mult", "num_res_blocks",
                                         "attn_resolutions", "dropout")} == {
        "ch": 128, "ch_mult": [1, 2, 2, 2], "num_res_blocks": 2, "attn_resolutions": [16],
        "dropout": 0.1}
    assert (cfm["optimizer"]["lr"], cfm["optimizer"]["lr_warmup"]) == (2e-4, 5000)
    train = cfm["train"]
    assert (train["batch_size"], train["iterations"], train["ema"], train["grad_clip"]) == (
        128, 400001, 0.9999, 1.0)
    assert cfm["data"]["dequantize"] is False and cfm["data"]["random_flip"] is True


@pytest.mark.parametrize("name", ["flow-matching", "flow-matching-cifar"])
def test_preset_files_cite_every_value(name):
    from importlib import resources

    text = resources.files("sdeflow.recipes").joinpath(name.replace("-", "_") + ".toml")
    for line in text.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[", " ")) and \
                line.split("=")[0].strip() not in ("name", "official", "description"):
            assert "#" in line, f"{name}: uncited value {line!r}"


def test_train_sample_evaluate_end_to_end(tmp_path):
    from sdeflow.cli import main

    run = tmp_path / "fm"
    assert main(["train", "--preset", "flow-matching", "--smoke", "--out", str(run),
                 "--no-progress", "--n-samples", "64", "--n-grid", "6"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["model"] == "path_matching" and metrics["steps"] == 4
    assert metrics["elbo_kind"].startswith("exact NLL")
    # the ELBO column is the exact NLL: the same number as the ODE's
    assert metrics["nll_elbo_nats"] == pytest.approx(metrics["nll_ode_nats"], abs=1e-3)
    out = tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "10", "--lam", "0", "--out", str(out),
                 "--no-progress"]) == 0
    import numpy as np

    assert np.load(out)["samples"].shape == (10, 2)
    assert main(["evaluate", str(run), "--no-progress", "--n-samples", "64",
                 "--n-grid", "6"]) == 0
    assert (run / "eval" / "4" / "eval.json").exists()


def test_trained_run_likelihood_equals_its_distribution(tmp_path):
    from sdeflow.cli import main
    from sdeflow.runs import load_run

    run = tmp_path / "fm"
    main(["train", "--preset", "flow-matching", "--smoke", "--out", str(run), "--no-progress",
          "--n-samples", "32", "--n-grid", "4"])
    model = load_run(run).model.double()
    x = torch.randn(4, 2, dtype=F64, generator=torch.Generator().manual_seed(0))
    tight = {"rtol": 1e-9, "atol": 1e-9}
    torch.testing.assert_close(model.log_likelihood(x, **tight),
                               model.distribution(**tight).log_prob(x), rtol=0, atol=1e-10)

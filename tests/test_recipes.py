"""The recipes (sdeflow.recipes): each official preset holds DESIGN.md section 4's values, typed in
here from that table; overrides; the builder; the data scaling of the example."""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pytest
import torch

from sdeflow import GRIDS, TimeGrid
from sdeflow.recipes import (
    FAMILIES,
    RECIPES,
    apply_overrides,
    build_model,
    final_steps,
    grid_factory,
    load_recipe,
    parse_override,
    state_shape,
    steps_schedule,
    time_scale,
    trainer_options,
    validate_recipe,
)
from sdeflow.recipes.data import scale_images, to_uint8

ROOT = Path(__file__).resolve().parents[1]

# DESIGN.md section 4, "Common (trainer/base)": clipping 1.0, EMA 0.999 after 10 updates every
# step, fp16 autocast with a gradient scaler, the stochastic adjoint.
COMMON = {"grad_clip": 1.0, "ema": 0.999, "ema_start": 10, "ema_every": 1, "ema_warmup": False,
          "precision": "fp16", "gradient": "adjoint"}


def _common(recipe: dict) -> None:
    for key, value in COMMON.items():
        assert recipe["train"][key] == value, key
    assert recipe["official"] is True
    assert recipe["optimizer"]["name"] == "adam"


def test_recipe_names() -> None:
    assert set(RECIPES) == {"toy-2d", "mnist", "cifar-a", "cifar-b", "sdeflow-cifar",
                            "toy-2d-fast", "flow-matching", "flow-matching-cifar"}
    for name in RECIPES:
        assert load_recipe(name)["name"] == name
    with pytest.raises(ValueError, match="recipe must be one of"):
        load_recipe("cifar-c")


def test_toy_2d_is_design_section_4() -> None:
    r = load_recipe("toy-2d")
    _common(r)
    # grid: N=30, [1e-3, 0.05], power 0.9; N during training 30; g 0.2 constant
    assert r["grid"] == {"kind": "power", "t0": 1e-3, "t1": 0.05, "exponent": 0.9,
                         "jitter": False}
    assert r["schedule"] == {"kind": "fixed", "n": 30}
    assert r["process"]["g"] == 0.2
    # Fourier MLP width 128, 3 layers, drift and score; time input t itself
    for net in (r["drift"], r["score"]):
        assert net == {"net": "fourier_mlp", "width": 128, "depth": 3, "time_input": "t"}
    # Adam 1e-2; StepLR gamma 0.95, step_size 2, stepped once per epoch
    assert (r["optimizer"]["lr"], r["optimizer"]["lr_schedule"], r["optimizer"]["lr_gamma"],
            r["optimizer"]["lr_step_epochs"]) == (1e-2, "step", 0.95, 2)
    # batch 5000, 3000 iterations (30 epochs); data scaled to max abs 0.85, standardized
    assert (r["train"]["batch_size"], r["train"]["iterations"], r["train"]["epochs"]) == \
        (5000, 3000, 30)
    assert (r["data"]["max_abs"], r["data"]["standardize"]) == (0.85, True)
    # the LR decays every 2 epochs of 100 iterations
    assert trainer_options(r)["lr_step_size"] == 200
    # data/ps.yaml: dataset "olympic", a real 2D set of sdeflow's
    assert r["data"]["dataset"] == "olympic"
    assert (r["model"]["family"], r["train"]["discretizer"]) == ("diffflow", "euler_maruyama")


def test_mnist_is_design_section_4() -> None:
    r = load_recipe("mnist")
    _common(r)
    # N=30, [1e-3, 0.1], power 0.5; g 1 constant
    assert r["grid"] == {"kind": "power", "t0": 1e-3, "t1": 0.1, "exponent": 0.5,
                         "jitter": False}
    assert r["schedule"] == {"kind": "fixed", "n": 30}
    assert r["process"]["g"] == 1.0
    # lucidrains-style U-Net dim 64, mults 1,2,4,8; the score net the same; t itself
    for net in (r["drift"], r["score"]):
        assert net == {"net": "lucid_unet", "dim": 64, "dim_mults": [1, 2, 4, 8],
                       "time_input": "t"}
    # Adam 2e-4; 64 per GPU, 100 epochs
    assert (r["optimizer"]["lr"], r["optimizer"]["lr_schedule"]) == (2e-4, "constant")
    assert (r["train"]["batch_size"], r["train"]["epochs"]) == (64, 100)
    # the official DataLoader keeps the last partial batch (drop_last=False): 938 per epoch
    assert r["train"]["iterations"] == 100 * math.ceil(60_000 / 64) == 93_800
    # 32x32, x/255 to [-1, 1], no flip, no dequantization. DESIGN says "padded"; the official
    # datasets/image_dataset.py resizes (transforms.Resize(32)), which the recipe follows
    assert (r["data"]["dataset"], r["data"]["channels"], r["data"]["image_size"],
            r["data"]["resize"], r["data"]["random_flip"], r["data"]["dequantize"]) == \
        ("mnist", 1, 32, "bilinear", False, False)


def test_cifar_a_is_design_section_4() -> None:
    r = load_recipe("cifar-a")
    _common(r)
    # N=30, [1e-4, 0.1], power 0.5; N during training 30; g 1
    assert r["grid"] == {"kind": "power", "t0": 1e-4, "t1": 0.1, "exponent": 0.5,
                         "jitter": False}
    assert r["schedule"] == {"kind": "fixed", "n": 30}
    assert r["process"]["g"] == 1.0
    # drift lucidrains-style dim 128, score dim 64, mults 1,2,4,8; t itself
    assert r["drift"] == {"net": "lucid_unet", "dim": 128, "dim_mults": [1, 2, 4, 8],
                          "time_input": "t"}
    assert r["score"] == {"net": "lucid_unet", "dim": 64, "dim_mults": [1, 2, 4, 8],
                          "time_input": "t"}
    # Adam 2e-4; 100 per GPU, 100 epochs = 50k iterations
    assert (r["optimizer"]["lr"], r["optimizer"]["lr_schedule"]) == (2e-4, "constant")
    assert (r["train"]["batch_size"], r["train"]["epochs"], r["train"]["iterations"]) == \
        (100, 100, 50_000)
    # x/255 to [-1, 1], random horizontal flip, no dequantization
    assert (r["data"]["dataset"], r["data"]["random_flip"], r["data"]["dequantize"]) == \
        ("cifar10", True, False)


def test_cifar_b_is_design_section_4() -> None:
    r = load_recipe("cifar-b")
    _common(r)
    # S-curve over [1e-3, 0.05], jittered
    assert r["grid"] == {"kind": "s_curve", "t0": 1e-3, "t1": 0.05, "jitter": True}
    # N 5,10,20,30,50,75 switching at iterations 5k, 15k, 20k, 25k, 30k
    assert r["schedule"] == {"kind": "stepped", "values": [5, 10, 20, 30, 50, 75],
                             "milestones": [5000, 15000, 20000, 25000, 30000]}
    assert r["process"]["g"] == 1.0
    # DDPM U-Net ch 128 (score 64), mults 1,2,2,2, 2 res blocks, attention at 16, dropout 0.1
    for net, ch in ((r["drift"], 128), (r["score"], 64)):
        assert net == {"net": "ddpm_unet", "ch": ch, "ch_mult": [1, 2, 2, 2],
                       "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.1,
                       "time_input": "t"}
    # the rest as A
    assert (r["optimizer"]["lr"], r["optimizer"]["lr_schedule"]) == (2e-4, "constant")
    assert (r["train"]["batch_size"], r["train"]["epochs"], r["train"]["iterations"]) == \
        (100, 100, 50_000)
    assert (r["data"]["dataset"], r["data"]["random_flip"], r["data"]["dequantize"]) == \
        ("cifar10", True, False)


def test_toy_2d_fast_is_toy_2d_trained_differently() -> None:
    """The fast 2D recipe changes how DiffFlow trains, never what it is: the same family,
    process, grid (jittered), final N and network kind as the paper's toy-2d."""
    fast, paper = load_recipe("toy-2d-fast"), load_recipe("toy-2d")
    assert fast["official"] is False
    for section in ("model", "process"):
        assert {k: fast[section][k] for k in fast[section]} == \
            {k: paper[section][k] for k in fast[section]}
    assert {k: v for k, v in fast["grid"].items() if k != "jitter"} == \
        {k: v for k, v in paper["grid"].items() if k != "jitter"}
    assert fast["schedule"] == {"kind": "ramp", "n_start": 5, "n_end": 30, "ramp_fraction": 0.7}
    assert paper["schedule"] == {"kind": "fixed", "n": 30}
    for net in ("drift", "score"):
        assert (fast[net]["net"], fast[net]["width"], fast[net]["depth"]) == \
            ("fourier_mlp", 64, 3)
    assert (fast["optimizer"]["lr_schedule"], fast["optimizer"]["lr_final"]) == ("linear", 0.1)
    model = build_model(fast)
    assert model.grid.n_steps == 30 and type(model).__name__ == "DiffFlowModel"


def test_sdeflow_cifar_is_marked_as_its_own() -> None:
    """sdeflow's preset is the example's former default, never passed off as official."""
    r = load_recipe("sdeflow-cifar")
    assert r["official"] is False
    assert r["grid"] == {"kind": "power", "t0": 1e-4, "t1": 0.05, "exponent": 0.9,
                         "jitter": True}
    assert (r["schedule"]["kind"], r["schedule"]["n_start"], r["schedule"]["n_end"]) == \
        ("ramp", 5, 75)
    assert (r["train"]["iterations"], r["train"]["precision"], r["data"]["dequantize"]) == \
        (500_000, "bf16", True)
    assert time_scale(r["drift"]["time_input"]) == 1000.0


def test_official_recipe_files_cite_their_sources() -> None:
    """Every value line of an official recipe names the official file it comes from."""
    folder = ROOT / "sdeflow" / "recipes"
    for name in ("toy_2d", "mnist", "cifar_a", "cifar_b"):
        lines = (folder / f"{name}.toml").read_text().splitlines()
        values = [ln for ln in lines if "=" in ln and not ln.lstrip().startswith("#")
                  and ln.split("=")[0].strip() not in ("name", "official", "description")
                  and not ln.startswith("[")]
        uncited = [ln for ln in values if "#" not in ln]
        # a value may sit in a table whose header cites the file ([drift] # model/...yaml)
        headers = {ln.split("]")[0] + "]" for ln in lines if ln.startswith("[") and "#" in ln}
        section, missing = None, []
        for ln in lines:
            if ln.startswith("["):
                section = ln.split("]")[0] + "]"
            elif ln in uncited and section not in headers:
                missing.append(ln)
        assert not missing, (name, missing)


# -- overrides -----------------------------------------------------------------------------------
def test_parse_override_reads_toml_values() -> None:
    assert parse_override("train.iterations=100") == ("train.iterations", 100)
    assert parse_override("grid.jitter=false") == ("grid.jitter", False)
    assert parse_override("grid.t1 = 0.1") == ("grid.t1", 0.1)
    assert parse_override("schedule.values=[5, 10]") == ("schedule.values", [5, 10])
    assert parse_override("grid.kind=power") == ("grid.kind", "power")
    for bad in ("grid.kind", "=3", "grid.t1="):
        with pytest.raises(ValueError, match="section.key=value"):
            parse_override(bad)


def test_apply_overrides_copies_and_validates() -> None:
    base = load_recipe("cifar-b")
    out = apply_overrides(base, ["train.iterations=100", "grid.kind=power", "grid.exponent=0.5",
                                 "schedule.kind=fixed", "schedule.n=30"])
    assert (out["train"]["iterations"], out["grid"]["kind"], out["schedule"]["n"]) == \
        (100, "power", 30)
    assert base["train"]["iterations"] == 50_000 and base["grid"]["kind"] == "s_curve"
    with pytest.raises(ValueError, match="unknown key 'iters' in \\[train\\]"):
        apply_overrides(base, ["train.iters=5"])
    with pytest.raises(ValueError, match="unknown section 'trian'"):
        apply_overrides(base, ["trian.iterations=5"])
    with pytest.raises(ValueError, match="train.iterations must be a int"):
        apply_overrides(base, ["train.iterations=1.5"])
    with pytest.raises(ValueError, match="train.precision must be one of"):
        apply_overrides(base, ["train.precision=fp8"])
    with pytest.raises(ValueError, match="needs exponent"):  # a power grid needs its exponent
        apply_overrides(base, ["grid.kind=power"])
    with pytest.raises(ValueError, match=r"\[schedule\] of kind 'stepped'.*one fewer entry"):
        apply_overrides(base, ["schedule.values=[5, 10]"])
    with pytest.raises(ValueError, match="grid.kind must be one of power, s_curve, uniform"):
        apply_overrides(base, ["grid.kind=cosine"])
    with pytest.raises(ValueError, match="drift.net must be one of"):
        apply_overrides(base, ["drift.net=resnet"])
    with pytest.raises(ValueError, match="train.gradient must be one of backprop, adjoint"):
        apply_overrides(base, ["train.gradient=magic"])
    with pytest.raises(ValueError, match="train.discretizer must be one of"):
        apply_overrides(base, ["train.discretizer=rk4"])
    with pytest.raises(ValueError, match="train.discretizer must be a scheme with a Gaussian"):
        apply_overrides(base, ["train.discretizer=heun"])  # DiffFlow needs a density
    with pytest.raises(ValueError, match="model.family must be one of diffflow, score, flow"):
        apply_overrides(base, ["model.family=gan"])
    with pytest.raises(ValueError, match="process.sde must be one of vp"):
        apply_overrides(base, ["process.sde=cld"])
    with pytest.raises(ValueError, match="data.dataset must be one of checkerboard"):
        apply_overrides(base, ["data.dataset=imagenet"])
    with pytest.raises(ValueError, match="grid.t0 < grid.t1"):
        apply_overrides(base, ["grid.t0=0.2"])
    with pytest.raises(TypeError, match="list"):
        apply_overrides(base, "train.iterations=5")


def test_validate_rejects_broken_recipes() -> None:
    recipe = load_recipe("mnist")
    del recipe["score"]
    with pytest.raises(ValueError, match=r"lacks the \[score\] table"):
        validate_recipe(recipe)
    recipe = load_recipe("mnist")
    recipe["drift"]["time_input"] = "t^2"
    with pytest.raises(ValueError, match="time_input"):
        validate_recipe(recipe)


def test_time_scale() -> None:
    assert time_scale("t") == 1.0 and time_scale("1000t") == 1000.0
    assert time_scale("2.5t") == 2.5
    for bad in ("1000", "0t", "tt", 5):
        with pytest.raises(ValueError, match="time_input"):
            time_scale(bad)


# -- the builder ---------------------------------------------------------------------------------
TINY = {"ddpm_unet": ["ch=8", "ch_mult=[1, 2]", "num_res_blocks=1", "dropout=0.0"],
        "lucid_unet": ["dim=8", "dim_mults=[1, 2]", "attn_heads=1", "attn_dim_head=4"]}


def _tiny(name: str) -> dict:
    recipe = load_recipe(name)
    return apply_overrides(recipe, [f"{s}.{o}" for s in ("drift", "score")
                                    for o in TINY[recipe[s]["net"]]])


@pytest.mark.parametrize("name", ["mnist", "cifar-a", "cifar-b", "sdeflow-cifar"])
def test_build_model_follows_the_recipe(name: str) -> None:
    recipe = _tiny(name)
    model = build_model(recipe)
    kind = {"ddpm_unet": "UNet", "lucid_unet": "LucidUNet"}[recipe["drift"]["net"]]
    assert type(model.drift_net).__name__ == type(model.score_net).__name__ == kind
    expected_scale = time_scale(recipe["drift"]["time_input"])
    assert model.drift_net.time_embedding.time_scale == expected_scale
    assert model.state_shape == state_shape(recipe)
    # the evaluation grid: the recipe's kind with the final N, on its interval
    n = final_steps(recipe)
    g = recipe["grid"]
    if g["kind"] == "power":
        expected = TimeGrid.power(n, g["t0"], g["t1"], g["exponent"]).ts
    else:
        expected = TimeGrid.s_curve(n, g["t0"], g["t1"]).ts
    assert torch.allclose(model.grid.ts.double(), expected.double(), rtol=1e-6, atol=0)
    if g["jitter"]:  # the kind's official random grid (STimer.rand, ExpTimer.rand)
        torch.manual_seed(0)
        drawn = model.training_grid(1)
        torch.manual_seed(0)
        random = GRIDS.entry(g["kind"]).extras["random"]
        keys = {k: g[k] for k in ("t0", "t1", "exponent") if k in g}
        torch.testing.assert_close(drawn.ts, random(drawn.n_steps, dtype=drawn.dtype, **keys).ts)
    else:
        assert model.jitter is g["jitter"]
    assert TimeGrid(model.sample_grid_ts).n_steps == recipe["sample"]["steps"]
    # trains a step and draws samples of the state's shape
    x = torch.rand(2, *state_shape(recipe)) * 2 - 1
    loss, info = model.loss(x, step=1)
    assert torch.isfinite(loss)
    schedule = steps_schedule(recipe)
    assert info["n_steps"] == (n if schedule is None else schedule(1))


@pytest.mark.parametrize("name, section, millions", [
    ("cifar-a", "drift", 117.2), ("cifar-a", "score", 29.8),   # DESIGN section 4's sizes
    ("cifar-b", "drift", 35.75), ("cifar-b", "score", 8.95)])
def test_full_size_networks_have_the_official_parameter_counts(name: str, section: str,
                                                               millions: float) -> None:
    from sdeflow.recipes import build_network

    recipe = load_recipe(name)
    with torch.device("meta"):  # no memory: only the shapes are needed
        net = build_network(recipe[section], state_shape(recipe))
    count = sum(p.numel() for p in net.parameters()) / 1e6
    digits = len(str(millions).split(".")[1])
    assert round(count, digits) == millions, count


def test_steps_schedules() -> None:
    b = steps_schedule(load_recipe("cifar-b"))
    # N from iteration 1: 5 up to 5000, then 10 up to 15000, ..., 75 after 30000
    assert [b(s) for s in (1, 5000, 5001, 15000, 15001, 20001, 25001, 30000, 30001)] == \
        [5, 5, 10, 10, 20, 30, 50, 50, 75]
    assert steps_schedule(load_recipe("cifar-a")) is None
    ramp = steps_schedule(load_recipe("sdeflow-cifar"))
    assert (ramp.n_start, ramp.n_end, ramp.ramp_steps) == (5, 75, 250_000)
    ramp = steps_schedule(apply_overrides(load_recipe("sdeflow-cifar"),
                                          ["schedule.ramp_steps=10"]))
    assert ramp.ramp_steps == 10


def test_grid_factory_matches_the_grid_kinds() -> None:
    a = grid_factory(load_recipe("cifar-a"))(7)
    t = torch.linspace(1e-4 ** 0.5, 0.1 ** 0.5, 8, dtype=torch.float64) ** 2
    assert torch.allclose(a.ts.double(), t, rtol=1e-5)
    b = grid_factory(load_recipe("cifar-b"))(5)
    assert torch.equal(b.ts, TimeGrid.s_curve(5, 1e-3, 0.05).ts)


def test_trainer_options() -> None:
    opts = trainer_options(load_recipe("cifar-b"))
    assert opts == {"lr": 2e-4, "grad_clip": 1.0, "ema_decay": 0.999, "ema_warmup": False,
                    "ema_start": 10, "precision": "fp16", "lr_gamma": 1.0, "lr_step_size": None,
                    "lr_schedule": "constant", "lr_warmup": 0, "lr_final": 0.1}
    own = trainer_options(load_recipe("sdeflow-cifar"))
    assert (own["ema_warmup"], own["ema_start"], own["precision"]) == (True, 0, "bf16")
    with pytest.raises(ValueError, match="ema_every"):
        trainer_options(apply_overrides(load_recipe("cifar-b"), ["train.ema_every=2"]))


def test_lr_step_size_scales_the_official_epochs() -> None:
    """StepLR every lr_step_epochs of the 30 epochs: 2 * 3000 // 30 = 200 iterations at the
    official length, 2 * 500 // 30 = 33 at ``sdeflow toy``'s 500."""
    toy = load_recipe("toy-2d")
    for iterations, expected in ((3000, 200), (500, 33), (10, 1), (14, 1), (15, 1)):
        recipe = apply_overrides(toy, [f"train.iterations={iterations}"])
        assert trainer_options(recipe)["lr_step_size"] == expected
    assert set(trainer_options(toy)) == {"lr", "lr_gamma", "lr_step_size", "grad_clip",
                                         "ema_decay", "ema_warmup", "ema_start", "precision",
                                         "lr_schedule", "lr_warmup", "lr_final"}


# -- model families ------------------------------------------------------------------------------
def _cli_model(family: str, gradient: str):
    """The model ``sdeflow toy --model F`` trained before it became a short form of the
    ``toy-2d`` preset, written out part by part."""
    from sdeflow import VPSDE, Backprop, Sharded, StandardNormal, StochasticAdjoint
    from sdeflow.nets import FourierMLP
    from sdeflow.training import DiffFlowModel, FlowModel, ScoreModel

    grid = TimeGrid.power(30, 1e-3, 0.05, 0.9)
    if family == "diffflow":
        strategy = {"backprop": Backprop, "adjoint": StochasticAdjoint,
                    "sharded-adjoint": lambda: Sharded(StochasticAdjoint())}[gradient]()
        return DiffFlowModel(FourierMLP(2, 128, 3), FourierMLP(2, 128, 3), 0.2, grid,
                             StandardNormal((2,)), gradient=strategy, jitter=False)
    if family == "score":
        return ScoreModel(FourierMLP(2, 128, 3), VPSDE(), (2,), eps=1e-3)
    return FlowModel(FourierMLP(2, 128, 3), grid, StandardNormal((2,)), jitter=False)


@pytest.mark.parametrize("family, gradient", [
    ("diffflow", "backprop"), ("diffflow", "adjoint"), ("diffflow", "sharded-adjoint"),
    ("score", "backprop"), ("flow", "backprop")])
def test_toy_recipe_models_equal_the_toy_command(family: str, gradient: str) -> None:
    """``sdeflow train --preset toy-2d --set model.family=F`` builds today's ``sdeflow toy
    --model F`` model: the same construction order (same initial weights under one seed), the
    same buffers and settings, and the same random numbers drawn."""
    torch.manual_seed(0)
    expected = _cli_model(family, gradient)
    after_expected = torch.rand(3)
    recipe = apply_overrides(load_recipe("toy-2d"), [f"model.family={family}",
                                                    f"train.gradient={gradient}"])
    torch.manual_seed(0)
    model = build_model(recipe)
    assert torch.equal(torch.rand(3), after_expected)
    assert type(model) is type(expected)
    got, want = model.state_dict(), expected.state_dict()
    assert list(got) == list(want)
    for key in want:
        assert torch.equal(got[key], want[key]), key
    if family == "score":
        assert (model.eps, model.sample_steps, model.elbo_steps) == \
            (expected.eps, expected.sample_steps, expected.elbo_steps)
        assert repr(model.sde) == repr(expected.sde) == "VPSDE(beta_min=0.1, beta_max=20.0, T=1.0)"
    else:
        assert model.jitter is expected.jitter is False and model.progressive is None
    if family == "diffflow":
        assert repr(model.objective.gradient) == repr(expected.objective.gradient)
        assert model.objective.discretizer == expected.objective.discretizer
        assert model.sample_grid_ts is None and model.clip_time is None


@pytest.mark.parametrize("dataset", ["checkerboard", "2spirals", "moons", "olympic"])
def test_any_2d_set_can_be_chosen(dataset: str) -> None:
    from sdeflow.data import TOY_DATASETS

    assert load_recipe("toy-2d")["data"]["dataset"] in TOY_DATASETS
    recipe = apply_overrides(load_recipe("toy-2d"), [f"data.dataset={dataset}"])
    assert state_shape(recipe) == (2,)
    image = apply_overrides(load_recipe("cifar-a"), ["data.image_size=16"])
    assert state_shape(image) == (3, 16, 16)
    with pytest.raises(ValueError, match="data.dataset 'mnist' \\(images\\) needs data.channels"):
        apply_overrides(recipe, ["data.dataset=mnist"])


def test_families_from_one_recipe() -> None:
    """Each family is built through FAMILIES from the keys it needs; a family's missing table
    is an error naming it."""
    from sdeflow.processes import VESDE
    from sdeflow.training import DiffFlowModel, FlowModel, ScoreModel

    assert FAMILIES.names() == ("diffflow", "score", "flow", "path_matching")
    toy = load_recipe("toy-2d")
    kinds = {"diffflow": DiffFlowModel, "score": ScoreModel, "flow": FlowModel}
    for family, kind in kinds.items():
        assert type(build_model(apply_overrides(toy, [f"model.family={family}"]))) is kind
    score = build_model(apply_overrides(toy, ["model.family=score", "process.sde=ve",
                                              "process.sigma_max=3.0", "process.eps=1e-2",
                                              "sample.steps=7"]))
    assert isinstance(score.sde, VESDE) and score.sde.sigma_max == 3.0
    assert (score.eps, score.sample_steps) == (1e-2, 7)
    flow = build_model(apply_overrides(load_recipe("cifar-b"), [
        "model.family=flow", "drift.ch=8", "drift.ch_mult=[1, 2]", "drift.num_res_blocks=1"]))
    assert flow.progressive.n_end == 75 and flow.jitter.func == TimeGrid.s_curve_random
    no_score = load_recipe("toy-2d")
    del no_score["score"]
    with pytest.raises(ValueError, match="lacks the \\[score\\] table \\(model.family 'diffflow'"):
        validate_recipe(no_score)
    build_model(apply_overrides(no_score, ["model.family=flow"]))  # the flow needs no score net
    no_g = load_recipe("toy-2d")
    del no_g["process"]["g"]
    with pytest.raises(ValueError, match="model.family 'diffflow' needs process.g"):
        validate_recipe(no_g)


def test_recipes_of_earlier_runs_still_build() -> None:
    """A run's config.json written before [model], train.discretizer and train.clip_time
    existed builds the same DiffFlow model (the defaults)."""
    old = _tiny("mnist")
    del old["model"], old["train"]["discretizer"]
    torch.manual_seed(0)
    a = build_model(old)
    torch.manual_seed(0)
    b = build_model(_tiny("mnist"))
    assert list(a.state_dict()) == list(b.state_dict())
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                 b.state_dict().values()))


# -- fidelity to the official code ---------------------------------------------------------------
def _recording(net: torch.nn.Module, seen: list[torch.Tensor]):
    return net.register_forward_pre_hook(lambda module, args: seen.append(args[1].detach()))


def test_cifar_b_networks_see_the_clipped_time_in_training_only() -> None:
    """modules/sde_loss.py feeds the networks conder.index(t) = clip(t, 1e-3, 0.05) in training,
    t itself in sampling (model.condition = conder()); the random S-curve grid starts below
    1e-3."""
    recipe = apply_overrides(_tiny("cifar-b"), ["sample.steps=5"])
    assert recipe["train"]["clip_time"] is True
    model = build_model(recipe)
    assert model.clip_time == (1e-3, 0.05)
    plain = build_model(apply_overrides(recipe, ["train.clip_time=false"]))
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints unchanged
    torch.manual_seed(1)
    grid = model.training_grid(1)
    assert grid.t0 < 1e-3  # the times the steps use
    drift_seen: list[torch.Tensor] = []
    score_seen: list[torch.Tensor] = []
    hooks = [_recording(model.drift_net, drift_seen), _recording(model.score_net, score_seen)]
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    torch.manual_seed(1)
    loss, _ = model.loss(x, step=1)
    loss.backward()  # the stochastic adjoint calls the networks again here
    for seen in (drift_seen, score_seen):
        times = torch.cat([t.reshape(-1) for t in seen])
        lo, hi = torch.tensor([1e-3, 0.05], dtype=times.dtype)  # float32 as the grid
        assert times.min() == lo and times.max() <= hi
        clipped = grid.ts.clamp(1e-3, 0.05)
        assert set(times.unique().tolist()) <= set(clipped.tolist())
    # sampling and the bound see t itself
    drift_seen.clear()
    score_seen.clear()
    model.sample(2)
    model.nelbo(x)
    for seen in (drift_seen, score_seen):
        assert float(torch.cat([t.reshape(-1) for t in seen]).min()) < 1e-4
    for hook in hooks:
        hook.remove()
    # the loss value equals that of networks fed the clipped time by hand
    class Clipped(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t):
            return self.net(x, t.clamp(1e-3, 0.05))

    from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE

    reverse = ReverseSDE(ForwardSDE(Clipped(model.drift_net), 1.0), Clipped(model.score_net))
    by_hand = DiffFlowObjective(reverse, model.prior)
    model.eval()
    torch.manual_seed(2)
    value = model.loss(x, step=1)[0]
    torch.manual_seed(2)
    torch.testing.assert_close(value, by_hand(x, model.training_grid(1)).loss)


def test_cifar_b_clips_about_17_of_76_times_at_n_75() -> None:
    recipe = load_recipe("cifar-b")
    draw = functools.partial(TimeGrid.s_curve_random, t0=recipe["grid"]["t0"],
                             t1=recipe["grid"]["t1"], dtype=torch.float64)
    counts = {int((draw(75, generator=torch.Generator().manual_seed(s)).ts
                   < recipe["grid"]["t0"]).sum()) for s in range(50)}
    assert counts <= {16, 17} and 17 in counts


def test_continuous_mnist_trains_on_the_official_random_power_grid() -> None:
    """cont_mnist.yaml: ExpTimer.rand, uniform in t^0.5 between the points of an N-point base;
    not a jitter of the fixed grid."""
    recipe = apply_overrides(_tiny("mnist"), [
        "schedule.kind=stepped", "schedule.values=[5, 10, 20, 30]",
        "schedule.milestones=[3000, 5000, 8000]", "grid.jitter=true"])
    model = build_model(recipe)
    assert model.jitter.func == TimeGrid.power_random
    assert model.jitter.keywords == {"t0": 1e-3, "t1": 0.1, "exponent": 0.5}
    torch.manual_seed(0)
    drawn = model.training_grid(3001)
    torch.manual_seed(0)
    expected = TimeGrid.power_random(10, 1e-3, 0.1, 0.5, dtype=drawn.dtype)
    assert torch.equal(drawn.ts, expected.ts) and drawn.n_steps == 10


def test_batch_size_is_per_process() -> None:
    """Under torchrun the official batch size is per GPU: the recipes say train.batch_size is
    per process."""
    folder = ROOT / "sdeflow" / "recipes"
    for name in ("mnist", "cifar_a", "cifar_b", "toy_2d", "sdeflow_cifar"):
        text = (folder / f"{name}.toml").read_text()
        line = text[text.index("batch_size ="):]
        assert "per process" in line[:line.index("epochs")], name


# -- data scaling --------------------------------------------------------------------------------
def test_scaling_of_pixels() -> None:
    k = torch.arange(256, dtype=torch.uint8)
    x = scale_images(k, dequantize=False)  # official: 2k/255 - 1, no noise
    assert torch.allclose(x.double(), k.double() * 2 / 255 - 1, atol=1e-6)
    assert torch.equal(to_uint8(x), k)
    gen = torch.Generator().manual_seed(0)
    xd = scale_images(k.repeat(50), dequantize=True, generator=gen)
    cell = ((xd.double() + 1) / 2 * 256).floor()  # each value inside its pixel's cube
    assert torch.equal(cell, k.repeat(50).double())
    assert torch.equal(to_uint8(xd, dequantized=True), k.repeat(50))
    with pytest.raises(TypeError, match="uint8"):
        scale_images(k.float(), dequantize=False)


def test_image_batches_follow_the_recipe() -> None:
    from sdeflow.runs import ImageBatches
    from sdeflow.training import TensorBatches

    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    batches = ImageBatches(TensorBatches(images, 8, shuffle=False), dequantize=False,
                           random_flip=False)
    assert torch.equal(batches.next_batch(), images.float() * (2 / 255) - 1)
    torch.manual_seed(0)
    flipped = ImageBatches(TensorBatches(images, 8, shuffle=False), dequantize=False,
                           random_flip=True).next_batch()
    plain = images.float() * (2 / 255) - 1
    same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    mirrored = [torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain)]
    assert all(s or m for s, m in zip(same, mirrored)) and not all(same)


def test_smoke_overrides_keep_the_kinds_and_shrink_the_sizes() -> None:
    from sdeflow.runs import smoke_overrides

    for name in RECIPES:
        base = load_recipe(name)
        smoke = apply_overrides(base, smoke_overrides(base))
        assert smoke["schedule"]["kind"] == base["schedule"]["kind"]
        assert smoke["drift"]["net"] == base["drift"]["net"]
        assert smoke["train"]["iterations"] == 4 and smoke["train"]["precision"] == "fp32"
    smoke = apply_overrides(load_recipe("cifar-b"), smoke_overrides(load_recipe("cifar-b")))
    assert smoke["schedule"] == {"kind": "stepped", "values": [2, 3, 4], "milestones": [1, 2]}
    assert smoke["drift"]["ch"] == 8 and smoke["score"]["ch"] == 8
    toy = apply_overrides(load_recipe("toy-2d"), smoke_overrides(load_recipe("toy-2d")))
    assert toy["data"]["train_size"] == 256 and toy["drift"]["width"] == 16
    assert math.isfinite(smoke["grid"]["t1"])

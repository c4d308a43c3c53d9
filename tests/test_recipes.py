"""The recipes (sdeflow.recipes): each official preset holds DESIGN.md section 4's values, typed in
here from that table; overrides; the builder; the data scaling of the example."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from sdeflow import TimeGrid
from sdeflow.recipes import (
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
    assert set(RECIPES) == {"toy-2d", "mnist", "cifar-a", "cifar-b", "sdeflow-cifar"}
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
    assert r["train"]["iterations"] == 100 * (60_000 // 64)
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
    with pytest.raises(ValueError, match="one more entry"):
        apply_overrides(base, ["schedule.values=[5, 10]"])
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
    if g["jitter"] and g["kind"] == "s_curve":  # the official random S-curve grid (STimer.rand)
        torch.manual_seed(0)
        drawn = model.training_grid(1)
        torch.manual_seed(0)
        torch.testing.assert_close(drawn.ts, TimeGrid.s_curve_random(
            drawn.n_steps, g["t0"], g["t1"], dtype=drawn.dtype).ts)
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
                    "ema_start": 10, "precision": "fp16", "lr_gamma": 1.0, "lr_step_size": None}
    own = trainer_options(load_recipe("sdeflow-cifar"))
    assert (own["ema_warmup"], own["ema_start"], own["precision"]) == (True, 0, "bf16")
    with pytest.raises(ValueError, match="ema_every"):
        trainer_options(apply_overrides(load_recipe("cifar-b"), ["train.ema_every=2"]))


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


def _example():
    spec = importlib.util.spec_from_file_location("diffflow_cifar_recipes",
                                                  ROOT / "examples" / "diffflow_cifar.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_batches_follow_the_recipe() -> None:
    from sdeflow.training import TensorBatches

    example = _example()
    images = torch.randint(0, 256, (8, 3, 4, 4), dtype=torch.uint8)
    batches = example.ImageBatches(TensorBatches(images, 8, shuffle=False), dequantize=False,
                                   random_flip=False)
    assert torch.equal(batches.next_batch(), images.float() * (2 / 255) - 1)
    torch.manual_seed(0)
    flipped = example.ImageBatches(TensorBatches(images, 8, shuffle=False), dequantize=False,
                                   random_flip=True).next_batch()
    plain = images.float() * (2 / 255) - 1
    same = [torch.equal(f, p) for f, p in zip(flipped, plain)]
    mirrored = [torch.equal(f, p.flip(-1)) for f, p in zip(flipped, plain)]
    assert all(s or m for s, m in zip(same, mirrored)) and not all(same)


def test_example_presets_and_flags(capsys) -> None:
    example = _example()
    args = example.parse_args(["--preset", "cifar-b", "--data-dir", "data"])
    assert args.recipe == load_recipe("cifar-b") and args.applied == []
    args = example.parse_args(["--preset", "cifar-a", "--data-dir", "data", "--steps", "10",
                               "--t1", "0.2", "--drift-ch", "32", "--ch-mult", "1,2",
                               "--set", "grid.jitter=true"])
    r = args.recipe
    assert (r["train"]["iterations"], r["grid"]["t1"], r["drift"]["dim"], r["grid"]["jitter"]) \
        == (10, 0.2, 32, True)
    assert r["drift"]["dim_mults"] == r["score"]["dim_mults"] == [1, 2]
    # --set comes after the flags
    args = example.parse_args(["--preset", "mnist", "--data-dir", "data", "--steps", "10",
                               "--set", "train.iterations=20"])
    assert args.recipe["train"]["iterations"] == 20
    smoke = example.parse_args(["--smoke", "--preset", "cifar-b"])
    assert smoke.recipe["schedule"] == {"kind": "stepped", "values": [2, 3, 4],
                                        "milestones": [1, 2]}
    assert smoke.recipe["drift"]["ch"] == 8 and smoke.recipe["train"]["precision"] == "fp32"
    for argv, message in ((["--preset", "cifar-b", "--n-start", "3"], "ramp N schedule"),
                          (["--preset", "cifar-a", "--dropout", "0.2"], "DDPM U-Nets"),
                          (["--preset", "cifar-a", "--set", "grid.t1=-1"], "grid.t0 < grid.t1"),
                          (["--preset", "cifar-b", "--set", "train.nope=1"], "unknown key")):
        with pytest.raises(SystemExit):
            example.parse_args([*argv, "--data-dir", "data"])
        assert message in capsys.readouterr().err
    assert math.isfinite(smoke.recipe["grid"]["t1"])

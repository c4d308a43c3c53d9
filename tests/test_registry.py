"""The registries (sdeflow.registry.Registry): lookup, errors naming the valid names, the
resolver, declared recipe keys, and a user's registered parts chosen from a recipe exactly like
built-in ones."""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from sdeflow import DISCRETIZERS, GRADIENTS, GRIDS, LINEAR_SDES, EulerMaruyama, Registry, TimeGrid
from sdeflow.nets import NETS
from sdeflow.recipes import FAMILIES, apply_overrides, build_model, load_recipe, recipe_schema
from sdeflow.registry import UnknownNameError
from sdeflow.training import STEPS_SCHEDULES, FixedSteps, StepsSchedule


def test_registry_api() -> None:
    reg: Registry = Registry("widget", key="shop.widget")
    assert reg.names() == () and len(reg) == 0

    @reg.register("a", required={"size": int}, optional=("colour",), note="first")
    def make_a(size: int = 1) -> tuple[str, int]:
        return ("a", size)

    reg.register("b", dict)
    assert reg.names() == ("a", "b") and list(reg) == ["a", "b"] and "a" in reg
    assert reg.get("a") is make_a and reg["b"] is dict
    assert reg.required("a") == ("size",) and reg.optional("a") == ("colour",)
    assert reg.entry("a").extras == {"note": "first"}
    assert reg.key_types() == {"size": (int,), "colour": ()}
    assert dict(reg.items()) == {"a": make_a, "b": dict}
    with pytest.raises(UnknownNameError, match="shop.widget must be one of a, b; got 'c'"):
        reg.get("c")
    with pytest.raises(KeyError):  # mapping-style lookups
        reg["c"]
    with pytest.raises(ValueError, match="registered already"):
        reg.register("a", dict)
    reg.register("a", list, replace=True)
    assert reg.get("a") is list
    with pytest.raises(TypeError, match="callable"):
        reg.register("z", 3)
    with pytest.raises(TypeError, match="not the string"):
        reg.register("y", dict, required="size")
    assert reg.unregister("b").name == "b" and reg.names() == ("a",)


def test_resolve_accepts_a_name_an_instance_or_none() -> None:
    scheme = EulerMaruyama()
    assert DISCRETIZERS.resolve(scheme) is scheme
    assert type(DISCRETIZERS.resolve("heun")).__name__ == "StochasticHeun"
    assert DISCRETIZERS.resolve(None) is None
    assert isinstance(DISCRETIZERS.resolve(None, default="euler_maruyama"), EulerMaruyama)
    assert DISCRETIZERS.resolve(None, default=scheme) is scheme
    assert repr(GRADIENTS.resolve("checkpointed", segment=3)) == "Checkpointed(segment=3)"
    with pytest.raises(TypeError, match="keyword arguments build a part by name"):
        GRADIENTS.resolve(scheme, segment=3)
    with pytest.raises(ValueError, match="train.gradient must be one of"):
        GRADIENTS.resolve("magic")


def test_built_in_names() -> None:
    assert {"euler_maruyama", "heun", "exponential"} <= set(DISCRETIZERS)
    assert GRADIENTS.names() == ("backprop", "adjoint", "checkpointed", "sharded",
                                 "sharded-adjoint")
    assert GRIDS.names() == ("power", "s_curve", "uniform")
    assert NETS.names() == ("fourier_mlp", "mlp", "ddpm_unet", "lucid_unet")
    assert STEPS_SCHEDULES.names() == ("fixed", "stepped", "ramp")
    assert LINEAR_SDES.names() == ("vp", "subvp", "ve")
    assert FAMILIES.names() == ("diffflow", "score", "flow", "path_matching")
    from sdeflow.couplings import COUPLINGS
    from sdeflow.objectives import TIME_LAWS
    from sdeflow.processes import PATHS

    assert PATHS.names() == ("linear", "cosine", "vp", "subvp", "ve")
    assert TIME_LAWS.names() == ("uniform", "logit_normal", "grid")
    assert COUPLINGS.names() == ("independent", "minibatch_ot")
    # every grid kind has its random training grid, of n steps, inside [t0, t1]
    for name in GRIDS:
        keys = {"t0": 1e-3, "t1": 0.05, "exponent": 0.9}
        keys = {k: keys[k] for k in GRIDS.required(name)}
        grid = GRIDS.entry(name).extras["random"](7, **keys)
        assert isinstance(grid, TimeGrid) and grid.n_steps == 7
        assert GRIDS.get(name)(7, **keys).t1 == pytest.approx(grid.t1)


def test_the_recipe_schema_is_derived_from_the_registries() -> None:
    schema = recipe_schema()
    for name in NETS:
        assert set(NETS.entry(name).keys) <= set(schema["drift"])
    for name in GRIDS:
        assert set(GRIDS.required(name)) <= set(schema["grid"])
    assert {"n", "values", "milestones", "n_start", "n_end"} <= set(schema["schedule"])
    assert {"beta_min", "sigma_max"} <= set(schema["process"])


# -- a user's parts ------------------------------------------------------------------------------
class TinyNet(nn.Module):
    """A user's network ``net(x, t)`` on flat states."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.layer = nn.Linear(d + 1, hidden)
        self.out = nn.Linear(hidden, d)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.expand(x.shape[0]) if t.dim() == 0 else t.reshape(-1).expand(x.shape[0])
        return self.out(torch.tanh(self.layer(torch.cat([x, t[:, None]], -1))))


def tiny_net(spec, shape):
    return TinyNet(shape[0], spec["hidden"])


def geometric(n_steps: int, *, t0: float, t1: float, **kw) -> TimeGrid:
    return TimeGrid(torch.logspace(torch.log10(torch.tensor(t0)), torch.log10(torch.tensor(t1)),
                                   n_steps + 1, **kw))


def geometric_random(n_steps: int, *, t0: float, t1: float, **kw) -> TimeGrid:
    return geometric(n_steps, t0=t0, t1=t1).jitter()


class Doubling(StepsSchedule):
    """N doubles every ``every`` steps from ``n_start`` up to ``n_end``."""

    def __init__(self, n_start: int, n_end: int, every: int) -> None:
        self.n_start, self.n_end, self.every = n_start, n_end, every

    def __call__(self, step: int) -> int:
        return min(self.n_end, self.n_start * 2 ** ((step - 1) // self.every))


class LoudEuler(EulerMaruyama):
    """A user's scheme: Euler-Maruyama that counts its transitions."""

    calls = 0

    def transition(self, *args, **kwargs):
        LoudEuler.calls += 1
        return super().transition(*args, **kwargs)


@pytest.fixture()
def user_parts():
    NETS.register("tiny", tiny_net, required={"hidden": int})
    GRIDS.register("geometric", geometric, random=geometric_random,
                   required={"t0": (int, float), "t1": (int, float)})
    STEPS_SCHEDULES.register("doubling", lambda spec, iterations: Doubling(
        spec["n_start"], spec["n_end"], spec["every"]),
        required={"n_start": int, "n_end": int, "every": int})
    DISCRETIZERS.register("loud_euler", LoudEuler)
    yield
    for registry, name in ((NETS, "tiny"), (GRIDS, "geometric"), (STEPS_SCHEDULES, "doubling"),
                           (DISCRETIZERS, "loud_euler")):
        registry.unregister(name)


def test_user_parts_are_chosen_from_a_recipe(user_parts) -> None:
    recipe = apply_overrides(load_recipe("toy-2d"), [
        "drift.net=tiny", "drift.hidden=8", "score.net=tiny", "score.hidden=5",
        "grid.kind=geometric", "grid.jitter=true",
        "schedule.kind=doubling", "schedule.n_start=2", "schedule.n_end=8", "schedule.every=3",
        "train.discretizer=loud_euler", "train.gradient=backprop"])
    model = build_model(recipe)
    assert isinstance(model.drift_net, TinyNet) and model.score_net.layer.out_features == 5
    assert isinstance(model.objective.discretizer, LoudEuler)
    assert isinstance(model.progressive, Doubling) and model.grid.n_steps == 8
    torch.testing.assert_close(model.grid.ts, geometric(8, t0=1e-3, t1=0.05).ts)
    assert model.jitter.func is geometric_random
    LoudEuler.calls = 0
    loss, info = model.loss(torch.randn(4, 2), step=4)
    assert info["n_steps"] == 4 and torch.isfinite(loss) and LoudEuler.calls > 0
    loss.backward()
    assert model.drift_net.layer.weight.grad is not None
    pickle.loads(pickle.dumps(model.jitter))  # module-level parts pickle (DDP, checkpoints)
    # the user's keys are typed like the built-ins'
    with pytest.raises(ValueError, match="drift.hidden must be a int"):
        apply_overrides(recipe, ["drift.hidden=1.5"])
    with pytest.raises(ValueError, match=r"\[schedule\] of kind 'doubling' needs every"):
        bad = apply_overrides(load_recipe("toy-2d"), [])
        bad["schedule"] = {"kind": "doubling", "n_start": 2, "n_end": 4}
        build_model(bad)


def test_a_user_family_is_chosen_from_a_recipe() -> None:
    @FAMILIES.register("drift_only", required=("drift",))
    def drift_only(recipe, *, channels_last=False, compile=False):
        return NETS.get(recipe["drift"]["net"])(recipe["drift"], (2,))

    try:
        net = build_model(apply_overrides(load_recipe("toy-2d"), ["model.family=drift_only"]))
        assert type(net).__name__ == "FourierMLP"
    finally:
        FAMILIES.unregister("drift_only")


def test_fixed_steps_is_a_constant_schedule() -> None:
    schedule = STEPS_SCHEDULES.get("fixed")({"n": 30}, 100)
    assert isinstance(schedule, FixedSteps) and schedule.constant and schedule(7) == 30
    assert not STEPS_SCHEDULES.get("stepped")({"values": [1, 2], "milestones": [5]}, 9).constant
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        FixedSteps(0)

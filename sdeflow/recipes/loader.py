r"""Training recipes as data: the official DiffFlow configurations and sdeflow's own presets.

Each recipe is a TOML file shipped beside this module (``cifar_b.toml`` for ``"cifar-b"``),
read into a plain ``dict`` of sections::

    data       dataset, channels, image_size, resize, dequantize, random_flip (2D: sizes, scaling)
    grid       kind ("power", "s_curve", "uniform"), t0, t1, exponent, jitter
    schedule   the number of steps N in training: kind "fixed" (n), "stepped" (values at
               milestones), "ramp" (n_start -> n_end over ramp_steps or ramp_fraction)
    process    g, the constant diffusion
    drift      net ("ddpm_unet", "lucid_unet", "fourier_mlp") and its sizes, time_input
    score      the same
    optimizer  name, lr, lr_schedule ("constant", "step"), lr_gamma, lr_step_epochs
    train      batch_size, epochs, iterations, grad_clip, ema, ema_start, ema_every, ema_warmup,
               precision ("fp32", "bf16", "fp16"), gradient ("adjoint", "backprop")
    sample     steps (N of the sampling grid)

``time_input`` is ``"t"`` (the network sees :math:`t` itself, as in the official code) or
``"<c>t"`` (it sees :math:`c\,t`, e.g. ``"1000t"``, DDPM's step-index range). Official recipes
(``official = true``) hold the values of DESIGN.md section 4, each commented with its source file
in the official repository; sdeflow's own presets (``official = false``) say where they differ.
"""

from __future__ import annotations

import copy
import math
import re
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["RECIPES", "load_recipe", "apply_overrides", "validate_recipe", "parse_override",
           "recipe_get", "time_scale"]

#: The recipe names, official ones first.
RECIPES: tuple[str, ...] = ("toy-2d", "mnist", "cifar-a", "cifar-b", "sdeflow-cifar")

_NUMBER = (int, float)
_LIST = (list,)
#: The keys each section may hold, with their types (a recipe holds those its kinds need).
SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {"name": (str,), "official": (bool,), "description": (str,)},
    "data": {"dataset": (str,), "channels": (int,), "image_size": (int,), "resize": (str,),
             "dequantize": (bool,), "random_flip": (bool,), "train_size": (int,),
             "val_size": (int,), "max_abs": _NUMBER, "standardize": (bool,)},
    "grid": {"kind": (str,), "t0": _NUMBER, "t1": _NUMBER, "exponent": _NUMBER,
             "jitter": (bool,)},
    "schedule": {"kind": (str,), "n": (int,), "values": _LIST, "milestones": _LIST,
                 "n_start": (int,), "n_end": (int,), "ramp_fraction": _NUMBER,
                 "ramp_steps": (int,)},
    "process": {"g": _NUMBER},
    "drift": {"net": (str,), "ch": (int,), "ch_mult": _LIST, "num_res_blocks": (int,),
              "attn_resolutions": _LIST, "dropout": _NUMBER, "dim": (int,), "dim_mults": _LIST,
              "attn_heads": (int,), "attn_dim_head": (int,), "width": (int,), "depth": (int,),
              "time_input": (str,)},
    "optimizer": {"name": (str,), "lr": _NUMBER, "lr_schedule": (str,), "lr_gamma": _NUMBER,
                  "lr_step_epochs": (int,)},
    "train": {"batch_size": (int,), "epochs": (int,), "iterations": (int,),
              "grad_clip": _NUMBER, "ema": _NUMBER, "ema_start": (int,), "ema_every": (int,),
              "ema_warmup": (bool,), "precision": (str,), "gradient": (str,)},
    "sample": {"steps": (int,)},
}
SCHEMA["score"] = SCHEMA["drift"]

CHOICES: dict[str, tuple[str, ...]] = {
    "grid.kind": ("power", "s_curve", "uniform"),
    "data.resize": ("none", "pad", "bilinear"),
    "schedule.kind": ("fixed", "stepped", "ramp"),
    "net": ("ddpm_unet", "lucid_unet", "fourier_mlp"),
    "optimizer.name": ("adam",),
    "optimizer.lr_schedule": ("constant", "step"),
    "train.precision": ("fp32", "bf16", "fp16"),
    "train.gradient": ("adjoint", "backprop"),
}
#: The keys each kind needs.
_REQUIRED: dict[str, dict[str, tuple[str, ...]]] = {
    "grid": {"power": ("t0", "t1", "exponent"), "s_curve": ("t0", "t1"),
             "uniform": ("t0", "t1")},
    "schedule": {"fixed": ("n",), "stepped": ("values", "milestones"),
                 "ramp": ("n_start", "n_end")},
    "net": {"ddpm_unet": ("ch", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout"),
            "lucid_unet": ("dim", "dim_mults"), "fourier_mlp": ("width", "depth")},
}
_TIME_INPUT = re.compile(r"^(?:(\d+(?:\.\d*)?(?:e[+-]?\d+)?))?t$")


def _file_name(name: str) -> str:
    return name.replace("-", "_") + ".toml"


def load_recipe(name: str) -> dict[str, Any]:
    r"""The recipe ``name`` (one of :data:`RECIPES`) as a nested ``dict``, validated.

    Example:
        >>> recipe = load_recipe("cifar-b")
        >>> recipe["grid"]["kind"], recipe["schedule"]["values"], recipe["train"]["precision"]
        ('s_curve', [5, 10, 20, 30, 50, 75], 'fp16')
    """
    if name not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}; got {name!r}")
    text = resources.files(__package__).joinpath(_file_name(name)).read_text(encoding="utf-8")
    recipe = tomllib.loads(text)
    validate_recipe(recipe)
    return recipe


def recipe_get(recipe: Mapping[str, Any], key: str, default: Any = None) -> Any:
    """The value at the dotted ``key`` (``"grid.t0"``), or ``default`` when it is absent."""
    node: Any = recipe
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def time_scale(time_input: str) -> float:
    r"""The factor :math:`c` of a ``time_input`` ``"t"`` (1) or ``"<c>t"``.

    Example:
        >>> time_scale("t"), time_scale("1000t")
        (1.0, 1000.0)
    """
    match = _TIME_INPUT.match(time_input) if isinstance(time_input, str) else None
    if match is None or (match.group(1) is not None and not float(match.group(1)) > 0):
        raise ValueError(f"time_input must be 't' or '<c>t' with a number c > 0 (e.g. '1000t'), "
                         f"got {time_input!r}")
    return 1.0 if match.group(1) is None else float(match.group(1))


def parse_override(text: str) -> tuple[str, Any]:
    """``"key.sub=value"`` as ``("key.sub", value)``; the value is read as a TOML value
    (``0.1``, ``true``, ``[5, 10]``, ``"text"``), else kept as a bare string (``power``).

    Example:
        >>> parse_override("schedule.values=[5, 10]"), parse_override("grid.kind=power")
        (('schedule.values', [5, 10]), ('grid.kind', 'power'))
    """
    if not isinstance(text, str) or "=" not in text:
        raise ValueError(f"an override must look like 'section.key=value', got {text!r}")
    key, raw = (part.strip() for part in text.split("=", 1))
    if not key or not raw:
        raise ValueError(f"an override must look like 'section.key=value', got {text!r}")
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError:
        value = raw
    return key, value


def apply_overrides(recipe: Mapping[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """A copy of ``recipe`` with each ``"section.key=value"`` of ``overrides`` set, validated.

    A key must be one :data:`SCHEMA` knows for its section (a kind's key may be added, e.g.
    ``grid.exponent`` with ``grid.kind=power``), and the value of its type.

    Example:
        >>> recipe = apply_overrides(load_recipe("cifar-b"), ["train.iterations=100",
        ...                                                   "grid.kind=power",
        ...                                                   "grid.exponent=0.5"])
        >>> recipe["train"]["iterations"], recipe["grid"]["kind"]
        (100, 'power')
    """
    if isinstance(overrides, str):
        raise TypeError("overrides must be a list of 'section.key=value' strings, not one string")
    out = copy.deepcopy(dict(recipe))
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        if section not in SCHEMA or "." in section:
            raise ValueError(f"override {text!r}: unknown section {section or key!r}; sections: "
                             f"{', '.join(s for s in SCHEMA if s)}")
        if name not in SCHEMA[section]:
            where = f"[{section}]" if section else "the top level"
            raise ValueError(f"override {text!r}: unknown key {name!r} in {where}; keys: "
                             f"{', '.join(SCHEMA[section])}")
        target = out if not section else out.setdefault(section, {})
        target[name] = value
    validate_recipe(out)
    return out


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join("number" if t is float else t.__name__ for t in types
                            if not (t is int and float in types))
        raise ValueError(f"{where} must be a {names}, got {value!r}")


def _positive_ints(where: str, values: Any, *, increasing: bool = False) -> None:
    if not isinstance(values, list) or not values or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{where} must be a non-empty list of integers >= 1, got {values!r}")
    if increasing and any(b <= a for a, b in zip(values, values[1:])):
        raise ValueError(f"{where} must be strictly increasing, got {values}")


def _check_choice(where: str, value: str, key: str) -> None:
    if value not in CHOICES[key]:
        raise ValueError(f"{where} must be one of {', '.join(CHOICES[key])}; got {value!r}")


def _check_required(section: str, kind: str, spec: Mapping[str, Any], table: str) -> None:
    missing = [k for k in _REQUIRED[table][kind] if k not in spec]
    if missing:
        raise ValueError(f"[{section}] of kind {kind!r} needs {', '.join(missing)}")


def validate_recipe(recipe: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key unless ``recipe`` is complete and consistent."""
    if not isinstance(recipe, Mapping):
        raise TypeError(f"recipe must be a mapping, got {type(recipe).__name__}")
    for section, value in recipe.items():
        if section not in SCHEMA or not section:
            if section in SCHEMA[""]:
                _check_type(section, value, SCHEMA[""][section])
                continue
            raise ValueError(f"unknown recipe section {section!r}; sections: "
                             f"{', '.join(s for s in SCHEMA if s)}")
        if not isinstance(value, Mapping):
            raise ValueError(f"[{section}] must be a table, got {value!r}")
        for key, item in value.items():
            if key not in SCHEMA[section]:
                raise ValueError(f"unknown key {section}.{key}; keys: "
                                 f"{', '.join(SCHEMA[section])}")
            _check_type(f"{section}.{key}", item, SCHEMA[section][key])
    for section in ("data", "grid", "schedule", "process", "drift", "score", "optimizer",
                    "train", "sample"):
        if section not in recipe:
            raise ValueError(f"recipe {recipe.get('name', '?')!r} lacks the [{section}] table")

    grid = recipe["grid"]
    _check_choice("grid.kind", grid.get("kind"), "grid.kind")
    _check_required("grid", grid["kind"], grid, "grid")
    if not (0 <= grid["t0"] < grid["t1"] and math.isfinite(grid["t1"])):
        raise ValueError(f"need 0 <= grid.t0 < grid.t1, got {grid['t0']} and {grid['t1']}")
    if "exponent" in grid and not grid["exponent"] > 0:
        raise ValueError(f"grid.exponent must be > 0, got {grid['exponent']}")

    schedule = recipe["schedule"]
    _check_choice("schedule.kind", schedule.get("kind"), "schedule.kind")
    _check_required("schedule", schedule["kind"], schedule, "schedule")
    if schedule["kind"] == "fixed" and schedule["n"] < 1:
        raise ValueError(f"schedule.n must be >= 1, got {schedule['n']}")
    if schedule["kind"] == "stepped":
        _positive_ints("schedule.values", schedule["values"])
        _positive_ints("schedule.milestones", schedule["milestones"], increasing=True)
        if len(schedule["values"]) != len(schedule["milestones"]) + 1:
            raise ValueError(f"schedule.values needs one more entry than schedule.milestones, "
                             f"got {len(schedule['values'])} and "
                             f"{len(schedule['milestones'])}")
    if schedule["kind"] == "ramp":
        for key in ("n_start", "n_end", "ramp_steps"):
            if key in schedule and schedule[key] < 1:
                raise ValueError(f"schedule.{key} must be >= 1, got {schedule[key]}")
        if "ramp_steps" not in schedule and not 0 < schedule.get("ramp_fraction", 0) <= 1:
            raise ValueError("schedule of kind 'ramp' needs ramp_steps >= 1 or ramp_fraction in "
                             f"(0, 1], got {schedule.get('ramp_fraction')!r}")

    if not recipe["process"].get("g", 0) > 0:
        raise ValueError(f"process.g must be > 0 for DiffFlow, got {recipe['process'].get('g')}")
    for section in ("drift", "score"):
        spec = recipe[section]
        _check_choice(f"{section}.net", spec.get("net"), "net")
        _check_required(section, spec["net"], spec, "net")
        time_scale(spec.get("time_input", "t"))
        for key in ("ch_mult", "dim_mults"):
            if key in spec:
                _positive_ints(f"{section}.{key}", spec[key])
        if "dropout" in spec and not 0 <= spec["dropout"] < 1:
            raise ValueError(f"{section}.dropout must be in [0, 1), got {spec['dropout']}")

    optimizer = recipe["optimizer"]
    _check_choice("optimizer.name", optimizer.get("name"), "optimizer.name")
    _check_choice("optimizer.lr_schedule", optimizer.get("lr_schedule"), "optimizer.lr_schedule")
    if not optimizer.get("lr", 0) > 0:
        raise ValueError(f"optimizer.lr must be > 0, got {optimizer.get('lr')}")
    if optimizer["lr_schedule"] == "step":
        for key in ("lr_gamma", "lr_step_epochs"):
            if key not in optimizer:
                raise ValueError(f"optimizer.lr_schedule 'step' needs optimizer.{key}")

    train = recipe["train"]
    for key in ("batch_size", "iterations", "precision", "gradient", "grad_clip", "ema"):
        if key not in train:
            raise ValueError(f"[train] needs {key}")
    for key in ("batch_size", "iterations", "epochs", "ema_every"):
        if key in train and train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    if train.get("ema_start", 0) < 0:
        raise ValueError(f"train.ema_start must be >= 0, got {train['ema_start']}")
    if not 0 <= train["ema"] < 1:
        raise ValueError(f"train.ema must be in [0, 1), got {train['ema']}")
    if not train["grad_clip"] > 0:
        raise ValueError(f"train.grad_clip must be > 0, got {train['grad_clip']}")
    _check_choice("train.precision", train["precision"], "train.precision")
    _check_choice("train.gradient", train["gradient"], "train.gradient")
    if recipe["sample"].get("steps", 1) < 1:
        raise ValueError(f"sample.steps must be >= 1, got {recipe['sample']['steps']}")

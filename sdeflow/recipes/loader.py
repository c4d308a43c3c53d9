r"""Training recipes as data: the official DiffFlow configurations and sdeflow's own presets.

Each recipe is a TOML file shipped beside this module (``cifar_b.toml`` for ``"cifar-b"``),
read into a plain ``dict`` of sections. A key that chooses a part names an entry of the part's
:class:`~sdeflow.registry.Registry`, and the keys that part reads are the ones its entry
declares (the registry is the only list: a part a user registers is chosen the same way)::

    model      family: sdeflow.recipes.FAMILIES ("diffflow" by default, "score", "flow",
               "path_matching"); path matching's target (sdeflow.processes.paths.TARGETS),
               weighting (sdeflow.objectives.WEIGHTINGS), time (sdeflow.objectives.TIME_LAWS,
               "uniform" by default) and coupling (sdeflow.couplings.COUPLINGS, "independent"
               by default) with their keys; conditional generation (sdeflow.conditioning):
               num_classes (the networks take class labels; a labelled 2D set,
               sdeflow.data.TOY_LABELS), p_uncond (condition dropout in training, 0 by
               default), guidance (the sampling guidance scale, 1 by default)
    path       kind: sdeflow.processes.PATHS ("linear", "cosine", "vp", ...) and its keys
    data       dataset (a 2D set of sdeflow.data.TOY_DATASETS, "cifar10" or "mnist"),
               channels, image_size, resize, dequantize, random_flip (2D: sizes, scaling)
    grid       kind: sdeflow.grids.GRIDS ("power", "s_curve", "uniform") and its keys (t0, t1,
               exponent); jitter: train on the kind's random grid
    schedule   N in training, kind: sdeflow.training.STEPS_SCHEDULES ("fixed": n, "stepped":
               values at milestones, "ramp": n_start -> n_end over ramp_steps or ramp_fraction)
    process    g, the constant diffusion (diffflow); the score family's linear SDE: sde
               (sdeflow.processes.LINEAR_SDES, "vp" by default) and its keys (beta_min,
               beta_max, ...), eps (the smallest time)
    drift      net: sdeflow.nets.NETS ("ddpm_unet", "lucid_unet", "fourier_mlp", "mlp") and
               its keys (path_matching: the network, predicting model.target)
    score      the same
    optimizer  name, lr, lr_schedule ("constant", "step", "linear", "cosine"), lr_gamma and
               lr_step_epochs (step), lr_final (linear, cosine: the final fraction of lr,
               0.1 by default), lr_warmup (steps of linear warm-up from 0; not with step)
    train      batch_size (per process under torchrun), epochs, iterations, grad_clip (absent:
               no clipping), ema,
               ema_start, ema_every, ema_warmup, precision ("fp32", "bf16", "fp16"),
               gradient (sdeflow.gradients.GRADIENTS), discretizer
               (sdeflow.discretizers.DISCRETIZERS, "euler_maruyama" by default), clip_time
               (the networks see t clipped to [grid.t0, grid.t1] in training)
    sample     steps (N of the sampling grid; absent: the evaluation grid)

``time_input`` is ``"t"`` (the network sees :math:`t` itself, as in the official code) or
``"<c>t"`` (it sees :math:`c\,t`, e.g. ``"1000t"``, DDPM's step-index range). Official recipes
(``official = true``) hold the values of DESIGN.md section 4, each commented with its source file
in the official repository; sdeflow's own presets (``official = false``) say where they differ.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping
from importlib import resources
from typing import Any

from sdeflow.nets.registry import time_scale
from sdeflow.registry import Registry

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

__all__ = ["RECIPES", "load_recipe", "apply_overrides", "validate_recipe", "parse_override",
           "recipe_get", "recipe_schema", "part_entry", "time_scale", "CHOICES", "DEFAULTS"]

#: The recipe names, official ones first.
RECIPES: tuple[str, ...] = ("toy-2d", "mnist", "cifar-a", "cifar-b", "sdeflow-cifar",
                             "toy-2d-fast", "flow-matching", "flow-matching-cifar")

_NUMBER = (int, float)
#: The keys of the sections that name no replaceable part, with their types. The tables that
#: name one (``model``, ``grid``, ``schedule``, ``process``, ``path``, ``drift``, ``score``) take
#: their keys from the part's registry: :func:`recipe_schema`.
_FIXED_SCHEMA: dict[str, dict[str, tuple[type, ...]]] = {
    "": {"name": (str,), "official": (bool,), "description": (str,)},
    "data": {"dataset": (str,), "channels": (int,), "image_size": (int,), "resize": (str,),
             "dequantize": (bool,), "random_flip": (bool,), "train_size": (int,),
             "val_size": (int,), "max_abs": _NUMBER, "standardize": (bool,)},
    "optimizer": {"name": (str,), "lr": _NUMBER, "lr_schedule": (str,), "lr_gamma": _NUMBER,
                  "lr_step_epochs": (int,), "lr_final": _NUMBER, "lr_warmup": (int,)},
    "train": {"batch_size": (int,), "epochs": (int,), "iterations": (int,),
              "grad_clip": _NUMBER, "ema": _NUMBER, "ema_start": (int,), "ema_every": (int,),
              "ema_warmup": (bool,), "precision": (str,), "gradient": (str,),
              "discretizer": (str,), "clip_time": (bool,)},
    "sample": {"steps": (int,)},
}
#: Choices of the keys that name no replaceable part (the others: their registries' names).
CHOICES: dict[str, tuple[str, ...]] = {
    "data.resize": ("none", "pad", "bilinear"),
    "optimizer.name": ("adam",),
    "optimizer.lr_schedule": ("constant", "step", "linear", "cosine"),
    "train.precision": ("fp32", "bf16", "fp16"),
}
#: The defaults of the optional keys that choose parts.
DEFAULTS: dict[str, str] = {"model.family": "diffflow", "train.discretizer": "euler_maruyama",
                            "process.sde": "vp", "model.time": "uniform",
                            "model.coupling": "independent"}


def recipe_schema() -> dict[str, dict[str, tuple[type, ...]]]:
    """Every section's keys with their types: fixed for the plain sections; for those that
    name a part, the union of the keys its registry's entries declare (so a part a user
    registers adds its keys: ``--set drift.hidden=64`` is known once a net declares ``hidden``).

    Example:
        >>> schema = recipe_schema()
        >>> schema["grid"]["exponent"], "dim_mults" in schema["score"]
        ((<class 'int'>, <class 'float'>), True)
    """
    from sdeflow.couplings import COUPLINGS
    from sdeflow.grids import GRIDS
    from sdeflow.nets import NETS
    from sdeflow.objectives.times import TIME_LAWS
    from sdeflow.processes import LINEAR_SDES, PATHS
    from sdeflow.training.progressive import STEPS_SCHEDULES

    nets = {"net": (str,), **NETS.key_types()}
    return {**_FIXED_SCHEMA,
            "model": {"family": (str,), "target": (str,), "weighting": (str,), "time": (str,),
                      "coupling": (str,), "num_classes": (int,), "p_uncond": _NUMBER,
                      "guidance": _NUMBER, **TIME_LAWS.key_types(), **COUPLINGS.key_types()},
            "path": {"kind": (str,), **PATHS.key_types()},
            "grid": {"kind": (str,), "jitter": (bool,), **GRIDS.key_types()},
            "schedule": {"kind": (str,), **STEPS_SCHEDULES.key_types()},
            "process": {"g": _NUMBER, "sde": (str,), "eps": _NUMBER,
                        **LINEAR_SDES.key_types()},
            "drift": nets, "score": dict(nets)}


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

    A key must be one :func:`recipe_schema` knows for its section (a kind's key may be added, e.g.
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
    schema = recipe_schema()
    for text in overrides:
        key, value = parse_override(text)
        section, _, name = key.rpartition(".")
        if section not in schema or "." in section:
            raise ValueError(f"override {text!r}: unknown section {section or key!r}; sections: "
                             f"{', '.join(s for s in schema if s)}")
        if name not in schema[section]:
            where = f"[{section}]" if section else "the top level"
            raise ValueError(f"override {text!r}: unknown key {name!r} in {where}; keys: "
                             f"{', '.join(schema[section])}")
        target = out if not section else out.setdefault(section, {})
        target[name] = value
    validate_recipe(out)
    return out


def _check_type(where: str, value: Any, types: tuple[type, ...]) -> None:
    if not types:  # a key declared without types takes any value
        return
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
    if not ok:
        names = " or ".join("number" if t is float else t.__name__ for t in types
                            if not (t is int and float in types))
        raise ValueError(f"{where} must be a {names}, got {value!r}")


def _check_choice(where: str, value: str, key: str) -> None:
    if value not in CHOICES[key]:
        raise ValueError(f"{where} must be one of {', '.join(CHOICES[key])}; got {value!r}")


def _entry(registry: Registry[Any], name: Any, where: str):
    """The entry ``name`` of ``registry``; an error naming the key ``where`` and the choices."""
    if not isinstance(name, str) or name not in registry:
        raise ValueError(f"{where} must be one of {', '.join(registry.names())}; got {name!r}")
    return registry.entry(name)


def _check_required(section: str, spec: Mapping[str, Any], entry: Any, key: str) -> None:
    missing = [k for k in entry.required if k not in spec]
    if missing:
        raise ValueError(f"[{section}] of {key} {entry.name!r} needs {', '.join(missing)}")


def _built(where: str, build: Any) -> Any:
    """``build()``, its errors re-raised as a ``ValueError`` naming the table ``where``."""
    try:
        return build()
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from None


def part_entry(recipe: Mapping[str, Any], key: str, registry: Registry[Any]) -> Any:
    """The registry entry the recipe's ``key`` (``"grid.kind"``) names, or its default.

    Example:
        >>> from sdeflow.grids import GRIDS
        >>> part_entry(load_recipe("cifar-b"), "grid.kind", GRIDS).name
        's_curve'
    """
    return _entry(registry, recipe_get(recipe, key, DEFAULTS.get(key)), key)


def validate_recipe(recipe: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` naming the key unless ``recipe`` is complete and consistent.

    The parts a recipe names are checked against their registries (their names, the keys each
    declares, and for cheap parts, N schedules and grids, by building them); the sections the
    model family needs must be there (:data:`sdeflow.recipes.FAMILIES`).
    """
    from sdeflow.discretizers import DISCRETIZERS
    from sdeflow.gradients import GRADIENTS
    from sdeflow.grids import GRIDS
    from sdeflow.nets import NETS
    from sdeflow.processes import LINEAR_SDES
    from sdeflow.recipes.build import FAMILIES
    from sdeflow.training.progressive import STEPS_SCHEDULES

    if not isinstance(recipe, Mapping):
        raise TypeError(f"recipe must be a mapping, got {type(recipe).__name__}")
    schema = recipe_schema()
    for section, value in recipe.items():
        if section not in schema or not section:
            if section in schema[""]:
                _check_type(section, value, schema[""][section])
                continue
            raise ValueError(f"unknown recipe section {section!r}; sections: "
                             f"{', '.join(s for s in schema if s)}")
        if not isinstance(value, Mapping):
            raise ValueError(f"[{section}] must be a table, got {value!r}")
        for key, item in value.items():
            if key not in schema[section]:
                raise ValueError(f"unknown key {section}.{key}; keys: "
                                 f"{', '.join(schema[section])}")
            _check_type(f"{section}.{key}", item, schema[section][key])

    family = part_entry(recipe, "model.family", FAMILIES)
    for section in ("data", "optimizer", "train", *family.required):
        table, _, key = section.partition(".")
        if table not in recipe:
            needed = f" (model.family {family.name!r} needs it)" if section in family.required \
                else ""
            raise ValueError(f"recipe {recipe.get('name', '?')!r} lacks the [{table}] "
                             f"table{needed}")
        if key and key not in recipe[table]:
            raise ValueError(f"model.family {family.name!r} needs {section}")

    _validate_data(recipe["data"])
    _validate_conditioning(recipe)
    train = recipe["train"]
    if "schedule" in recipe:
        spec = recipe["schedule"]
        entry = _entry(STEPS_SCHEDULES, spec.get("kind"), "schedule.kind")
        _check_required("schedule", spec, entry, "kind")
        schedule = _built(f"[schedule] of kind {entry.name!r}",
                          lambda: entry.factory(spec, train.get("iterations", 1)))
    if "grid" in recipe:
        grid = recipe["grid"]
        entry = _entry(GRIDS, grid.get("kind"), "grid.kind")
        _check_required("grid", grid, entry, "kind")
        if "t0" in grid and "t1" in grid and not (0 <= grid["t0"] < grid["t1"]
                                                  and math.isfinite(grid["t1"])):
            raise ValueError(f"need 0 <= grid.t0 < grid.t1, got {grid['t0']} and {grid['t1']}")
        if "schedule" in recipe:
            params = {k: grid[k] for k in entry.keys if k in grid}
            _built(f"[grid] of kind {entry.name!r}",
                   lambda: entry.factory(schedule.n_end, **params))
    for section in ("drift", "score"):
        if section in recipe:
            spec = recipe[section]
            entry = _entry(NETS, spec.get("net"), f"{section}.net")
            _check_required(section, spec, entry, "net")
            if "check" in entry.extras:
                entry.extras["check"](section, spec)
    process = recipe.get("process", {})
    if "g" in process and not process["g"] > 0:
        raise ValueError(f"process.g must be > 0, got {process['g']}")
    if "eps" in process and not process["eps"] > 0:
        raise ValueError(f"process.eps must be > 0, got {process['eps']}")
    part_entry(recipe, "process.sde", LINEAR_SDES)

    optimizer = recipe["optimizer"]
    _check_choice("optimizer.name", optimizer.get("name"), "optimizer.name")
    _check_choice("optimizer.lr_schedule", optimizer.get("lr_schedule"), "optimizer.lr_schedule")
    if not optimizer.get("lr", 0) > 0:
        raise ValueError(f"optimizer.lr must be > 0, got {optimizer.get('lr')}")
    if optimizer["lr_schedule"] == "step":
        for key in ("lr_gamma", "lr_step_epochs"):
            if key not in optimizer:
                raise ValueError(f"optimizer.lr_schedule 'step' needs optimizer.{key}")
        if optimizer.get("lr_warmup", 0):
            raise ValueError("optimizer.lr_warmup does not combine with lr_schedule 'step'")
    if not 0 <= optimizer.get("lr_final", 0.1) <= 1:
        raise ValueError(f"optimizer.lr_final must be in [0, 1], got {optimizer['lr_final']}")
    if optimizer.get("lr_warmup", 0) < 0:
        raise ValueError(f"optimizer.lr_warmup must be >= 0, got {optimizer['lr_warmup']}")

    for key in ("batch_size", "iterations", "precision", "gradient", "ema"):
        if key not in train:
            raise ValueError(f"[train] needs {key}")
    for key in ("batch_size", "iterations", "epochs", "ema_every"):
        if key in train and train[key] < 1:
            raise ValueError(f"train.{key} must be >= 1, got {train[key]}")
    if train.get("ema_start", 0) < 0:
        raise ValueError(f"train.ema_start must be >= 0, got {train['ema_start']}")
    if not 0 <= train["ema"] < 1:
        raise ValueError(f"train.ema must be in [0, 1), got {train['ema']}")
    if "grad_clip" in train and not train["grad_clip"] > 0:
        raise ValueError(f"train.grad_clip must be > 0, got {train['grad_clip']}")
    _check_choice("train.precision", train["precision"], "train.precision")
    part_entry(recipe, "train.gradient", GRADIENTS)
    part_entry(recipe, "train.discretizer", DISCRETIZERS)
    if train.get("clip_time") and not ("grid" in recipe and {"t0", "t1"} <= set(recipe["grid"])):
        raise ValueError("train.clip_time clips to [grid.t0, grid.t1]: the grid needs t0 and t1")
    if recipe.get("sample", {}).get("steps", 1) < 1:
        raise ValueError(f"sample.steps must be >= 1, got {recipe['sample']['steps']}")
    if "check" in family.extras:
        family.extras["check"](recipe)


def _validate_data(data: Mapping[str, Any]) -> None:
    from sdeflow.data import TOY_DATASETS
    from sdeflow.recipes.data import IMAGE_DATASETS

    dataset = data.get("dataset")
    if dataset not in TOY_DATASETS + IMAGE_DATASETS:
        raise ValueError(f"data.dataset must be one of {', '.join(TOY_DATASETS + IMAGE_DATASETS)}"
                         f"; got {dataset!r}")
    if dataset in IMAGE_DATASETS:
        for key in ("channels", "image_size"):
            if key not in data:
                raise ValueError(f"data.dataset {dataset!r} (images) needs data.{key}")
    if "resize" in data:
        _check_choice("data.resize", data["resize"], "data.resize")


def _validate_conditioning(recipe: Mapping[str, Any]) -> None:
    """``model.num_classes``, ``model.p_uncond`` and ``model.guidance``: a labelled 2D set with
    that many classes, networks with a conditional form, a dropout in [0, 1)."""
    from sdeflow.data import TOY_LABELS
    from sdeflow.nets import NETS

    model = recipe.get("model", {})
    if "num_classes" not in model:
        for key in ("p_uncond", "guidance"):
            if key in model:
                raise ValueError(f"model.{key} needs model.num_classes (a conditional model)")
        return
    dataset, n = recipe["data"].get("dataset"), model["num_classes"]
    if dataset not in TOY_LABELS or TOY_LABELS[dataset][0] != n:
        raise ValueError(f"model.num_classes = {n} needs a labelled data set with {n} classes: "
                         f"{', '.join(f'{k} ({v[0]})' for k, v in TOY_LABELS.items())}; got "
                         f"data.dataset {dataset!r}")
    if not 0 <= model.get("p_uncond", 0.0) < 1:
        raise ValueError(f"model.p_uncond must be in [0, 1), got {model['p_uncond']}")
    if not (math.isfinite(model.get("guidance", 1.0)) and model.get("guidance", 1.0) >= 0):
        raise ValueError(f"model.guidance must be a finite number >= 0, got {model['guidance']}")
    conditional = [k for k in NETS.names() if NETS.entry(k).extras.get("conditional")]
    for section in ("drift", "score"):
        net = recipe.get(section, {}).get("net")
        if net in NETS and net not in conditional:
            raise ValueError(f"model.num_classes: {section}.net {net!r} has no conditional form "
                             f"(nets with one: {', '.join(conditional)})")

r"""Build a model and its training options from a recipe (:mod:`sdeflow.recipes.loader`).

One builder for training (``examples/diffflow_cifar.py``, ``sdeflow train``) and evaluation
(``sdeflow evaluate``), so an evaluated checkpoint is loaded into exactly the networks that
wrote it. Every part is chosen by name through its registry: the networks
(:data:`sdeflow.nets.NETS`), the grid and its random training grid
(:data:`sdeflow.grids.GRIDS`), the schedule of :math:`N`
(:data:`sdeflow.training.STEPS_SCHEDULES`), the step scheme
(:data:`sdeflow.discretizers.DISCRETIZERS`), the gradient strategy
(:data:`sdeflow.gradients.GRADIENTS`), the score family's SDE
(:data:`sdeflow.processes.LINEAR_SDES`) and the model family (:data:`FAMILIES`):

- ``diffflow``: :class:`~sdeflow.training.DiffFlowModel` of the ``[drift]`` and ``[score]``
  networks (built in that order), :math:`dx = f(x, t)\,dt + g\,dw` with the constant
  ``process.g``, a standard normal prior;
- ``score``: :class:`~sdeflow.training.ScoreModel` of the ``[score]`` network under
  ``process.sde`` (VP by default) from ``process.eps`` (``1e-3`` by default), sampled in
  ``sample.steps`` steps (500 when absent);
- ``flow``: :class:`~sdeflow.training.FlowModel` of the ``[drift]`` network;
- ``path_matching``: :class:`~sdeflow.training.PathMatchingModel` of the ``[drift]`` network
  (predicting ``model.target``, velocity by default) on the ``[path]`` of ``path.kind``
  (:data:`sdeflow.processes.PATHS`) over the recipe's grid of ``final_steps`` steps, with
  ``model.weighting``, the time law ``model.time`` (:data:`sdeflow.objectives.TIME_LAWS`) and
  the coupling ``model.coupling`` (:data:`sdeflow.couplings.COUPLINGS`).

The score, flow and path-matching families take no trajectory sweep, so ``train.gradient``,
``train.discretizer`` and ``train.clip_time`` do not apply to them.

With ``model.num_classes`` every family is conditional (:mod:`sdeflow.conditioning`): its
networks are the conditional form of their ``net`` (class labels), trained with the condition
dropout ``model.p_uncond`` and sampled with the guidance scale ``model.guidance``; the run's data
source yields the labels (:func:`sdeflow.data.load_toy_labeled`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sdeflow.grids import GRIDS, TimeGrid
from sdeflow.nets import NETS
from sdeflow.recipes.loader import DEFAULTS, part_entry, recipe_get, validate_recipe
from sdeflow.registry import Registry

__all__ = ["FAMILIES", "state_shape", "build_network", "grid_factory", "random_grid_factory",
           "steps_schedule", "final_steps", "build_model", "sampling_grid", "trainer_options"]

#: The model families by name (``model.family``); factories
#: ``(recipe, *, channels_last, compile) -> nn.Module``. ``required`` holds the sections
#: (``"grid"``) and keys (``"process.g"``) a family needs; ``extras["check"](recipe)`` its
#: further checks.
FAMILIES: Registry[Callable[..., nn.Module]] = Registry("model family", key="model.family")


def state_shape(recipe: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape of one state: ``(2,)`` for a 2D set (:data:`sdeflow.data.TOY_DATASETS`),
    ``(C, H, W)`` for images.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> state_shape(load_recipe("mnist")), state_shape(load_recipe("toy-2d"))
        ((1, 32, 32), (2,))
    """
    from sdeflow.data import TOY_DATASETS

    data = recipe["data"]
    if data.get("dataset") in TOY_DATASETS:
        return (2,)
    return (data["channels"], data["image_size"], data["image_size"])


def build_network(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    r"""The network of a ``[drift]`` or ``[score]`` table for states of ``shape``: the
    :data:`~sdeflow.nets.NETS` entry ``spec["net"]``.

    Example:
        >>> net = build_network({"net": "lucid_unet", "dim": 8, "dim_mults": [1, 2],
        ...                      "time_input": "t"}, (1, 8, 8))
        >>> type(net).__name__, net.time_embedding.time_scale
        ('LucidUNet', 1.0)
    """
    return NETS.get(spec.get("net"))(spec, shape)


def _grid_params(recipe: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
    grid = recipe["grid"]
    entry = part_entry(recipe, "grid.kind", GRIDS)
    return entry, {k: grid[k] for k in entry.keys if k in grid}


def grid_factory(recipe: Mapping[str, Any]) -> Callable[[int], TimeGrid]:
    """``n -> TimeGrid`` of ``n`` steps of the recipe's grid kind with its keys (picklable).

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> grid = grid_factory(load_recipe("cifar-a"))(30)
        >>> grid.n_steps, round(grid.t0, 6), round(grid.t1, 6)
        (30, 0.0001, 0.1)
    """
    entry, params = _grid_params(recipe)
    return functools.partial(entry.factory, **params)


def random_grid_factory(recipe: Mapping[str, Any]) -> Callable[[int], TimeGrid] | None:
    """``n -> TimeGrid``, the random training grid of the recipe's grid kind (``None`` when the
    kind declares none), whether or not ``grid.jitter`` asks for it.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> random = random_grid_factory(load_recipe("mnist"))
        >>> random.func == TimeGrid.power_random, random.keywords["exponent"]
        (True, 0.5)
    """
    entry, params = _grid_params(recipe)
    random = entry.extras.get("random")
    return None if random is None else functools.partial(random, **params)


def _schedule(recipe: Mapping[str, Any]):
    from sdeflow.training.progressive import STEPS_SCHEDULES

    entry = part_entry(recipe, "schedule.kind", STEPS_SCHEDULES)
    return entry.factory(recipe["schedule"], recipe["train"]["iterations"])


def steps_schedule(recipe: Mapping[str, Any]):
    """The recipe's schedule of :math:`N` in training: a
    :class:`~sdeflow.training.StepsSchedule`, or ``None`` for a constant :math:`N`.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> schedule = steps_schedule(load_recipe("cifar-b"))
        >>> schedule(1), schedule(5001), schedule.n_end
        (5, 10, 75)
    """
    schedule = _schedule(recipe)
    return None if schedule.constant else schedule


def final_steps(recipe: Mapping[str, Any]) -> int:
    """:math:`N` at the end of training (the model's evaluation grid).

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> final_steps(load_recipe("cifar-b")), final_steps(load_recipe("toy-2d"))
        (75, 30)
    """
    return _schedule(recipe).n_end


def _grids(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The ``grid``, ``progressive`` and ``jitter`` arguments of the grid-based families."""
    factory = grid_factory(recipe)
    schedule = steps_schedule(recipe)
    jitter: bool | Callable[[int], TimeGrid] = bool(recipe["grid"].get("jitter", False))
    if jitter:
        # the kind's own random grid (the official ExpTimer.rand / STimer.rand), else a jitter
        # of the fixed grid
        jitter = random_grid_factory(recipe) or True
    return {"grid": factory(final_steps(recipe)) if schedule is None else factory,
            "progressive": schedule, "jitter": jitter}


def _networks(recipe: Mapping[str, Any], sections: tuple[str, ...], *, channels_last: bool,
              compile: bool) -> list[nn.Module]:
    """The networks of ``sections``, built in that order (so a seed fixes their weights)."""
    shape = state_shape(recipe)
    num_classes = recipe.get("model", {}).get("num_classes")
    nets = []
    for section in sections:
        spec = recipe[section]
        if num_classes is not None:
            spec = {**spec, "num_classes": num_classes}
        net = build_network(spec, shape)
        if channels_last and len(shape) == 3:
            net = net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()
        nets.append(net)
    return nets


def _conditioning(recipe: Mapping[str, Any]) -> dict[str, float]:
    """The families' ``p_uncond`` and ``guidance`` of a conditional recipe (else none)."""
    model = recipe.get("model", {})
    if "num_classes" not in model:
        return {}
    return {"p_uncond": float(model.get("p_uncond", 0.0)),
            "guidance": float(model.get("guidance", 1.0))}


def _check_diffflow(recipe: Mapping[str, Any]) -> None:
    from sdeflow.discretizers import DISCRETIZERS

    scheme = part_entry(recipe, "train.discretizer", DISCRETIZERS).factory
    if not getattr(scheme, "gaussian", False):
        raise ValueError(f"train.discretizer must be a scheme with a Gaussian transition for "
                         f"DiffFlow's trajectory density, got "
                         f"{recipe_get(recipe, 'train.discretizer')!r}")


def _grid_of(recipe: Mapping[str, Any], n: int) -> TimeGrid:
    return grid_factory(recipe)(n)


def _score_grid_of(recipe: Mapping[str, Any], n: int) -> TimeGrid:
    from sdeflow.processes import LINEAR_SDES

    process = recipe.get("process", {})
    entry = part_entry(recipe, "process.sde", LINEAR_SDES)
    sde = entry.factory(**{k: process[k] for k in entry.keys if k in process})
    return TimeGrid.uniform(n, float(process.get("eps", 1e-3)), sde.T)


@FAMILIES.register("diffflow", required=("grid", "schedule", "process.g", "drift", "score"),
                   check=_check_diffflow, sampling_grid=_grid_of)
def _diffflow(recipe: Mapping[str, Any], *, channels_last: bool = False,
              compile: bool = False) -> nn.Module:
    """:class:`~sdeflow.training.DiffFlowModel` of the recipe."""
    from sdeflow.discretizers import DISCRETIZERS
    from sdeflow.gradients import GRADIENTS
    from sdeflow.priors import StandardNormal
    from sdeflow.training import DiffFlowModel

    drift, score = _networks(recipe, ("drift", "score"), channels_last=channels_last,
                             compile=compile)
    train, grid = recipe["train"], recipe["grid"]
    sample_steps = recipe_get(recipe, "sample.steps")
    return DiffFlowModel(
        drift, score, float(recipe["process"]["g"]), prior=StandardNormal(state_shape(recipe)),
        **_grids(recipe),
        discretizer=DISCRETIZERS.resolve(train.get("discretizer"),
                                         default=DEFAULTS["train.discretizer"]),
        gradient=GRADIENTS.resolve(train["gradient"]),
        sample_grid=None if sample_steps is None else grid_factory(recipe)(sample_steps),
        clip_time=(grid["t0"], grid["t1"]) if train.get("clip_time", False) else None,
        **_conditioning(recipe))


@FAMILIES.register("score", required=("score",), sampling_grid=_score_grid_of)
def _score(recipe: Mapping[str, Any], *, channels_last: bool = False,
           compile: bool = False) -> nn.Module:
    """:class:`~sdeflow.training.ScoreModel` of the recipe."""
    from sdeflow.processes import LINEAR_SDES
    from sdeflow.training import ScoreModel

    (net,) = _networks(recipe, ("score",), channels_last=channels_last, compile=compile)
    process = recipe.get("process", {})
    entry = part_entry(recipe, "process.sde", LINEAR_SDES)
    sde = entry.factory(**{k: process[k] for k in entry.keys if k in process})
    steps = recipe_get(recipe, "sample.steps")
    return ScoreModel(net, sde, state_shape(recipe), eps=float(process.get("eps", 1e-3)),
                      **({} if steps is None else {"sample_steps": steps}),
                      **_conditioning(recipe))


@FAMILIES.register("flow", required=("grid", "schedule", "drift"), sampling_grid=_grid_of)
def _flow(recipe: Mapping[str, Any], *, channels_last: bool = False,
          compile: bool = False) -> nn.Module:
    """:class:`~sdeflow.training.FlowModel` of the recipe."""
    from sdeflow.priors import StandardNormal
    from sdeflow.training import FlowModel

    (drift,) = _networks(recipe, ("drift",), channels_last=channels_last, compile=compile)
    return FlowModel(drift, prior=StandardNormal(state_shape(recipe)), **_grids(recipe),
                     **_conditioning(recipe))


def _declared(entry: Any, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: spec[k] for k in entry.keys if k in spec}


def _path_parts(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The path, the model grid, the time law and the coupling of a path-matching recipe."""
    from sdeflow.couplings import COUPLINGS
    from sdeflow.objectives.times import TIME_LAWS
    from sdeflow.processes import PATHS

    spec = recipe.get("model", {})
    path_entry = part_entry(recipe, "path.kind", PATHS)
    path = path_entry.factory(**_declared(path_entry, recipe["path"]))
    grid = _grid_of(recipe, final_steps(recipe))
    law = part_entry(recipe, "model.time", TIME_LAWS)
    coupling = part_entry(recipe, "model.coupling", COUPLINGS)
    return {"path": path, "grid": grid, "time": law.factory(grid, **_declared(law, spec)),
            "coupling": coupling.factory(**_declared(coupling, spec))}


def _check_path_matching(recipe: Mapping[str, Any]) -> None:
    """Path matching's keys: target and weighting by name, and parts that build and convert
    on the grid (a noise prediction says nothing of the velocity where alpha = 0)."""
    from sdeflow.objectives import WEIGHTINGS
    from sdeflow.processes.paths import TARGETS, conversion

    spec = recipe.get("model", {})
    for key, choices in (("target", TARGETS), ("weighting", WEIGHTINGS)):
        if key in spec and spec[key] not in choices:
            raise ValueError(f"model.{key} must be one of {', '.join(choices)}; got "
                             f"{spec[key]!r}")
    try:
        parts = _path_parts(recipe)
    except (TypeError, ValueError) as err:
        raise ValueError(f"[path], [grid] or the model's time law and coupling: {err}") from None
    path, grid, target = parts["path"], parts["grid"], spec.get("target", "velocity")
    if not grid.t1 <= float(getattr(path, "T", 1.0)):
        raise ValueError(f"grid.t1 = {grid.t1} lies beyond the path's end T = {path.T}")
    try:
        conversion(path.path_coefficients(grid.ts.double()), target, "velocity")
    except ValueError:
        raise ValueError(f"model.target {target!r} does not determine the velocity on "
                         f"path.kind {recipe['path']['kind']!r} over [grid.t0, grid.t1] = "
                         f"[{grid.t0}, {grid.t1}] (alpha or sigma vanishes at an end): choose "
                         f"target 'velocity' or times inside the path") from None


@FAMILIES.register("path_matching", required=("grid", "schedule", "path", "drift"),
                   check=_check_path_matching, sampling_grid=_grid_of)
def _path_matching(recipe: Mapping[str, Any], *, channels_last: bool = False,
                   compile: bool = False) -> nn.Module:
    """:class:`~sdeflow.training.PathMatchingModel` of the recipe."""
    from sdeflow.training import PathMatchingModel

    (net,) = _networks(recipe, ("drift",), channels_last=channels_last, compile=compile)
    spec = recipe.get("model", {})
    parts = _path_parts(recipe)
    return PathMatchingModel(net, parts["path"], parts["grid"], state_shape(recipe),
                             target=spec.get("target", "velocity"),
                             weighting=spec.get("weighting", "target"), time=parts["time"],
                             coupling=parts["coupling"], **_conditioning(recipe))


def sampling_grid(recipe: Mapping[str, Any], n: int) -> TimeGrid:
    """The grid of ``n`` steps the recipe's model samples on: the :data:`FAMILIES` entry's
    declared ``sampling_grid`` (DiffFlow, the flow and path matching: the recipe's grid kind;
    the score family: uniform over ``[eps, T]``).

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> grid = sampling_grid(load_recipe("cifar-b"), 5)
        >>> grid.n_steps, round(grid.t1, 6)
        (5, 0.05)
    """
    entry = part_entry(recipe, "model.family", FAMILIES)
    return entry.extras["sampling_grid"](recipe, int(n))


def build_model(recipe: Mapping[str, Any], *, channels_last: bool = False,
                compile: bool = False) -> nn.Module:
    r"""The model of ``recipe``: the :data:`FAMILIES` entry ``model.family`` (``diffflow``
    when the recipe has no ``[model]`` table).

    Arguments:
        recipe: A recipe (:func:`~sdeflow.recipes.load_recipe`, overrides applied); validated.
        channels_last: Networks' weights in ``torch.channels_last`` (image nets).
        compile: Compile the networks in place (:meth:`torch.nn.Module.compile` keeps the
            parameter names, hence the checkpoints, of the plain networks).

    Example:
        >>> from sdeflow.recipes import apply_overrides, load_recipe
        >>> tiny = apply_overrides(load_recipe("cifar-b"), [
        ...     "drift.ch=8", "score.ch=8", "drift.ch_mult=[1, 2]", "score.ch_mult=[1, 2]",
        ...     "drift.num_res_blocks=1", "score.num_res_blocks=1"])
        >>> model = build_model(tiny)
        >>> model.grid.n_steps, type(model.drift_net).__name__, model.clip_time
        (75, 'UNet', (0.001, 0.05))
        >>> toy = apply_overrides(load_recipe("toy-2d"), ["model.family=score"])
        >>> type(build_model(toy)).__name__
        'ScoreModel'
    """
    validate_recipe(recipe)
    family = part_entry(recipe, "model.family", FAMILIES)
    return family.factory(recipe, channels_last=channels_last, compile=compile)


def trainer_options(recipe: Mapping[str, Any]) -> dict[str, Any]:
    r"""The :class:`~sdeflow.training.Trainer` keyword arguments of ``recipe``'s ``[optimizer]``
    and ``[train]``: ``lr``, the LR schedule (``lr_schedule``; StepLR's ``lr_gamma`` and
    ``lr_step_size`` in iterations; the warm-up steps ``lr_warmup`` and final fraction
    ``lr_final`` of :func:`~sdeflow.training.lr_decay`),
    ``grad_clip`` (``None`` when absent: no clipping), the EMA (``ema_decay``, ``ema_warmup``,
    ``ema_start``) and ``precision``.

    A StepLR decaying every ``lr_step_epochs`` of the ``epochs`` (the official 2D schedule)
    steps every :math:`\max(1, \lfloor \text{lr\_step\_epochs} \cdot \text{iterations} /
    \text{epochs} \rfloor)` iterations: 200 for the official 3000 iterations over 30 epochs,
    33 for ``sdeflow toy``'s 500.

    Example:
        >>> from sdeflow.recipes import apply_overrides, load_recipe
        >>> options = trainer_options(load_recipe("toy-2d"))
        >>> options["lr_gamma"], options["lr_step_size"], options["precision"]
        (0.95, 200, 'fp16')
        >>> trainer_options(apply_overrides(load_recipe("toy-2d"),
        ...                                 ["train.iterations=500"]))["lr_step_size"]
        33
    """
    opt, train = recipe["optimizer"], recipe["train"]
    if train.get("ema_every", 1) != 1:
        raise ValueError(f"train.ema_every must be 1 (the Trainer averages after every "
                         f"update), got {train['ema_every']}")
    options: dict[str, Any] = {
        "lr": float(opt["lr"]),
        "grad_clip": float(train["grad_clip"]) if "grad_clip" in train else None,
        "ema_decay": float(train["ema"]), "ema_warmup": bool(train.get("ema_warmup", False)),
        "ema_start": int(train.get("ema_start", 0)), "precision": train["precision"],
    }
    if opt["lr_schedule"] == "step":
        epochs = train.get("epochs", train["iterations"])
        options |= {"lr_gamma": float(opt["lr_gamma"]),
                    "lr_step_size": max(1, int(opt["lr_step_epochs"]) * train["iterations"]
                                        // epochs)}
    else:
        options |= {"lr_gamma": 1.0, "lr_step_size": None}
    options |= {"lr_schedule": opt["lr_schedule"], "lr_warmup": int(opt.get("lr_warmup", 0)),
                "lr_final": float(opt.get("lr_final", 0.1))}
    return options

r"""Build a DiffFlow model and its training options from a recipe (:mod:`sdeflow.recipes.loader`).

One builder for training (``examples/diffflow_cifar.py``) and evaluation (``sdeflow evaluate``),
so an evaluated checkpoint is loaded into exactly the networks that wrote it.

- networks: ``ddpm_unet`` is :class:`~sdeflow.nets.UNet`, ``lucid_unet`` is
  :class:`~sdeflow.nets.LucidUNet`, ``fourier_mlp`` is :class:`~sdeflow.nets.FourierMLP`; a
  ``time_input`` of ``"<c>t"`` feeds :math:`c\,t` to the time embedding (``"t"``: :math:`t`);
- the grid: ``power`` (:meth:`TimeGrid.power`), ``s_curve`` (:meth:`TimeGrid.s_curve`) or
  ``uniform``, of :math:`N` steps, :math:`N` from the schedule: ``fixed``, ``stepped``
  (:class:`~sdeflow.training.SteppedSteps`) or ``ramp``
  (:class:`~sdeflow.training.ProgressiveSteps`);
- :math:`dx = f(x, t)\,dt + g\,dw` with the constant ``process.g``, a standard normal prior,
  the gradient strategy ``train.gradient``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from sdeflow.grids import TimeGrid
from sdeflow.recipes.loader import time_scale, validate_recipe

__all__ = ["state_shape", "build_network", "grid_factory", "steps_schedule", "final_steps",
           "build_model", "trainer_options"]


def state_shape(recipe: Mapping[str, Any]) -> tuple[int, ...]:
    """The shape of one state: ``(C, H, W)`` for images, ``(2,)`` for the 2D recipe.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> state_shape(load_recipe("mnist")), state_shape(load_recipe("toy-2d"))
        ((1, 32, 32), (2,))
    """
    data = recipe["data"]
    if data.get("dataset") == "2d":
        return (2,)
    return (data["channels"], data["image_size"], data["image_size"])


def build_network(spec: Mapping[str, Any], shape: tuple[int, ...]) -> nn.Module:
    r"""The network of a ``[drift]`` or ``[score]`` table for states of ``shape``.

    Example:
        >>> net = build_network({"net": "lucid_unet", "dim": 8, "dim_mults": [1, 2],
        ...                      "time_input": "t"}, (1, 8, 8))
        >>> type(net).__name__, net.time_embedding.time_scale
        ('LucidUNet', 1.0)
    """
    from sdeflow.nets.lucid_unet import LucidUNet
    from sdeflow.nets.mlp import FourierMLP
    from sdeflow.nets.unet import UNet

    scale = time_scale(spec.get("time_input", "t"))
    kind = spec.get("net")
    if kind in ("ddpm_unet", "lucid_unet") and len(shape) != 3:
        raise ValueError(f"net {kind!r} needs image states (C, H, W), got shape {shape}")
    if kind == "ddpm_unet":
        return UNet(shape[0], ch=spec["ch"], ch_mult=tuple(spec["ch_mult"]),
                    num_res_blocks=spec["num_res_blocks"],
                    attn_resolutions=tuple(spec["attn_resolutions"]),
                    dropout=float(spec["dropout"]), image_size=shape[-1], time_scale=scale)
    if kind == "lucid_unet":
        extra = {k: spec[k] for k in ("attn_heads", "attn_dim_head") if k in spec}
        return LucidUNet(shape[0], dim=spec["dim"], dim_mults=tuple(spec["dim_mults"]),
                         time_scale=scale, **extra)
    if kind == "fourier_mlp":
        if len(shape) != 1:
            raise ValueError(f"net 'fourier_mlp' needs flat states (d,), got shape {shape}")
        if scale != 1.0:
            raise ValueError(f"net 'fourier_mlp' takes time_input 't' only, got "
                             f"{spec.get('time_input')!r}")
        return FourierMLP(shape[0], spec["width"], spec["depth"])
    raise ValueError(f"net must be ddpm_unet, lucid_unet or fourier_mlp, got {kind!r}")


def _grid(n_steps: int, *, kind: str, t0: float, t1: float, exponent: float | None) -> TimeGrid:
    if kind == "power":
        return TimeGrid.power(n_steps, t0, t1, exponent)
    if kind == "s_curve":
        return TimeGrid.s_curve(n_steps, t0, t1)
    return TimeGrid.uniform(n_steps, t0, t1)


def grid_factory(recipe: Mapping[str, Any]) -> Callable[[int], TimeGrid]:
    """``n -> TimeGrid`` of ``n`` steps of the recipe's grid kind on its interval (picklable).

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> grid = grid_factory(load_recipe("cifar-a"))(30)
        >>> grid.n_steps, round(grid.t0, 6), round(grid.t1, 6)
        (30, 0.0001, 0.1)
    """
    g = recipe["grid"]
    return functools.partial(_grid, kind=g["kind"], t0=float(g["t0"]), t1=float(g["t1"]),
                             exponent=None if "exponent" not in g else float(g["exponent"]))


def steps_schedule(recipe: Mapping[str, Any]):
    """The recipe's schedule of :math:`N` in training: a
    :class:`~sdeflow.training.StepsSchedule`, or ``None`` for a fixed :math:`N`.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> schedule = steps_schedule(load_recipe("cifar-b"))
        >>> schedule(1), schedule(5001), schedule.n_end
        (5, 10, 75)
    """
    from sdeflow.training import ProgressiveSteps, SteppedSteps

    s = recipe["schedule"]
    if s["kind"] == "fixed":
        return None
    if s["kind"] == "stepped":
        return SteppedSteps(s["values"], s["milestones"])
    ramp = s.get("ramp_steps") or max(1, int(recipe["train"]["iterations"] * s["ramp_fraction"]))
    return ProgressiveSteps(s["n_start"], s["n_end"], ramp)


def final_steps(recipe: Mapping[str, Any]) -> int:
    """:math:`N` at the end of training (the model's evaluation grid)."""
    s = recipe["schedule"]
    return {"fixed": lambda: s["n"], "stepped": lambda: s["values"][-1],
            "ramp": lambda: s["n_end"]}[s["kind"]]()


def build_model(recipe: Mapping[str, Any], *, channels_last: bool = False,
                compile: bool = False) -> nn.Module:
    r"""The :class:`~sdeflow.training.DiffFlowModel` of ``recipe``.

    Arguments:
        recipe: A validated recipe (:func:`~sdeflow.recipes.load_recipe`, overrides applied).
        channels_last: Networks' weights in ``torch.channels_last`` (image nets).
        compile: Compile the two networks in place (:meth:`torch.nn.Module.compile` keeps the
            parameter names, hence the checkpoints, of the plain networks).

    Example:
        >>> from sdeflow.recipes import apply_overrides, load_recipe
        >>> tiny = apply_overrides(load_recipe("cifar-b"), [
        ...     "drift.ch=8", "score.ch=8", "drift.ch_mult=[1, 2]", "score.ch_mult=[1, 2]",
        ...     "drift.num_res_blocks=1", "score.num_res_blocks=1"])
        >>> model = build_model(tiny)
        >>> model.grid.n_steps, type(model.drift_net).__name__
        (75, 'UNet')
    """
    from sdeflow.gradients import Backprop, StochasticAdjoint
    from sdeflow.priors import StandardNormal
    from sdeflow.training import DiffFlowModel

    validate_recipe(recipe)
    shape = state_shape(recipe)

    def network(section: str) -> nn.Module:
        net = build_network(recipe[section], shape)
        if channels_last and len(shape) == 3:
            net = net.to(memory_format=torch.channels_last)
        if compile:
            net.compile()
        return net

    factory = grid_factory(recipe)
    schedule = steps_schedule(recipe)
    grid = factory(final_steps(recipe)) if schedule is None else factory
    gradient = {"adjoint": StochasticAdjoint, "backprop": Backprop}[recipe["train"]["gradient"]]
    jitter: bool | Callable[[int], TimeGrid] = bool(recipe["grid"].get("jitter", False))
    if jitter and recipe["grid"]["kind"] == "s_curve":
        # the official random S-curve grid (STimer.rand), not a jitter of the fixed one
        jitter = functools.partial(TimeGrid.s_curve_random, t0=float(recipe["grid"]["t0"]),
                                   t1=float(recipe["grid"]["t1"]))
    return DiffFlowModel(
        network("drift"), network("score"), float(recipe["process"]["g"]), grid,
        StandardNormal(shape), jitter=jitter,
        progressive=schedule, gradient=gradient(),
        sample_grid=factory(recipe["sample"]["steps"]))


def trainer_options(recipe: Mapping[str, Any]) -> dict[str, Any]:
    """The :class:`~sdeflow.training.Trainer` keyword arguments of ``recipe``'s ``[optimizer]``
    and ``[train]``: ``lr``, the LR schedule (``lr_gamma``, ``lr_step_size`` in iterations),
    ``grad_clip``, the EMA (``ema_decay``, ``ema_warmup``, ``ema_start``) and ``precision``.

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> options = trainer_options(load_recipe("toy-2d"))
        >>> options["lr_gamma"], options["lr_step_size"], options["precision"]
        (0.95, 200, 'fp16')
    """
    opt, train = recipe["optimizer"], recipe["train"]
    if train.get("ema_every", 1) != 1:
        raise ValueError(f"train.ema_every must be 1 (the Trainer averages after every "
                         f"update), got {train['ema_every']}")
    options: dict[str, Any] = {
        "lr": float(opt["lr"]), "grad_clip": float(train["grad_clip"]),
        "ema_decay": float(train["ema"]), "ema_warmup": bool(train.get("ema_warmup", False)),
        "ema_start": int(train.get("ema_start", 0)), "precision": train["precision"],
    }
    if opt["lr_schedule"] == "step":
        per_epoch = max(1, train["iterations"] // train.get("epochs", train["iterations"]))
        options |= {"lr_gamma": float(opt["lr_gamma"]),
                    "lr_step_size": int(opt["lr_step_epochs"]) * per_epoch}
    else:
        options |= {"lr_gamma": 1.0, "lr_step_size": None}
    return options

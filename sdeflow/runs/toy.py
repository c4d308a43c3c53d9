r"""``sdeflow toy``: the 2D presets scaled to a few minutes of two CPU cores.

DiffFlow trains ``toy-2d-fast`` (sdeflow's recipe for time to quality, measured in
``benchmarks/time_to_quality.py``) unless ``--recipe paper`` asks for ``toy-2d`` (the official
recipe); the score model and the flow train ``toy-2d`` with ``--set model.family=...``. The
command's flags become recipe overrides (:func:`toy_overrides`), so a toy run is a
``sdeflow train --preset`` run with those ``--set`` entries, in the same run folder format.

Example:
    >>> import argparse
    >>> args = argparse.Namespace(model="diffflow", recipe=None, lr_step_epochs=None)
    >>> toy_preset(args)
    'toy-2d-fast'
"""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["MODELS", "TOY_DEFAULTS", "TOY_FAST", "TOY_RECIPES", "toy_preset", "toy_overrides"]

#: The model families ``sdeflow toy --model`` trains.
MODELS: tuple[str, ...] = ("diffflow", "score", "flow")
#: ``sdeflow toy``'s scale: the official 2D recipe (3000 steps of batch 5000 on 500k points)
#: shrunk to a few minutes of two CPU cores, per family (a score-matching step evaluates the
#: network once, a DiffFlow step 2N + 1 times, a flow step N Jacobians).
TOY_DEFAULTS: dict[str, dict[str, Any]] = {
    "diffflow": {"steps": 500, "batch_size": 1000, "lr": 1e-2, "n_grid": 80},
    "score": {"steps": 15000, "batch_size": 1000, "lr": 5e-3, "n_grid": 48},
    "flow": {"steps": 500, "batch_size": 500, "lr": 1e-2, "n_grid": 80},
}
#: ``sdeflow toy``'s scale of the ``toy-2d-fast`` recipe (DiffFlow's default): about the
#: seconds of the paper recipe's 500 steps, since a step costs a third of the network passes.
TOY_FAST: dict[str, Any] = {"steps": 1500, "batch_size": 1000, "lr": 1e-2, "n_grid": 80}
#: ``sdeflow toy --recipe``: the preset each name trains.
TOY_RECIPES: dict[str, str] = {"fast": "toy-2d-fast", "paper": "toy-2d"}


def toy_preset(args: argparse.Namespace) -> str:
    """The preset ``sdeflow toy`` trains: ``toy-2d-fast`` for DiffFlow unless ``--recipe
    paper``; ``toy-2d`` for the score model and the flow."""
    recipe = args.recipe or ("fast" if args.model == "diffflow" else "paper")
    if recipe == "fast" and args.model != "diffflow":
        raise ValueError(f"--recipe fast trains DiffFlow; --model {args.model} trains the paper's "
                         f"toy-2d (leave --recipe out or pass --recipe paper)")
    if recipe == "fast" and args.lr_step_epochs is not None:
        raise ValueError("--lr-step-epochs sets toy-2d's StepLR; --recipe fast decays the "
                         "learning rate linearly (pass --recipe paper)")
    return TOY_RECIPES[recipe]


def toy_overrides(args: argparse.Namespace) -> list[str]:
    """The recipe entries ``sdeflow toy``'s flags set (before its ``--set``) on
    :func:`toy_preset`'s preset."""
    fast = toy_preset(args) == TOY_RECIPES["fast"]
    defaults = TOY_FAST if fast else TOY_DEFAULTS[args.model]
    steps = args.steps or defaults["steps"]
    return [
        f"model.family={args.model}", f"data.dataset={args.dataset}",
        f"data.train_size={args.n_train}", f"data.val_size={args.n_test}",
        f"train.iterations={steps}",
        f"train.batch_size={args.batch_size or defaults['batch_size']}",
        f"optimizer.lr={args.lr or defaults['lr']}",
        *([] if fast else [f"optimizer.lr_step_epochs={args.lr_step_epochs or 2}"]),
        f"train.precision={args.precision}", f"train.gradient={json.dumps(args.gradient)}",
        "train.ema_warmup=true", "train.ema_start=0",
        *([] if args.jitter is None else [f"grid.jitter={str(args.jitter).lower()}"]),
        *(f"{net}.{key}={getattr(args, key)}" for net in ("drift", "score")
          for key in ("width", "depth") if getattr(args, key) is not None),
    ]

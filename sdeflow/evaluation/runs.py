r"""A training run on disk: its configuration, its checkpoints, and its model rebuilt from them.

A run folder (written by ``examples/diffflow_cifar.py``) holds

- ``config.json``: the effective configuration (:func:`write_run_config`): the preset's name,
  the overrides, the recipe after them, and where the data are;
- ``checkpoint.pt``: the rolling checkpoint (the last step), and
  ``checkpoints/step_XXXXXXX.pt``: the kept ones (``Trainer(keep_every=k)``).

:func:`load_run` rebuilds the model with :func:`sdeflow.recipes.build_model` from the recipe
and loads a checkpoint's EMA weights into it.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["CONFIG_NAME", "LoadedRun", "write_run_config", "read_run_config",
           "find_checkpoint", "load_run"]

CONFIG_NAME = "config.json"
CONFIG_FORMAT = 1


def write_run_config(run_dir: str | os.PathLike, *, preset: str, overrides: list[str],
                     recipe: dict[str, Any], data: dict[str, Any],
                     **extra: Any) -> Path:
    """Write ``run_dir/config.json`` (atomically): ``{"format", "preset", "overrides",
    "recipe", "data", **extra}``; ``data`` holds ``dataset``, ``dir`` and ``verify``.

    Example:
        >>> import tempfile
        >>> from sdeflow.recipes import load_recipe
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_run_config(d, preset="mnist", overrides=[], recipe=load_recipe("mnist"),
        ...                          data={"dataset": "mnist", "dir": "data", "verify": True})
        ...     read_run_config(d)["recipe"]["data"]["dataset"]
        'mnist'
    """
    for key in ("dataset", "dir", "verify"):
        if key not in data:
            raise ValueError(f"data must hold {key!r}, got keys {sorted(data)}")
    config = {"format": CONFIG_FORMAT, "preset": preset, "overrides": list(overrides),
              "recipe": recipe, "data": data, **extra}
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / CONFIG_NAME
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{CONFIG_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2, default=str) + "\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run folder, with its recipe validated."""
    from sdeflow.recipes import validate_recipe

    path = Path(run_dir) / CONFIG_NAME
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run folder written by "
                                f"examples/diffflow_cifar.py?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "recipe" not in config or "data" not in config:
        raise ValueError(f"{path} lacks the 'recipe' and 'data' entries of a run configuration")
    validate_recipe(config["recipe"])
    return config


def find_checkpoint(run_dir: str | os.PathLike, which: str | int | None = None) -> Path:
    """The checkpoint file of a run: ``None`` for the last one (``checkpoint.pt``, else the
    last kept one), a step number (``int`` or digits) for the kept one of that step (or
    ``checkpoint.pt`` when it is at that step), or a path to a file.

    Raises:
        FileNotFoundError: No such checkpoint (the message lists the steps there are).
    """
    from sdeflow.training.checkpoint import (
        kept_checkpoint_path,
        list_checkpoints,
        load_checkpoint,
    )

    run_dir = Path(run_dir)
    rolling = run_dir / "checkpoint.pt"
    kept = list_checkpoints(run_dir)
    if which is None:
        if rolling.is_file():
            return rolling
        if kept:
            return kept[-1]
        raise FileNotFoundError(f"{run_dir} holds no checkpoint (checkpoint.pt or "
                                f"checkpoints/step_*.pt)")
    if isinstance(which, int) or (isinstance(which, str) and which.isdigit()):
        step = int(which)
        path = kept_checkpoint_path(run_dir, step)
        if path.is_file():
            return path
        if rolling.is_file() and int(load_checkpoint(rolling, map_location="cpu")["step"]) == step:
            return rolling
        steps = [int(p.stem.split("_")[1]) for p in kept]
        raise FileNotFoundError(f"{run_dir} has no checkpoint of step {step}; kept steps: "
                                f"{steps or 'none'} (and checkpoint.pt, the last)")
    path = Path(which)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    return path


@dataclass
class LoadedRun:
    """A run's model with a checkpoint's weights (see :func:`load_run`)."""

    run_dir: Path
    config: dict[str, Any]
    recipe: dict[str, Any]
    model: nn.Module
    step: int
    checkpoint: Path
    weights: str = "ema"
    extra: dict[str, Any] = field(default_factory=dict)


def load_run(run_dir: str | os.PathLike, *, checkpoint: str | int | None = None,
             device: str | torch.device = "cpu") -> LoadedRun:
    """Rebuild a run's model from its ``config.json`` and load a checkpoint's EMA weights
    (the trained weights when the run kept no EMA), in eval mode on ``device``.

    Arguments:
        run_dir: The run folder.
        checkpoint: Which checkpoint (see :func:`find_checkpoint`; default the last).
        device: Where the model goes.
    """
    from sdeflow.recipes import build_model
    from sdeflow.training.checkpoint import load_checkpoint

    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(config["recipe"])
    ema = state.get("ema")
    weights = "ema" if ema is not None else "trained"
    model.load_state_dict(ema["module"] if ema is not None else state["model"])
    model = model.to(device).eval()
    return LoadedRun(run_dir, config, config["recipe"], model, int(state["step"]), path,
                     weights)

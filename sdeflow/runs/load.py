r"""Load a trained run: its recipe rebuilds the model, a checkpoint fills in the weights.

:func:`load_run` needs no per-kind code: ``config.json`` holds the effective recipe, which
:func:`sdeflow.recipes.build_model` turns into the same networks that wrote the checkpoint (any
family, any registered part), and the checkpoint's EMA weights (the trained ones when the run
kept no EMA, or with ``weights="trained"``) are loaded into it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdeflow.runs.folder import find_checkpoint, read_run_config

__all__ = ["LoadedRun", "load_run"]

_WEIGHTS = ("ema", "trained")


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
             device: str | torch.device = "cpu", weights: str = "ema") -> LoadedRun:
    """Rebuild a run's model from its ``config.json`` and load a checkpoint's weights, in
    eval mode on ``device``.

    Arguments:
        run_dir: The run folder.
        checkpoint: Which checkpoint (:func:`~sdeflow.runs.folder.find_checkpoint`; default
            the last).
        device: Where the model goes.
        weights: ``"ema"`` (the averaged weights; the trained ones when the run kept no EMA)
            or ``"trained"``.
    """
    from sdeflow.recipes import build_model
    from sdeflow.training.checkpoint import load_checkpoint

    if weights not in _WEIGHTS:
        raise ValueError(f"weights must be one of {', '.join(_WEIGHTS)}; got {weights!r}")
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    path = find_checkpoint(run_dir, checkpoint)
    state = load_checkpoint(path, map_location="cpu")
    model = build_model(config["recipe"])
    ema = state.get("ema") if weights == "ema" else None
    model.load_state_dict(ema["module"] if ema is not None else state["model"])
    model = model.to(device).eval()
    return LoadedRun(run_dir, config, config["recipe"], model, int(state["step"]), path,
                     "ema" if ema is not None else "trained")

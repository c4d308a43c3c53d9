r"""Evaluate any saved run: ``sdeflow evaluate RUN``.

A 2D run gets the exact test NLL by the probability-flow ODE, the trajectory ELBO (both in
nats, standardized and data coordinates), samples and the density picture
(:func:`~sdeflow.runs.points.evaluate_points`); an image run gets FID against the number of
sampling steps and bits/dim (:func:`sdeflow.evaluation.evaluate_run`). Both write to
``RUN/eval/<step>/`` (``eval.json`` and the pictures).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from sdeflow.runs.folder import read_run_config

__all__ = ["evaluate", "is_points_run"]


def is_points_run(config: dict[str, Any]) -> bool:
    """Whether a run's states are points (``(d,)``) rather than images."""
    from sdeflow.recipes import state_shape

    return len(state_shape(config["recipe"])) == 1


def evaluate(run_dir: str | os.PathLike, *, checkpoint: str | int | None = None,
             out_dir: str | os.PathLike | None = None, device: str | None = None,
             seed: int = 0, n_samples: int = 20_000, n_grid: int = 80,
             **image_options: Any) -> dict[str, Any]:
    """Evaluate the run in ``run_dir`` (see the module docstring); returns ``eval.json``.

    Arguments:
        run_dir: The run folder.
        checkpoint: ``None`` (the last), a kept step, or a checkpoint file.
        out_dir: Where to write (default ``run_dir/eval/<step>``).
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA when available).
        seed: The seed of the evaluation's draws.
        n_samples, n_grid: 2D runs: samples drawn, density resolution per axis.
        image_options: Image runs: the options of :func:`sdeflow.evaluation.evaluate_run`.
    """
    config = read_run_config(run_dir)
    if not is_points_run(config):
        from sdeflow.evaluation import evaluate_run

        return evaluate_run(run_dir, checkpoint=checkpoint, out_dir=out_dir, device=device,
                            seed=seed, **image_options)
    if image_options:
        raise ValueError(f"{', '.join(sorted(image_options))} apply to image runs; "
                         f"{run_dir} is a 2D run")
    from sdeflow.runs.data import DataSource, load_run_data
    from sdeflow.runs.load import load_run
    from sdeflow.runs.points import evaluate_points
    from sdeflow.training import select_device

    device = select_device(device)
    run = load_run(run_dir, checkpoint=checkpoint, device=device)
    data = load_run_data(run.recipe, DataSource.from_dict(config.get("data")),
                         seed=int(config.get("seed", 0)))
    out = Path(out_dir) if out_dir is not None else run.run_dir / "eval" / str(run.step)
    family = run.recipe.get("model", {}).get("family", "diffflow")
    figures = evaluate_points(run.model, data, out, n_samples=n_samples, n_grid=n_grid,
                              seed=seed, title=f"{family} on {run.recipe['data']['dataset']} "
                                               f"({run.step} steps)", device=device)
    result = {"run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step,
              "weights": run.weights, "out_dir": str(out), **figures}
    (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    return result

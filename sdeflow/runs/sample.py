r"""Draw samples from a saved run: ``sdeflow sample RUN [--steps N] [--lam L] [--n K]``.

Samples come from the reverse family :math:`dx = [f - \tfrac{1+\lambda^2}{2} g^2 s]\,dt +
\lambda g\,d\bar w` on the recipe's grid of :math:`N` steps (``lam = 1``: the reverse SDE,
``lam = 0``: the probability-flow ODE; a flow ignores ``lam``), with the EMA weights by default.
A ``.png`` is a picture (2D: the samples beside held-out data; images: a grid); an ``.npz``
holds the array ``samples`` in data coordinates (8-bit ``(K, C, H, W)`` images, or 2D points).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from sdeflow.runs.load import load_run

__all__ = ["sample_run"]

_SUFFIXES = (".png", ".npz")


def sample_run(
    run_dir: str | os.PathLike,
    *,
    n: int = 64,
    steps: int | None = None,
    lam: float = 1.0,
    out: str | os.PathLike | None = None,
    checkpoint: str | int | None = None,
    weights: str = "ema",
    batch_size: int = 1000,
    seed: int = 0,
    device: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Draw ``n`` samples of a run (see the module docstring); returns what was written.

    Arguments:
        run_dir: The run folder.
        n: The number of samples.
        steps: :math:`N`, the sampling steps on the recipe's grid
            (:func:`sdeflow.recipes.sampling_grid`; default: the recipe's ``sample.steps``,
            else the model's own sampling grid).
        lam: :math:`\\lambda` (1: the reverse SDE, 0: the probability-flow ODE).
        out: ``FILE.png`` or ``FILE.npz`` (default ``RUN/samples_N<N>_lam<lam>.png``, without
            ``N<N>_`` when the model's own grid is used).
        checkpoint, weights: Which checkpoint and weights (:func:`~sdeflow.runs.load_run`).
        batch_size: Samples per call.
        seed: The seed of the draws.
        device: ``cpu``, ``cuda``, ``cuda:N`` (default: CUDA when available).
        progress: A tqdm bar over the batches.
    """
    from sdeflow import plotting
    from sdeflow.recipes import recipe_get, sampling_grid
    from sdeflow.recipes.data import to_uint8
    from sdeflow.runs.data import DataSource, load_run_data
    from sdeflow.runs.evaluate import is_points_run
    from sdeflow.training import select_device

    for name, value in (("n", n), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    if steps is not None and (isinstance(steps, bool) or not isinstance(steps, int)
                              or steps < 1):
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    if not (math.isfinite(lam) and lam >= 0):
        raise ValueError(f"lam must be a finite number >= 0, got {lam!r}")
    if out is not None and Path(out).suffix not in _SUFFIXES:
        raise ValueError(f"out must end in .png or .npz, got {Path(out).name!r}")
    device = select_device(device)
    run = load_run(run_dir, checkpoint=checkpoint, device=device, weights=weights)
    steps = steps or recipe_get(run.recipe, "sample.steps")
    grid = None if steps is None else sampling_grid(run.recipe, steps).to(device)
    name = f"samples_lam{lam:g}.png" if steps is None else f"samples_N{steps}_lam{lam:g}.png"
    path = Path(out) if out is not None else run.run_dir / name
    # the data of the run: 2D points are drawn again from its seed (cheap); images are not read
    data = load_run_data(run.recipe, DataSource.from_dict(run.config.get("data")),
                         seed=int(run.config.get("seed", 0))) if is_points_run(run.config) \
        else None
    sizes = [batch_size] * (n // batch_size) + [n % batch_size] * bool(n % batch_size)
    chunks = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for size in tqdm(sizes, desc="sample", disable=not progress):
            with torch.no_grad():
                chunks.append(run.model.sample(size, lam=lam, grid=grid).cpu())
    x = torch.cat(chunks)
    if data is not None:
        samples = data.to_data(x)
    else:
        samples = to_uint8(x, dequantized=bool(run.recipe["data"].get("dequantize", False)))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npz":
        np.savez_compressed(path, samples=samples.numpy(), steps=steps or 0, lam=lam,
                            step=run.step, weights=run.weights)
    elif data is not None:
        title = f"{run.run_dir.name}: N = {steps}, lambda = {lam:g}, step {run.step}"
        plotting.plot_samples_2d(samples, path, data=data.to_data(data.test), title=title)
    else:
        plotting.save_image_grid(x, path, nrow=max(1, int(math.sqrt(n))))
    return {"path": str(path), "n": n, "steps": steps, "lam": lam, "step": run.step,
            "weights": run.weights}

r"""Evaluating an image model while it trains: bits/dim and FID of the EMA model.

Every ``every`` steps (and at the end) :class:`ImageEvaluation` evaluates the EMA model:
bits/dim on ``size`` held-out test images (one fixed dequantization, the same on every rank) by
the negative ELBO and by the probability-flow ODE (Hutchinson), both with the 8-bit
dequantization term (``levels = 256``), and FID of ``fid_samples`` samples (the model's sampling
grid, the reverse SDE) against the statistics of the training images. Results go to
``eval.jsonl``; the last one into ``metrics.json``. ``sdeflow evaluate`` is the fuller
evaluation (FID against :math:`N` and :math:`\lambda`, repeated dequantizations).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sdeflow.runs.data import RunData
from sdeflow.training.distributed import DistributedContext

__all__ = ["ImageEvalOptions", "ImageEvaluation"]

LEVELS = 256


@dataclass(frozen=True)
class ImageEvalOptions:
    """When and how much to evaluate: every ``every`` steps (0: at the end only), bits/dim on
    ``size`` test images (the ODE solved to ``ode_tol``), FID of ``fid_samples`` samples (0:
    none) against the ``fid_ref`` split's statistics."""

    every: int = 50_000
    size: int = 100
    fid_samples: int = 1000
    fid_ref: str = "train"
    ode_tol: float = 1e-5

    def __post_init__(self) -> None:
        for name, low in (("every", 0), ("size", 1), ("fid_samples", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.fid_samples == 1:
            raise ValueError("fid_samples must be 0 (no FID) or >= 2")
        if self.fid_ref not in ("train", "test"):
            raise ValueError(f"fid_ref must be 'train' or 'test', got {self.fid_ref!r}")
        if not (isinstance(self.ode_tol, float) and 0 < self.ode_tol < 1):
            raise ValueError(f"ode_tol must be a number in (0, 1), got {self.ode_tol!r}")


class ImageEvaluation:
    """The in-training evaluation of an image run (a :class:`~sdeflow.training.Trainer`
    callback). Build it before training: it loads Inception and the reference statistics
    (cached in the run folder) up front, so a missing package fails before any step."""

    def __init__(self, data: RunData, recipe: dict[str, Any], out: Path,
                 options: ImageEvalOptions, ctx: DistributedContext, *, seed: int,
                 progress: bool = True) -> None:
        from sdeflow.data import dequantize

        self.recipe, self.out, self.options, self.ctx = recipe, Path(out), options, ctx
        self.seed, self.ode_tol = seed, options.ode_tol
        size = min(options.size, data.test.shape[0])
        if size < ctx.world_size:
            raise ValueError(f"the evaluation size {size} must be at least the number of "
                             f"processes {ctx.world_size}")
        self.x_eval = dequantize(data.test[:size], LEVELS,
                                 generator=torch.Generator().manual_seed(seed + 12345))
        self.to_uint8 = data.to_data
        self.inception = self.reference = None
        if options.fid_samples:
            from sdeflow.evaluation import reference_for_fid
            from sdeflow.metrics import load_inception

            self.inception = load_inception(ctx.device)
            images = data.train if options.fid_ref == "train" else data.test
            cache = self.out / f"fid_ref_{recipe['data']['dataset']}_{options.fid_ref}.npz"
            mu, sigma, _ = reference_for_fid(lambda: images, cache=cache,
                                             inception=self.inception, ctx=ctx,
                                             progress=progress)
            self.reference = (mu, sigma)
        self.last: dict[str, Any] = {}

    @torch.no_grad()
    def bits_per_dim(self, model) -> dict[str, float]:
        r"""Bits/dim (8-bit) of the held-out images by the ELBO and by the probability-flow
        ODE, each rank evaluating its share; averaged over all of them."""
        from sdeflow.likelihood import bits_per_dim

        ctx = self.ctx
        mine = self.x_eval[ctx.rank::ctx.world_size].to(ctx.device)
        dims = math.prod(mine.shape[1:])
        gen = torch.Generator(device=ctx.device).manual_seed(self.seed + 1 + ctx.rank)
        with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda" else []):
            torch.manual_seed(self.seed + 2 + ctx.rank)
            nelbo = model.nelbo(mine)
            nll = -model.log_likelihood(mine, trace="hutchinson", n_probes=1,
                                        rtol=self.ode_tol, atol=self.ode_tol, generator=gen)
        local = {"bpd_elbo": bits_per_dim(nelbo, dims, levels=LEVELS).mean(),
                 "bpd_ode": bits_per_dim(nll, dims, levels=LEVELS).mean()}
        return ctx.all_reduce_mean(local, weight=mine.shape[0])

    def fid(self, model, step: int) -> dict[str, Any]:
        from sdeflow.evaluation import sample_fid
        from sdeflow.recipes import recipe_get

        n = self.options.fid_samples
        result = sample_fid(lambda b: self.to_uint8(model.sample(b)), n, self.reference,
                            inception=self.inception, batch_size=min(500, n),
                            seed=self.seed + 7 + step, ctx=self.ctx, progress=False)
        return {"fid": result["fid"], "fid_samples": n,
                "fid_n_steps": recipe_get(self.recipe, "sample.steps"), "fid_lam": 1.0,
                "fid_reference": self.options.fid_ref,
                "sample_images_per_s": result["images_per_s"]}

    def __call__(self, trainer, step: int, record: dict) -> None:
        every = self.options.every
        if step != trainer.steps and not (every and step % every == 0):
            return
        self.evaluate(trainer.eval_model, step)

    def evaluate(self, model, step: int) -> dict[str, Any]:
        """Evaluate ``model`` (put in eval mode for the call); appends to ``eval.jsonl``."""
        started = time.perf_counter()
        was_training = model.training
        model.eval()
        try:
            metrics = self.bits_per_dim(model)
            if self.options.fid_samples:
                metrics |= self.fid(model, step)
        finally:
            model.train(was_training)
        metrics |= {"step": step, "eval_images": int(self.x_eval.shape[0]),
                    "eval_seconds": round(time.perf_counter() - started, 2)}
        self.last = metrics
        if self.ctx.is_main:
            with open(self.out / "eval.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            fid = f", FID {metrics['fid']:.2f}" if "fid" in metrics else ""
            print(f"step {step}: {metrics['bpd_elbo']:.3f} bits/dim (ELBO), "
                  f"{metrics['bpd_ode']:.3f} bits/dim (ODE){fid}", flush=True)
        return metrics


def sample_grid(model, path: Path, n: int = 64) -> Tensor:
    """Write a grid of ``n`` samples of an image model to ``path``; returns the samples."""
    from sdeflow.plotting import save_image_grid

    images = model.sample(n)
    save_image_grid(images, path, nrow=int(math.sqrt(n)))
    return images

r"""Evaluate a training run's checkpoint: FID against the number of sampling steps, bits/dim.

:func:`evaluate_run` (the ``sdeflow evaluate RUN_DIR`` command) loads a run's EMA model
(:func:`sdeflow.runs.load_run`) and writes to ``RUN_DIR/eval/<step>/``:

- ``eval.json``: every figure below, with the settings that produced it;
- FID of ``num_samples`` samples for each :math:`N` in ``steps`` and :math:`\lambda` in
  ``lams`` (:math:`\lambda = 1`: the reverse SDE, :math:`\lambda = 0`: the probability-flow ODE,
  both by Euler steps on the recipe's grid of :math:`N` steps,
  :func:`sdeflow.recipes.sampling_grid`), against the reference
  statistics of the data set's training split (computed once and cached as
  ``RUN_DIR/eval/ref_<dataset>_<split>.npz``, or published ones given as ``ref_stats``);
  samples are drawn in resumable chunks (``samples/lam<λ>_N<N>/``,
  :mod:`sdeflow.evaluation.samples`; features, statistics and score from
  :mod:`sdeflow.metrics` through :mod:`sdeflow.evaluation.scoring`);
- ``fid_vs_steps.md`` and ``fid_vs_steps.png``: the FID-against-N table and plot (with the
  paper's figures for CIFAR-10), ``samples.png``: a grid of samples at the largest :math:`N`
  (without FID: 64 samples on the model's own sampling grid);
- bits/dim of the test set (or its first ``bpd_images``) by the ELBO and the ODE with
  ``dequant_repeats`` dequantizations (:mod:`sdeflow.evaluation.bpd`);
- the scalars and the sample grid in TensorBoard's format (``RUN_DIR/tensorboard``, tags
  ``eval/...``) when the ``tensorboard`` package is there.

Under ``torchrun`` each rank draws its share of the chunks and evaluates its share of the test
images; the sums of the features and the per-image bits/dim are combined over the ranks, and
rank 0 writes the files.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdeflow.evaluation.bpd import dequantized_bits_per_dim
from sdeflow.evaluation.report import PAPER_CIFAR10_FID, fid_table, plot_fid_vs_steps
from sdeflow.evaluation.scoring import reference_for_fid, sample_fid
from sdeflow.metrics import load_inception
from sdeflow.runs.load import LoadedRun, load_run
from sdeflow.training.distributed import init_distributed

__all__ = ["evaluate_run", "DEFAULT_STEPS", "DEFAULT_LAMS"]

#: The paper's numbers of sampling steps for the FID-against-N table.
DEFAULT_STEPS: tuple[int, ...] = (5, 10, 20, 50, 100)
DEFAULT_LAMS: tuple[float, ...] = (1.0, 0.0)
GRID_IMAGES = 64


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")


def _lam_name(lam: float) -> str:
    return f"lam{lam:g}"


def evaluate_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str | int | None = None,
    num_samples: int = 50_000,
    steps: Sequence[int] = DEFAULT_STEPS,
    lams: Sequence[float] = DEFAULT_LAMS,
    batch_size: int = 500,
    feature_batch_size: int = 200,
    fid: bool = True,
    ref_stats: str | os.PathLike | None = None,
    ref_split: str = "train",
    bpd: bool = True,
    bpd_images: int | None = None,
    bpd_batch_size: int = 100,
    dequant_repeats: int = 1,
    probes: int = 1,
    ode_tol: float = 1e-5,
    data_dir: str | os.PathLike | None = None,
    out_dir: str | os.PathLike | None = None,
    device: str | None = None,
    seed: int = 0,
    progress: bool = True,
    tensorboard: bool | None = None,
) -> dict[str, Any]:
    r"""Evaluate a run's checkpoint (see the module docstring); returns what ``eval.json``
    holds (on every rank).

    Arguments:
        run_dir: The run folder (``config.json``, checkpoints).
        checkpoint: ``None`` (the last), a step, or a checkpoint file.
        num_samples: :math:`K`, the samples per FID.
        steps: The numbers of sampling steps :math:`N`.
        lams: The noise scales :math:`\lambda` (1: SDE, 0: probability-flow ODE).
        batch_size: Samples per chunk (per sampling call).
        feature_batch_size: Images per Inception call.
        fid: Compute FID.
        ref_stats: An ``.npz`` of reference statistics (``mu``, ``sigma``) to use instead of
            computing them (e.g. TTUR's published CIFAR-10 training-set statistics).
        ref_split: The split whose statistics are the reference (``"train"``, as the paper,
            or ``"test"``).
        bpd: Compute bits/dim.
        bpd_images: Evaluate only the first this many test images (``None``: all).
        bpd_batch_size: Test images per batch.
        dequant_repeats: Dequantizations of each test image.
        probes: Hutchinson probes per image.
        ode_tol: The ODE solver's ``rtol`` and ``atol``.
        data_dir: The data folder (default: the run's, from ``config.json``).
        out_dir: Where to write (default ``run_dir/eval/<step>``).
        device: ``cpu``, ``cuda`` (default: CUDA when available; ``cuda:LOCAL_RANK`` under
            ``torchrun``).
        seed: Seed of the samples and of the bits/dim noise.
        progress: tqdm bars on rank 0.
        tensorboard: Also write TensorBoard events (``None``: when the package is installed).
    """
    from sdeflow.plotting import save_image_grid
    from sdeflow.recipes import sampling_grid
    from sdeflow.recipes.data import load_images, scale_images, to_uint8

    for name, value in (("num_samples", num_samples), ("batch_size", batch_size),
                        ("feature_batch_size", feature_batch_size),
                        ("bpd_batch_size", bpd_batch_size),
                        ("dequant_repeats", dequant_repeats), ("probes", probes)):
        _check_positive_int(name, value)
    steps = [int(n) for n in steps]
    lams = [float(lam) for lam in lams]
    if fid and (not steps or any(n < 1 for n in steps)):
        raise ValueError(f"steps must be integers >= 1, got {steps}")
    if fid and (not lams or any(not (math.isfinite(lam) and lam >= 0) for lam in lams)):
        raise ValueError(f"lams must be finite numbers >= 0, got {lams}")
    if fid and num_samples < 2:
        raise ValueError(f"num_samples must be >= 2 for a covariance, got {num_samples}")
    if ref_split not in ("train", "test"):
        raise ValueError(f"ref_split must be 'train' or 'test', got {ref_split!r}")
    if bpd_images is not None:
        _check_positive_int("bpd_images", bpd_images)
    if not (fid or bpd):
        raise ValueError("nothing to evaluate: both fid and bpd are off")
    started = time.perf_counter()
    with init_distributed(device) as ctx:
        run = load_run(run_dir, checkpoint=checkpoint, device=ctx.device)
        recipe, data = run.recipe, run.config.get("data") or {}
        dataset = recipe["data"]["dataset"]
        if data_dir is None and data.get("dir") is None:
            raise FileNotFoundError(f"{run.run_dir} records no data folder; pass data_dir "
                                    f"(--data-dir)")
        root = Path(data_dir) if data_dir is not None else Path(data["dir"])
        dequantized = bool(recipe["data"].get("dequantize", False))
        out = Path(out_dir) if out_dir is not None else run.run_dir / "eval" / str(run.step)
        if ctx.is_main:
            out.mkdir(parents=True, exist_ok=True)
        ctx.barrier()

        def images(train: bool):
            try:
                return load_images(dataset, root, train=train,
                                   verify=bool(data.get("verify", True)),
                                   resize=str(recipe["data"].get("resize", "pad")))
            except (FileNotFoundError, RuntimeError) as err:
                raise FileNotFoundError(f"the data of {run.run_dir} ({dataset}, "
                                        f"{root}): {err}; pass data_dir (--data-dir)") from err

        result: dict[str, Any] = {
            "run_dir": str(run.run_dir), "checkpoint": str(run.checkpoint), "step": run.step,
            "weights": run.weights, "preset": run.config.get("preset"), "dataset": dataset,
            "world_size": ctx.world_size, "device": str(ctx.device), "seed": seed,
            "files": {"eval": "eval.json"}}
        model = run.model
        if fid:
            inception = load_inception(ctx.device)
            mu_ref, sigma_ref, ref_info = reference_for_fid(
                lambda: images(ref_split == "train"), ref_stats=ref_stats,
                cache=run.run_dir / "eval" / f"ref_{dataset}_{ref_split}.npz",
                inception=inception, batch_size=feature_batch_size, ctx=ctx,
                progress=progress)
            ref_info["split"] = ref_split if ref_stats is None else None
            rows = []
            for n_steps in steps:
                grid = sampling_grid(recipe, n_steps).to(ctx.device)
                for lam in lams:
                    def draw(b: int, lam: float = lam, grid=grid) -> torch.Tensor:
                        return to_uint8(model.sample(b, lam=lam, grid=grid),
                                        dequantized=dequantized)

                    row = sample_fid(
                        draw, num_samples, (mu_ref, sigma_ref), inception=inception,
                        batch_size=batch_size, feature_batch_size=feature_batch_size,
                        seed=seed, ctx=ctx,
                        folder=out / "samples" / f"{_lam_name(lam)}_N{n_steps}",
                        meta={"checkpoint_step": run.step, "n_steps": n_steps, "lam": lam},
                        progress=progress, desc=f"N={n_steps} λ={lam:g}")
                    rows.append({"n_steps": n_steps, "lam": lam, **row})
                    if ctx.is_main:
                        print(f"FID {row['fid']:.3f} at N = {n_steps}, λ = {lam:g} "
                              f"({num_samples} samples)", flush=True)
            paper = PAPER_CIFAR10_FID if dataset == "cifar10" else None
            result["fid"] = {"num_samples": num_samples, "batch_size": batch_size,
                             "reference": ref_info, "rows": rows}
            if ctx.is_main:
                table = fid_table(rows, paper=paper)
                (out / "fid_vs_steps.md").write_text(
                    f"FID of {num_samples} samples against the {dataset} "
                    f"{ref_info['split'] or 'given'} statistics; checkpoint step {run.step} "
                    f"({run.weights} weights).\n\n{table}\n")
                plot_fid_vs_steps(rows, out / "fid_vs_steps.png", paper=paper,
                                  title=f"{dataset}, step {run.step}, K = {num_samples}")
                chunk = out / "samples" / f"{_lam_name(lams[0])}_N{max(steps)}"
                shown = torch.cat([torch.from_numpy(np.load(p)["images"])
                                   for p in sorted(chunk.glob("chunk_*.npz"))[:2]])
                shown = scale_images(shown[:GRID_IMAGES], dequantize=False)
                save_image_grid(shown, out / "samples.png",
                                nrow=max(1, int(math.sqrt(shown.shape[0]))))
                result["files"] |= {"fid_table": "fid_vs_steps.md",
                                    "fid_plot": "fid_vs_steps.png", "samples": "samples.png"}
        elif ctx.is_main:  # no FID samples to show: a grid of its own, on a forked RNG
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda"
                                       else []), torch.no_grad():
                torch.manual_seed(seed)
                shown = model.sample(GRID_IMAGES, lam=lams[0] if lams else 1.0)
            save_image_grid(shown, out / "samples.png", nrow=int(math.sqrt(GRID_IMAGES)))
            result["files"]["samples"] = "samples.png"
        if bpd:
            test = images(False)
            if bpd_images is not None:
                test = test[:bpd_images]
            summary = dequantized_bits_per_dim(
                model, test, repeats=dequant_repeats, batch_size=bpd_batch_size,
                seed=seed, probes=probes, ode_tol=ode_tol, ctx=ctx, progress=progress)
            summary["n_steps_elbo"] = model.grid.n_steps
            result["bpd"] = summary
            result["bpd_elbo"], result["bpd_ode"] = summary["elbo"]["mean"], \
                summary["ode"]["mean"]
            if ctx.is_main:
                print(f"bits/dim on {summary['images']} test images x {dequant_repeats}: "
                      f"{result['bpd_elbo']:.4f} (ELBO), {result['bpd_ode']:.4f} (ODE)",
                      flush=True)
        result["seconds"] = round(time.perf_counter() - started, 2)
        if ctx.is_main:
            (out / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
            _tensorboard(run, result, out, tensorboard)
        ctx.barrier()
        result["out_dir"] = str(out)
        return result


def _tensorboard(run: LoadedRun, result: dict[str, Any], out: Path,
                 enabled: bool | None) -> None:
    from sdeflow.training.tensorboard import TensorBoardLog, tensorboard_available

    if enabled is None:
        enabled = tensorboard_available()
    if not enabled:
        return
    scalars: dict[str, float] = {}
    for row in result.get("fid", {}).get("rows", []):
        scalars[f"fid_{_lam_name(row['lam'])}_N{row['n_steps']}"] = row["fid"]
    for key in ("bpd_elbo", "bpd_ode"):
        if key in result:
            scalars[key] = result[key]
    with TensorBoardLog(run.run_dir / "tensorboard", prefix="eval/") as log:
        log.scalars(scalars, step=run.step)
        if (out / "samples.png").exists():
            log.image_file("eval/samples", out / "samples.png", step=run.step)

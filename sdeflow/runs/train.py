r"""Train a recipe into a run folder: ``sdeflow train --preset NAME [--set key=value ...]``.

:func:`train_run` is the one runner behind ``sdeflow train`` and its short form ``sdeflow toy``,
for every preset and model family, on the CPU, one GPU, or many under ``torchrun``. Faults come
before effects: the recipe, the device and the data are checked before the run folder is
touched (with ``overwrite``, before the old run is deleted); a folder holding the same run is
resumed and says so, one holding another recipe is refused with the differing keys
(:func:`~sdeflow.runs.folder.plan_run`). Checkpoints are written atomically, the first within a
minute; Ctrl-C or SIGTERM saves one and raises
:class:`~sdeflow.training.TrainingInterrupted`. At the end the EMA model is evaluated into
``metrics.json`` and ``samples.png`` (2D: also ``density.png`` and ``loss.png``).
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sdeflow.runs.data import DataSource, RunData, load_run_data
from sdeflow.runs.folder import clear_run, plan_run, write_run_config
from sdeflow.runs.images import ImageEvalOptions, ImageEvaluation, sample_grid
from sdeflow.runs.points import evaluate_points

__all__ = ["RunSettings", "PointEvalOptions", "train_run", "seed_everything"]


@dataclass(frozen=True)
class PointEvalOptions:
    """The end-of-training evaluation of a 2D run: ``n_samples`` samples for ``samples.png``,
    ``n_grid`` points per axis of ``density.png``."""

    n_samples: int = 20_000
    n_grid: int = 80


@dataclass(frozen=True)
class RunSettings:
    """How to run (not what to train): the ``seed`` of data, model and training, the
    ``device`` (``None``: CUDA when available), and the ``channels_last`` / ``compile`` GPU
    layout options of image networks."""

    seed: int = 0
    device: str | None = None
    channels_last: bool = False
    compile: bool = False


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's global RNG and python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - the legacy global RNG user code may rely on
    random.seed(seed)


@dataclass
class _Outputs:
    """The end-of-training outputs of a run of either kind of data."""

    data: RunData
    recipe: dict[str, Any]
    out: Path
    seed: int
    points: PointEvalOptions
    images: ImageEvaluation | None = None
    figures: dict[str, Any] = field(default_factory=dict)

    def write(self, trainer, ctx, title: str) -> dict[str, Any]:
        model = trainer.eval_model.eval()
        if self.data.kind == "points":
            if ctx.is_main:
                self.figures = evaluate_points(
                    model, self.data, self.out, n_samples=self.points.n_samples,
                    n_grid=self.points.n_grid, seed=self.seed,
                    title=f"{title} ({trainer.step} steps)", device=trainer.device,
                    loss_curve=trainer.metrics_path)
            return self.figures
        if self.images is not None and not self.images.last:
            self.images.evaluate(model, trainer.step)  # a resumed, finished run
        if ctx.is_main:
            with torch.random.fork_rng(devices=[ctx.device] if ctx.device.type == "cuda"
                                       else []), torch.no_grad():
                torch.manual_seed(self.seed + 3)
                sample_grid(model, self.out / "samples.png")
        return dict(self.images.last) if self.images is not None else {}


def _check_device(device: str | None) -> torch.device:
    from sdeflow.training import select_device

    return select_device(device)


def train_run(
    recipe: dict[str, Any],
    out: str | Path,
    *,
    preset: str | None = None,
    overrides: Sequence[str] = (),
    source: DataSource | None = None,
    settings: RunSettings | None = None,
    overwrite: bool = False,
    trainer_options: dict[str, Any] | None = None,
    points: PointEvalOptions | None = None,
    images: ImageEvalOptions | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Train ``recipe`` into the run folder ``out`` and evaluate it; returns ``metrics.json``.

    Arguments:
        recipe: A validated recipe (:func:`sdeflow.recipes.load_recipe` and overrides).
        out: The run folder.
        preset, overrides: Where the recipe came from (recorded in ``config.json``).
        source: Where the data are (:class:`~sdeflow.runs.data.DataSource`; 2D sets need
            none).
        settings: :class:`RunSettings` (seed, device, GPU layout).
        overwrite: Delete the run in ``out`` (its run files only) once every check passed.
        trainer_options: Extra :class:`~sdeflow.training.Trainer` arguments
            (``checkpointing``, ``logging``, ``plots``, ``callbacks``).
        points, images: The end-of-training evaluation of 2D and of image runs.
        echo: Where one-line messages go (rank 0).

    Raises:
        RunError: ``out`` cannot be used (a file, not writable, another run there).
        FileNotFoundError: Missing or corrupt data files.
        TrainingInterrupted: Ctrl-C or SIGTERM (a checkpoint was written).
    """
    from sdeflow.recipes import build_model
    from sdeflow.training import Trainer, tensorboard_available
    from sdeflow.training.distributed import init_distributed

    settings = settings or RunSettings()
    source = source or DataSource()
    out = Path(out)
    config = {"preset": preset, "overrides": list(overrides), "recipe": recipe,
              "seed": settings.seed, "data": source.as_dict()}
    _check_device(settings.device)  # before anything is read, written or deleted
    plan = plan_run(out, config, overwrite=overwrite)
    with init_distributed(settings.device) as ctx:
        data = _load_data(recipe, source, settings.seed, ctx)
        if plan.action == "finished" and (out / "metrics.json").exists():
            if ctx.is_main:
                echo(f"{plan.message}; its figures are in {out / 'metrics.json'}")
            return json.loads((out / "metrics.json").read_text())
        if ctx.is_main:
            if plan.action == "overwrite":
                clear_run(out)
            write_run_config(out, config)
            echo(plan.message)
            logging = (trainer_options or {}).get("logging")
            if (logging is None or logging.tensorboard is None) and not tensorboard_available():
                echo("no TensorBoard events: the tensorboard package is not installed (pip "
                     "install 'sdeflow[eval]'); metrics.jsonl has the same numbers")
        ctx.barrier()
        seed_everything(settings.seed)
        model = build_model(recipe, channels_last=settings.channels_last,
                            compile=settings.compile)
        if ctx.world_size > 1:  # different trajectory noise and flips per rank
            ctx.seed(settings.seed + 1)
        outputs = _Outputs(data, recipe, out, settings.seed, points or PointEvalOptions())
        extra = dict(trainer_options or {})
        callbacks = list(extra.pop("callbacks", ()))
        if data.kind == "images":
            progress = extra["logging"].progress if "logging" in extra else True
            outputs.images = ImageEvaluation(data, recipe, out, images or ImageEvalOptions(),
                                             ctx, seed=settings.seed, progress=progress)
            callbacks.append(outputs.images)
        batches = data.batches(recipe, seed=settings.seed, rank=ctx.rank,
                               world_size=ctx.world_size, channels_last=settings.channels_last)
        trainer = Trainer(model, batches, steps=recipe["train"]["iterations"],
                          **trainer_arguments(recipe), out_dir=out, distributed=ctx,
                          config=config, callbacks=callbacks, **extra)
        trainer.fit(resume=plan.action in ("resume", "extend", "finished"))
        figures = outputs.write(trainer, ctx, _title(recipe))
        metrics = {"preset": preset, "model": recipe.get("model", {}).get("family", "diffflow"),
                   "dataset": recipe["data"]["dataset"], "steps": trainer.step, **figures,
                   "final_loss": trainer.last_loss, "skipped_steps": trainer.skipped,
                   "train_time_s": round(trainer.train_time, 2),
                   "parameters": sum(p.numel() for p in model.parameters()),
                   "device": str(trainer.device), "world_size": ctx.world_size,
                   "params_in_sync": ctx.max_param_deviation(model) == 0.0,
                   "torch_threads": torch.get_num_threads()}
        if ctx.is_main:
            (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        return metrics


def _load_data(recipe: dict[str, Any], source: DataSource, seed: int, ctx) -> RunData:
    """Rank 0 loads first (it may generate the files), then the others."""
    data = None
    for turn in (ctx.rank == 0, ctx.rank != 0):
        if turn:
            data = load_run_data(recipe, source, seed=seed, download=False)
        ctx.barrier()
    return data


def _title(recipe: dict[str, Any]) -> str:
    family = recipe.get("model", {}).get("family", "diffflow")
    return f"{family} on {recipe['data']['dataset']}"


def trainer_arguments(recipe: dict[str, Any]) -> dict[str, Any]:
    """The :class:`~sdeflow.training.Trainer` arguments of ``recipe``'s ``[optimizer]`` and
    ``[train]`` tables: the optimization (Adam, the LR schedule, clipping), the EMA and the
    precision (:func:`sdeflow.recipes.trainer_options` holds their values).

    Example:
        >>> from sdeflow.recipes import load_recipe
        >>> args = trainer_arguments(load_recipe("toy-2d"))
        >>> args["optimization"].lr, args["ema"].start, args["precision"]
        (0.01, 10, 'fp16')
    """
    from sdeflow.recipes import trainer_options
    from sdeflow.training import EMAConfig, Optimization, lr_decay, step_lr

    o = trainer_options(recipe)
    scheduler = None
    if o["lr_step_size"] is not None and o["lr_gamma"] != 1.0:
        scheduler = step_lr(o["lr_step_size"], o["lr_gamma"])
    elif o["lr_schedule"] != "step" and (o["lr_schedule"] != "constant" or o["lr_warmup"]):
        scheduler = lr_decay(o["lr_schedule"], recipe["train"]["iterations"],
                             warmup=o["lr_warmup"], final=o["lr_final"])
    return {"optimization": Optimization(lr=o["lr"], scheduler=scheduler,
                                         grad_clip=o["grad_clip"]),
            "ema": EMAConfig(o["ema_decay"], warmup=o["ema_warmup"], start=o["ema_start"]),
            "precision": o["precision"]}

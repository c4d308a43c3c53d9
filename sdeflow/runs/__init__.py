r"""Runs: training a recipe into a run folder, and sampling and evaluating saved runs.

The layer behind the ``sdeflow`` command (``train``, ``toy``, ``sample``, ``evaluate``), for
every preset and model family, with one run-folder layout (:mod:`sdeflow.runs.folder`):

- :func:`train_run` checks the recipe, the device and the data before it touches the folder,
  resumes a run of the same recipe, refuses another one, and evaluates the model at the end;
- :func:`load_run` rebuilds a saved run's model from its ``config.json`` and a checkpoint;
- :func:`sample_run` draws from it (``.png`` or ``.npz``); :func:`evaluate` evaluates it (2D:
  exact NLL, ELBO, density; images: FID against :math:`N`, bits/dim).
"""

from sdeflow.runs.data import DataSource, ImageBatches, RunData, default_source, load_run_data
from sdeflow.runs.evaluate import evaluate, is_points_run
from sdeflow.runs.folder import (
    CONFIG_NAME,
    RUN_FILES,
    RunError,
    RunPlan,
    clear_run,
    find_checkpoint,
    plan_run,
    read_run_config,
    recipe_differences,
    write_run_config,
)
from sdeflow.runs.images import ImageEvalOptions, ImageEvaluation
from sdeflow.runs.load import LoadedRun, load_run
from sdeflow.runs.points import evaluate_points
from sdeflow.runs.sample import sample_run
from sdeflow.runs.smoke import smoke_overrides
from sdeflow.runs.train import (
    PointEvalOptions,
    RunSettings,
    seed_everything,
    train_run,
    trainer_arguments,
)

__all__ = [
    "CONFIG_NAME",
    "RUN_FILES",
    "DataSource",
    "ImageBatches",
    "ImageEvalOptions",
    "ImageEvaluation",
    "LoadedRun",
    "PointEvalOptions",
    "RunData",
    "RunError",
    "RunPlan",
    "RunSettings",
    "clear_run",
    "default_source",
    "evaluate",
    "evaluate_points",
    "find_checkpoint",
    "is_points_run",
    "load_run",
    "load_run_data",
    "plan_run",
    "read_run_config",
    "recipe_differences",
    "sample_run",
    "seed_everything",
    "smoke_overrides",
    "train_run",
    "trainer_arguments",
    "write_run_config",
]

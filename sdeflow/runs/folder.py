r"""The run folder: one layout for every recipe, and the rules that keep a run from being lost.

A run folder holds::

    config.json          the effective recipe, the preset and overrides it came from, the data
                         source and the seed (what rebuilds the model; what a re-run must match)
    checkpoint.pt        the rolling checkpoint (torch.load(..., weights_only=True) reads it)
    checkpoint.json      its sidecar: step, format, SHA-256 (sdeflow.training.checkpoint)
    checkpoints/         kept checkpoints step_XXXXXXX.pt (+ .json), when asked for
    metrics.jsonl        one record per logged step, each step once
    tensorboard/         the same scalars and the sample plots, when tensorboard is installed
    samples.png          samples of the EMA model at the end of training
    metrics.json         the end-of-training figures (test NLL, ELBO, FID, times)
    eval/<step>/         what ``sdeflow evaluate`` writes
    data/                ``--smoke`` without ``--data-dir``: the generated stand-in data (kept
                         by ``--overwrite``)

:func:`plan_run` decides, before anything is written or deleted, what a ``sdeflow train``
command does with its ``--out``: start a new run, resume the one there (the same recipe and
seed), extend it (only ``train.iterations`` grew), or refuse with the differing keys. With
``overwrite`` the old run's files are deleted only by :func:`clear_run`, which the caller runs
after every check (device, data, recipe) has passed.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["CONFIG_NAME", "RUN_FILES", "RunPlan", "RunError", "write_run_config",
           "read_run_config", "recipe_differences", "plan_run", "clear_run", "find_checkpoint"]

CONFIG_NAME = "config.json"
CONFIG_FORMAT = 2
#: The files and folders a run writes (what ``--overwrite`` deletes, and nothing else).
RUN_FILES: tuple[str, ...] = (
    CONFIG_NAME, "checkpoint.pt", "checkpoint.json", "checkpoints", "metrics.jsonl",
    "tensorboard", "samples", "samples.png", "density.png", "loss.png", "metrics.json",
    "eval", "eval.jsonl")
#: Keys of the recipe a re-run may change without being a different run.
_MAY_GROW = "train.iterations"


class RunError(RuntimeError):
    """A run folder cannot be used as asked (the message says why and what to do)."""


def write_run_config(run_dir: str | os.PathLike, config: Mapping[str, Any]) -> Path:
    """Write ``run_dir/config.json`` atomically (temporary file + rename).

    Example:
        >>> import tempfile
        >>> from sdeflow.recipes import load_recipe
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = write_run_config(d, {"preset": "mnist", "recipe": load_recipe("mnist"),
        ...                              "seed": 0, "data": {"dir": None}})
        ...     read_run_config(d)["recipe"]["data"]["dataset"]
        'mnist'
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    config = {"format": CONFIG_FORMAT, **config}
    fd, tmp = tempfile.mkstemp(dir=run_dir, prefix=f".{CONFIG_NAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(config, indent=2, default=str) + "\n")
        os.replace(tmp, run_dir / CONFIG_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return run_dir / CONFIG_NAME


def read_run_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a run folder, its recipe validated.

    Raises:
        FileNotFoundError: ``run_dir`` or its ``config.json`` is missing.
        ValueError: The file is not a run configuration.
    """
    from sdeflow.recipes import validate_recipe

    run_dir = Path(run_dir)
    path = run_dir / CONFIG_NAME
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a folder written by "
                                f"sdeflow train?")
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict) or "recipe" not in config:
        raise ValueError(f"{path} lacks the 'recipe' entry of a run configuration")
    validate_recipe(config["recipe"])
    return config


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out |= _flatten(value, name + ".")
        else:
            out[name] = value
    return out


def recipe_differences(saved: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple]:
    """``{"section.key": (saved value, new value)}`` for every key whose value differs (a key
    missing on one side shows as ``None`` there).

    Example:
        >>> recipe_differences({"grid": {"t0": 1e-3, "t1": 0.05}},
        ...                    {"grid": {"t0": 1e-4, "t1": 0.05}})
        {'grid.t0': (0.001, 0.0001)}
    """
    a, b = _flatten(saved), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


@dataclass(frozen=True)
class RunPlan:
    """What a training command does with its run folder.

    ``action``: ``"new"`` (nothing there), ``"resume"`` (the same run, continued from
    ``step``; 0 when it was killed before its first checkpoint), ``"extend"`` (the same run
    with more ``train.iterations``), ``"overwrite"`` (a run is there and will be deleted once
    every check has passed), ``"finished"`` (the same run, already at its last step).
    """

    action: str
    out: Path
    step: int = 0
    message: str = ""


def _checkpoint_step(out: Path) -> int:
    from sdeflow.training.checkpoint import load_checkpoint

    path = out / "checkpoint.pt"
    if not path.exists():
        return 0
    return int(load_checkpoint(path, map_location="cpu")["step"])


def _check_writable(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise RunError(f"--out {out} is a file, not a folder: choose a folder for the run")
    parent = out if out.exists() else next((p for p in out.parents if p.exists()), Path("."))
    if not os.access(parent, os.W_OK | os.X_OK):
        raise RunError(f"--out {out}: {parent} is not writable")


def plan_run(out: str | os.PathLike, config: Mapping[str, Any], *,
             overwrite: bool = False) -> RunPlan:
    """Decide what to do with the run folder ``out`` for a run of ``config`` (its ``recipe``
    and ``seed``), writing and deleting nothing.

    A folder holding the same recipe and seed is resumed; a folder whose recipe differs in
    ``train.iterations`` alone (more than its checkpoint's step) is extended; any other
    difference is refused with the differing keys, unless ``overwrite``.

    Raises:
        RunError: The folder is not usable, or holds another run and ``overwrite`` is false.

    Example:
        >>> import tempfile
        >>> from sdeflow.recipes import load_recipe
        >>> config = {"recipe": load_recipe("toy-2d"), "seed": 0}
        >>> with tempfile.TemporaryDirectory() as d:
        ...     first = plan_run(f"{d}/run", config)
        ...     _ = write_run_config(f"{d}/run", config)
        ...     again = plan_run(f"{d}/run", config)
        >>> first.action, again.action, again.step
        ('new', 'resume', 0)
    """
    out = Path(out)
    _check_writable(out)
    if not out.exists() or not any(out.iterdir()):
        return RunPlan("new", out, message=f"starting {out}")
    config_path = out / CONFIG_NAME
    if not config_path.is_file():
        present = sorted(p.name for p in out.iterdir())
        if overwrite:
            return RunPlan("overwrite", out, message=f"overwriting {out}")
        raise RunError(f"--out {out} holds files but no {CONFIG_NAME} ({', '.join(present[:5])}"
                       f"{', ...' if len(present) > 5 else ''}): choose an empty folder, or "
                       f"pass --overwrite to delete the run files there")
    if overwrite:
        return RunPlan("overwrite", out, message=f"overwriting {out}")
    try:
        saved = read_run_config(out)
    except ValueError as err:
        raise RunError(f"{err}; pass --overwrite to start afresh") from err
    differ = recipe_differences(saved["recipe"], config["recipe"])
    if saved.get("seed") != config.get("seed"):
        differ["seed"] = (saved.get("seed"), config.get("seed"))
    step = _checkpoint_step(out)
    iterations = config["recipe"]["train"]["iterations"]
    grown = differ.pop(_MAY_GROW, None)
    if differ:
        listed = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in
                           ((k, *v) for k, v in differ.items()))
        raise RunError(f"{out} holds a run of another recipe ({listed}); re-run with its "
                       f"recipe to resume it, choose another --out, or pass --overwrite")
    if grown is not None:
        if iterations < step:
            raise RunError(f"{out} is at step {step}; train.iterations={iterations} would end "
                           f"before it (it was {grown[0]}); pass --overwrite to start afresh")
        return RunPlan("extend", out, step, f"extending {out} from {grown[0]} to {iterations} "
                                            f"iterations, at step {step} (schedules over the "
                                            f"iterations, an LR decay or a ramp of N, follow "
                                            f"the new length from here)")
    if step >= iterations:
        return RunPlan("finished", out, step, f"{out} is finished (step {step} of "
                                              f"{iterations})")
    return RunPlan("resume", out, step, f"resuming {out} at step {step} of {iterations}")


def clear_run(out: str | os.PathLike) -> list[str]:
    """Delete the run files of :data:`RUN_FILES` in ``out`` (nothing else); returns the names
    deleted. Call it only after every check of the new run has passed."""
    out = Path(out)
    deleted = []
    for name in RUN_FILES:
        path = out / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        deleted.append(name)
    return deleted


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

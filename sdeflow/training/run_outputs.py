r"""A run folder's side outputs (rank 0): the metrics log, TensorBoard events and sample plots.

- ``out_dir/metrics.jsonl``: one JSON record per line, metric records ``{"step", "loss",
  "grad_norm", "lr", ...}`` and event records ``{"event": "resume" | "plot" | "nonfinite" |
  "interrupt", "step", ...}``. When training starts it holds no record of a later step than the
  one it starts from (:meth:`RunOutputs.truncate_metrics`), so a resumed or restarted run logs
  each step once.
- ``out_dir/tensorboard``: the metric records' numbers (tags ``train/<key>``) and the plots
  (tag ``samples``); events after the starting step are hidden (TensorBoard's ``purge_step``).
- ``out_dir/samples/step_XXXXXX.png``: sample plots, drawn on a forked RNG so that plotting
  never changes the training stream.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sdeflow.training.options import Plots
from sdeflow.training.tensorboard import TensorBoardLog

__all__ = ["RunOutputs", "truncate_metrics"]


def truncate_metrics(path: str | os.PathLike, step: int, *, keep_step: bool = True) -> None:
    """Drop the records of ``path`` whose step is after ``step`` (all records, including those
    of ``step`` itself, when ``keep_step`` is false), and lines cut short by a kill.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     p = Path(d) / "metrics.jsonl"
        ...     _ = p.write_text('{"step": 1}\\n{"step": 2}\\n{"event": "plot", "step": 3}\\n{"st')
        ...     truncate_metrics(p, 2)
        ...     p.read_text()
        '{"step": 1}\\n{"step": 2}\\n'
    """
    path = Path(path)
    if not path.exists():
        return
    kept = []
    if keep_step:
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if isinstance(record, dict) and record.get("step", 0) <= step:
                kept.append(line)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class RunOutputs:
    r"""Writes a run's metrics log, TensorBoard events and sample plots; only on the main rank
    and only with an ``out_dir`` (elsewhere every method does nothing).

    Arguments:
        out_dir: The run folder (``None``: nothing is written).
        is_main: Whether this process writes (rank 0).
        tensorboard: Whether to write TensorBoard events.
        plots: When and how to plot samples.

    Example:
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     outputs = RunOutputs(Path(d), is_main=True, tensorboard=False, plots=Plots())
        ...     outputs.log({"step": 1, "loss": 0.5})
        ...     outputs.metrics_path.read_text()
        '{"step": 1, "loss": 0.5}\n'
    """

    def __init__(self, out_dir: Path | None, *, is_main: bool, tensorboard: bool,
                 plots: Plots) -> None:
        self.out_dir, self.is_main, self.plots = out_dir, is_main, plots
        self.tensorboard = out_dir is not None and tensorboard
        self._tensorboard_log: TensorBoardLog | None = None

    @property
    def metrics_path(self) -> Path | None:
        """``out_dir/metrics.jsonl`` (``None`` without an ``out_dir``)."""
        return None if self.out_dir is None else self.out_dir / "metrics.jsonl"

    @property
    def tensorboard_dir(self) -> Path | None:
        """Folder of the TensorBoard event files (``None`` when they are not written)."""
        return self.out_dir / "tensorboard" if self.tensorboard else None

    @property
    def writes(self) -> bool:
        return self.is_main and self.out_dir is not None

    def log(self, record: dict[str, Any]) -> None:
        """Append ``record`` to the metrics log (and its numbers to TensorBoard while open)."""
        if not self.writes:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tensorboard_log is not None and "event" not in record and "step" in record:
            self._tensorboard_log.scalars(record)

    def truncate_metrics(self, step: int, *, resumed: bool) -> None:
        """Before training from ``step``: drop the records a killed run wrote after it (on a
        fresh start, ``resumed=False``, every record of an earlier run of this folder)."""
        if self.writes:
            truncate_metrics(self.metrics_path, step, keep_step=resumed)

    def open_tensorboard(self, step: int) -> TensorBoardLog | None:
        """The event log, opened if needed: events of an earlier run of this folder after
        ``step`` are hidden (a resumed run writes them anew)."""
        if not self.tensorboard or not self.is_main:
            return None
        if self._tensorboard_log is None:
            self._tensorboard_log = TensorBoardLog(self.tensorboard_dir, purge_step=step + 1)
        return self._tensorboard_log

    def flush(self) -> None:
        """Put the events logged so far on disk (before a checkpoint)."""
        if self._tensorboard_log is not None:
            self._tensorboard_log.flush()

    def close_tensorboard(self) -> None:
        if self._tensorboard_log is not None:
            self._tensorboard_log.close()
            self._tensorboard_log = None

    def plot(self, model: nn.Module, step: int, device: torch.device) -> Path | None:
        """Plot samples of ``model`` to ``out_dir/samples/step_XXXXXX.png``, on a forked RNG."""
        if not self.writes:
            return None
        path = self.out_dir / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        devices = [device.index or 0] if device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.plots.fn is not None:
                    self.plots.fn(model, path)
                else:
                    model.plot(path)
        finally:
            model.train(was_training)
        self.log({"event": "plot", "step": step, "path": str(path)})
        if self.tensorboard:
            opened_here = self._tensorboard_log is None  # a plot outside fit()
            log = self.open_tensorboard(step)
            try:
                log.image_file("samples", path, step)
            except (OSError, ValueError) as err:  # e.g. a plot fn that writes no picture
                warnings.warn(f"the plot {path} could not be read back for TensorBoard: {err}",
                              RuntimeWarning, stacklevel=3)
            if opened_here:
                self.close_tensorboard()
            else:
                log.flush()
        return path

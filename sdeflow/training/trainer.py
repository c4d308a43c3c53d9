r"""One training loop for every model family.

Each step draws a batch, computes ``model.loss(batch, step)`` (under autocast when
``precision`` is ``"bf16"`` or ``"fp16"``: :mod:`sdeflow.training.precision`) and updates the
weights, the LR schedule and the EMA (:mod:`sdeflow.training.update`). The options come grouped
(:mod:`sdeflow.training.options`). Around the step: tqdm progress, the run folder's metrics
log, TensorBoard events and plots (:mod:`sdeflow.training.run_outputs`), and atomic checkpoints
(:mod:`sdeflow.training.checkpoint`) written every ``Checkpointing.every`` steps and every
``Checkpointing.seconds``, from which a run resumes exactly (model, EMA, optimizer, schedule,
gradient scaler, step, batch source and every RNG state): on the CPU a resumed run equals an
uninterrupted one bit for bit. SIGINT and SIGTERM stop training after the current step with a
checkpoint (:mod:`sdeflow.training.interrupts`). Non-finite losses or gradients stop training
(``on_nonfinite="stop"``) naming the step and the last good checkpoint, or skip the step.

Multi-process (DDP) training: pass ``distributed=init_distributed()``
(:mod:`sdeflow.training.distributed`) and launch with ``torchrun``. The loss is wrapped in
DistributedDataParallel; the non-finite check and the checkpoint-by-time and stop-on-signal
decisions are collective (all ranks act together); logged metrics are averaged over the ranks;
rank 0 alone logs, plots and checkpoints; each rank takes its shard of the batches.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdeflow.training.batches import BatchSource, batch_to
from sdeflow.training.checkpoint import kept_checkpoint_path, load_checkpoint, save_checkpoint
from sdeflow.training.distributed import DistributedContext, select_device
from sdeflow.training.ema import EMA
from sdeflow.training.interrupts import StopRequests, TrainingInterrupted
from sdeflow.training.options import (
    Checkpointing,
    EMAConfig,
    Logging,
    Optimization,
    Plots,
    option_or_default,
)
from sdeflow.training.precision import PRECISIONS, resolve_precision
from sdeflow.training.rng import get_rng_state, set_rng_state
from sdeflow.training.run_outputs import RunOutputs
from sdeflow.training.tensorboard import tensorboard_available
from sdeflow.training.update import NonFiniteError, WeightUpdate

__all__ = ["Trainer", "NonFiniteError", "get_rng_state", "set_rng_state", "select_device"]

_NONFINITE = ("stop", "skip")
CHECKPOINT_FORMAT = 1


class Trainer:
    r"""Trains ``model`` (anything with ``loss(batch, step) -> (loss, dict)``) on ``data``.

    Arguments:
        model: A module with ``loss(batch, step)``; see :mod:`sdeflow.training.models`.
        data: A :class:`~sdeflow.training.batches.BatchSource` (e.g. ``TensorBatches``; its
            batches may be pairs ``(x, y)``, passed whole to a conditional model's ``loss``).
        steps: Total number of optimizer steps.
        optimization: The optimizer, LR schedule and clipping (default :class:`Optimization`:
            Adam(1e-3), a constant learning rate, gradient norm clipped to 1).
        ema: The EMA of the weights that evaluation and sampling use (``None``: evaluate the
            trained weights).
        precision: ``"fp32"``; ``"bf16"``: bfloat16 autocast of the loss; ``"fp16"``: float16
            autocast with a gradient scaler (the official recipes; see the module docstring).
            Both on CUDA and on the CPU.
        checkpointing: When checkpoints are written (default :class:`Checkpointing`: every 60
            seconds and at the end).
        logging: Metrics records, progress bar and TensorBoard (default :class:`Logging`).
        plots: Periodic sample plots (default :class:`Plots`: none).
        out_dir: Folder of ``metrics.jsonl``, plots and checkpoints (``None``: nothing is
            written, no checkpoints).
        device: Device (default: the ``distributed`` context's, else CUDA when present, else
            the CPU); the model is moved there.
        distributed: A :class:`~sdeflow.training.distributed.DistributedContext` (from
            ``init_distributed()``): sets the rank, the world size and the default device, and
            under several processes trains with DDP (see the module docstring).
        on_nonfinite: ``"stop"`` (raise :class:`NonFiniteError`) or ``"skip"`` the step (but
            stop after :attr:`max_consecutive_skips` skipped steps in a row).
        callbacks: ``callback(trainer, step, record)`` after every step.
        config: JSON-serializable run configuration stored in checkpoints.

    Example:
        >>> import torch
        >>> from sdeflow.training.batches import TensorBatches
        >>> class Mean(torch.nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.mu = torch.nn.Parameter(torch.zeros(2))
        ...     def loss(self, batch, step):
        ...         loss = (batch - self.mu).pow(2).sum(-1).mean()
        ...         return loss, {}
        >>> data = TensorBatches(torch.randn(64, 2) + 3, batch_size=16)
        >>> trainer = Trainer(Mean(), data, steps=200, optimization=Optimization(lr=0.1),
        ...                   logging=Logging(progress=False))
        >>> _ = trainer.fit()
        >>> bool((trainer.eval_model.mu - 3).abs().max() < 0.5)
        True
    """

    #: ``on_nonfinite="skip"`` stops anyway after this many skipped steps in a row.
    max_consecutive_skips: int = 20

    def __init__(
        self,
        model: nn.Module,
        data: BatchSource,
        *,
        steps: int,
        optimization: Optimization | None = None,
        ema: EMAConfig | None = EMAConfig(),  # noqa: B008 (frozen: one shared default is fine)
        precision: str = "fp32",
        checkpointing: Checkpointing | None = None,
        logging: Logging | None = None,
        plots: Plots | None = None,
        out_dir: str | os.PathLike | None = None,
        device: str | torch.device | None = None,
        distributed: DistributedContext | None = None,
        on_nonfinite: str = "stop",
        callbacks: Sequence[Callable[[Trainer, int, dict], None]] = (),
        config: dict[str, Any] | None = None,
    ) -> None:
        if not callable(getattr(model, "loss", None)):
            raise TypeError(f"model must have a loss(batch, step) method, got "
                            f"{type(model).__name__}")
        if not isinstance(data, BatchSource):
            raise TypeError(f"data must be a BatchSource (next_batch, state_dict, "
                            f"load_state_dict), got {type(data).__name__}")
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
            raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
        pick = option_or_default
        self.optimization = pick("optimization", optimization, Optimization, Optimization())
        self.ema_config = pick("ema", ema, EMAConfig, None)
        self.checkpointing = pick("checkpointing", checkpointing, Checkpointing, Checkpointing())
        self.logging = pick("logging", logging, Logging, Logging())
        self.plots = pick("plots", plots, Plots, Plots())
        if out_dir is None and self.checkpointing.keep_every is not None:
            raise ValueError("checkpointing.keep_every needs an out_dir to keep checkpoints in")
        if self.logging.tensorboard and out_dir is None:
            raise ValueError("logging.tensorboard=True needs an out_dir to write the event "
                             "files in")
        if self.logging.tensorboard and not tensorboard_available():
            raise ImportError("logging.tensorboard=True needs the tensorboard package: "
                              "pip install 'sdeflow[eval]' (or pip install tensorboard)")
        if on_nonfinite not in _NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_NONFINITE}, got {on_nonfinite!r}")
        if distributed is not None and not isinstance(distributed, DistributedContext):
            raise TypeError(f"distributed must be a DistributedContext or None, got "
                            f"{type(distributed).__name__}")
        context = distributed if distributed is not None else DistributedContext()
        if not 0 <= context.rank < context.world_size:
            raise ValueError(f"distributed: need 0 <= rank < world_size, got "
                             f"rank={context.rank}, world_size={context.world_size}")
        self.rank, self.world_size = context.rank, context.world_size
        self.device = select_device(context.device if device is None and distributed is not None
                                    else device)
        self.model = model.to(self.device)
        self.distributed = distributed if distributed is not None and distributed.enabled else None
        # one DDP forward per step around the whole loss (the networks run many times inside);
        # wrapped before the EMA copy, so that it starts from rank 0's broadcast weights
        self._loss = self.model.loss if self.distributed is None else self.distributed.wrap(
            self.model)
        self.data, self.steps = data, steps
        self.grad_clip, self.on_nonfinite = self.optimization.grad_clip, on_nonfinite
        self.precision = resolve_precision(precision, self.device)
        self.autocast_dtype = PRECISIONS[self.precision]
        self.amp = self.autocast_dtype is not None  # whether the loss runs under autocast
        # the official recipes' scaler: default settings, fp16 only (bf16 has fp32's range)
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.precision == "fp16"
                       else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer, self.scheduler = self.optimization.build(self.params)
        self.ema = None if self.ema_config is None else EMA(
            self.model, self.ema_config.decay, warmup=self.ema_config.warmup,
            start=self.ema_config.start)
        self.update = WeightUpdate(self.model, self.params, self.optimizer, self.scheduler,
                                   self.scaler, self.ema, self.grad_clip)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.checkpoint_path = (None if self.out_dir is None
                                else self.out_dir / self.checkpointing.name)
        self.outputs = RunOutputs(
            self.out_dir, is_main=self.is_main, plots=self.plots,
            tensorboard=(tensorboard_available() if self.logging.tensorboard is None
                         else self.logging.tensorboard))
        self.callbacks = list(callbacks)
        self.config = dict(config or {})
        self.step = 0
        self.skipped = 0
        self.scaler_skips = 0  # steps the fp16 gradient scaler skipped (inf/NaN gradients)
        self.train_time = 0.0
        self.last_loss = math.nan
        self.last_checkpoint: tuple[Path, int] | None = None
        self._last_checkpoint_time = time.monotonic()

    # -- roles ---------------------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        """Whether this process logs, plots and writes checkpoints (rank 0)."""
        return self.rank == 0

    @property
    def eval_model(self) -> nn.Module:
        """The model to evaluate and sample: the EMA weights (the trained ones without EMA)."""
        return self.model if self.ema is None else self.ema.module

    @property
    def metrics_path(self) -> Path | None:
        """``out_dir/metrics.jsonl`` (``None`` without an ``out_dir``)."""
        return self.outputs.metrics_path

    @property
    def tensorboard(self) -> bool:
        """Whether TensorBoard events are written."""
        return self.outputs.tensorboard

    @property
    def tensorboard_dir(self) -> Path | None:
        """Folder of the TensorBoard event files (``None`` when they are not written)."""
        return self.outputs.tensorboard_dir

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (see the module docstring)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": None if self.scheduler is None else self.scheduler.state_dict(),
            "data": self.data.state_dict(),
            "rng": get_rng_state(),
            "skipped": self.skipped,
            "scaler": None if self.scaler is None else self.scaler.state_dict(),
            "scaler_skips": self.scaler_skips,
            "train_time": self.train_time,
            "last_loss": self.last_loss,
            "config": json.loads(json.dumps(self.config)),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (refusing a checkpoint of another set-up:
        EMA or LR schedule present in one and not the other)."""
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not "
                             f"{CHECKPOINT_FORMAT}")
        if (self.ema is None) != (state["ema"] is None):
            raise ValueError(f"the checkpoint {'has no' if self.ema else 'has'} EMA weights but "
                             f"this trainer {'uses' if self.ema else 'has no'} EMA (ema=...)")
        if (self.scheduler is None) != (state.get("scheduler") is None):
            raise ValueError(
                f"the checkpoint {'has' if self.scheduler is None else 'has no'} LR schedule "
                f"but this trainer {'has none' if self.scheduler is None else 'has one'} "
                f"(Optimization.scheduler)")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        set_rng_state(state["rng"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])  # else (an fp32/bf16 run): a new one
        self.scaler_skips = int(state.get("scaler_skips", 0))
        self.step, self.skipped = int(state["step"]), int(state["skipped"])
        self.train_time, self.last_loss = float(state["train_time"]), float(state["last_loss"])

    def _restore_rank_rng(self, state: dict[str, Any]) -> None:
        """In a multi-process run, each rank continues its own random stream: the one it had at
        the checkpoint when the checkpoint holds every rank's (same world size), else a
        distinct stream per rank seeded from rank 0's."""
        if self.distributed is None or self.world_size == 1:
            return
        rng_ranks = state.get("rng_ranks")
        if rng_ranks is not None and len(rng_ranks) == self.world_size:
            set_rng_state(rng_ranks[self.rank])
        else:
            torch.manual_seed(int(torch.randint(2**62, ())) + self.rank)

    def save_checkpoint(self, path: str | os.PathLike | None = None, *,
                        extra: dict[str, Any] | None = None) -> Path:
        """Write the state, plus the entries of ``extra``, atomically to ``path`` (default the
        run's checkpoint)."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("path must be given when the trainer has no out_dir")
        save_checkpoint(self.state_dict() | (extra or {}), path)
        self.last_checkpoint = (path, self.step)
        return path

    def load_checkpoint(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """Verify and load a checkpoint (raises ``CheckpointError`` naming a bad file); returns
        the loaded state."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None:
            raise ValueError("path must be given when the trainer has no out_dir")
        # on the CPU: RNG states must stay CPU tensors; load_state_dict moves the weights
        state = load_checkpoint(path, map_location="cpu")
        self.load_state_dict(state)
        self.last_checkpoint = (path, self.step)
        return state

    # -- the loop ------------------------------------------------------------------------------
    def fit(self, *, resume: bool | str | os.PathLike = False) -> Trainer:
        r"""Train up to ``steps`` steps.

        Arguments:
            resume: ``True`` continues from the run's checkpoint when it exists (a missing one
                starts afresh; a corrupt one raises), or a path to a checkpoint to continue from.

        Raises:
            TrainingInterrupted: SIGINT or SIGTERM arrived; the step it arrived in was finished
                and checkpointed.
            NonFiniteError: A non-finite loss or gradient (see ``on_nonfinite``).
        """
        resumed = self.step > 0  # a trainer that already trained continues where it is
        if resume:
            path = self.checkpoint_path if resume is True else Path(resume)
            if path is None:
                raise ValueError("resume=True needs an out_dir (or pass a checkpoint path)")
            if resume is not True and not path.exists():
                raise FileNotFoundError(f"resume: no checkpoint at {path}")
            if path.exists():
                self._restore_rank_rng(self.load_checkpoint(path))
                resumed = True
        # the log holds no step twice: drop what a killed run wrote after this point
        self.outputs.truncate_metrics(self.step, resumed=resumed)
        if resume and resumed:
            self._log({"event": "resume", "step": self.step, "checkpoint": str(path)})
        if self.step >= self.steps:
            return self
        show = self.logging.progress and self.is_main
        bar = tqdm(total=self.steps, initial=self.step, disable=not show, dynamic_ncols=True,
                   desc="train")
        self._last_checkpoint_time = time.monotonic()
        self.outputs.open_tensorboard(self.step)
        try:
            with StopRequests() as stop:
                self._loop(bar, stop)
        finally:
            bar.close()
            self.outputs.close_tensorboard()
        return self

    def _loop(self, bar: tqdm, stop: StopRequests) -> None:
        consecutive_skips = 0
        every = self.checkpointing.every
        while self.step < self.steps:
            started = time.perf_counter()
            step = self.step + 1
            record = self._train_step(step)
            self.step = step
            self.train_time += time.perf_counter() - started
            if record.get("skipped"):
                consecutive_skips += 1
                self.skipped += 1
                if consecutive_skips > self.max_consecutive_skips:
                    self._stop_nonfinite(step, f"{consecutive_skips} consecutive non-finite "
                                               "steps skipped")
            else:
                consecutive_skips = 0
                self.last_loss = record["loss"]
                self.scaler_skips += bool(record.get("scaler_skipped"))
            bar.update(1)
            if (step % self.logging.every == 0 or step == self.steps or record.get("skipped")
                    or record.get("scaler_skipped")):
                record["time_s"] = round(self.train_time, 4)
                self._log(self._reduce(record))
                bar.set_postfix(loss=f"{self.last_loss:.4g}")
            if self.plots.every and step % self.plots.every == 0:
                self.plot(step)
            seconds = self.checkpointing.seconds
            due_by_time = (self.checkpoint_path is not None and seconds is not None
                           and time.monotonic() - self._last_checkpoint_time >= seconds)
            due_by_time, _ = self._collective(due_by_time, False, seconds is not None)
            rolling = self.checkpoint_path is not None and (
                step == self.steps or bool(every and step % every == 0) or due_by_time)
            kept = (self.checkpointing.keep_every is not None
                    and step % self.checkpointing.keep_every == 0)
            if rolling or kept:
                self._write_checkpoint(rolling=rolling, kept=kept)
            for callback in self.callbacks:  # they see this step's checkpoint
                callback(self, step, record)
            if step < self.steps:  # last: a signal sent by a callback stops after its step
                _, stopping = self._collective(False, stop.requested, True)
                if stopping:
                    self._interrupt(stop.signal_name, written=rolling)

    def _collective(self, first: bool, second: bool, needed: bool) -> tuple[bool, bool]:
        """Both flags, each true when it is on any rank (one collective; none when not
        ``needed`` or in a single process)."""
        if self.distributed is None or not needed:
            return first, second
        total = self.distributed.all_reduce_sum(torch.tensor([float(first), float(second)]))
        return bool(total[0] > 0), bool(total[1] > 0)

    def _interrupt(self, signal_name: str | None, *, written: bool) -> None:
        """Stop after this step on a signal: checkpoint it (unless done), then raise."""
        self._log({"event": "interrupt", "step": self.step, "signal": signal_name})
        if self.checkpoint_path is not None and not written:
            self._write_checkpoint(rolling=True)
        raise TrainingInterrupted(self.step, self.checkpoint_path, signal_name)

    def _train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        batch = batch_to(self.data.next_batch(), self.device)
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.amp
                    else contextlib.nullcontext())
        with autocast:
            loss, info = self._loss(batch, step)
        loss = loss.float()
        finite = bool(torch.isfinite(loss))
        if self.distributed is not None:  # all ranks skip or stop together (else DDP hangs)
            finite = not self.distributed.any(not finite)
        if not finite:
            if self.distributed is not None:
                return self._nonfinite(step, f"non-finite loss on some rank (rank {self.rank}: "
                                             f"{float(loss.detach())})")
            return self._nonfinite(step, f"non-finite loss ({float(loss.detach())})")
        outcome = self.update.apply(loss)
        if outcome.diverged:
            self._stop_nonfinite(step, outcome.nonfinite)
        if outcome.nonfinite is not None:
            return self._nonfinite(step, outcome.nonfinite)
        record = {"step": step, "loss": float(loss.detach()), "grad_norm": outcome.grad_norm,
                  "lr": self.update.lr, **outcome.record}
        record.update(info)
        return record

    def _nonfinite(self, step: int, what: str) -> dict[str, Any]:
        if self.on_nonfinite == "stop":
            self._stop_nonfinite(step, what)
        self.update.skip()
        return {"step": step, "skipped": True, "reason": what, "lr": self.update.lr}

    def _stop_nonfinite(self, step: int, what: str) -> None:
        if self.last_checkpoint is not None:
            where = (f"the last good checkpoint is {self.last_checkpoint[0]} (step "
                     f"{self.last_checkpoint[1]}); continue from it with resume=True")
        elif self.checkpoint_path is not None:
            where = f"no checkpoint was written yet (it would be {self.checkpoint_path})"
        else:
            where = "no checkpoint is kept (out_dir is None)"
        message = (f"{what} at step {step}: training stopped; {where}. Lower the learning rate, "
                   f"or pass on_nonfinite='skip' to skip such steps.")
        self._log({"event": "nonfinite", "step": step, "message": message})
        raise NonFiniteError(message)

    def _reduce(self, record: dict[str, Any]) -> dict[str, Any]:
        """The record with its numbers averaged over the ranks (called on every rank)."""
        if self.distributed is None:
            return record
        numbers = {k: v for k, v in record.items() if k != "step" and not isinstance(v, bool)
                   and isinstance(v, (int, float))}
        mean = self.distributed.all_reduce_mean(numbers)
        return record | {k: int(v) if isinstance(numbers[k], int) and v == int(v) else v
                         for k, v in mean.items()}

    # -- side outputs (rank 0) -----------------------------------------------------------------
    def _write_checkpoint(self, *, rolling: bool = True, kept: bool = False) -> None:
        """Called on every rank: gathers each rank's RNG state (so that a resumed
        multi-process run repeats the uninterrupted one draw for draw), then rank 0 writes the
        rolling checkpoint and/or the kept one of this step."""
        rng_ranks = (self.distributed.all_gather_object(get_rng_state())
                     if self.distributed is not None and self.world_size > 1 else None)
        if rolling:
            self._last_checkpoint_time = time.monotonic()
        if not self.is_main:
            return
        self.outputs.flush()  # the events up to the checkpoint are on disk
        state = self.state_dict() | ({} if rng_ranks is None else {"rng_ranks": rng_ranks})
        if kept:
            save_checkpoint(state, kept_checkpoint_path(self.out_dir, self.step))
        if rolling:
            save_checkpoint(state, self.checkpoint_path)
            self.last_checkpoint = (self.checkpoint_path, self.step)

    def _log(self, record: dict[str, Any]) -> None:
        self.outputs.log(record)

    def plot(self, step: int | None = None) -> Path | None:
        """Plot samples of the EMA model to ``out_dir/samples/step_XXXXXX.png`` (rank 0).

        Sampling runs on a forked RNG, so plotting never changes the training stream.
        """
        return self.outputs.plot(self.eval_model, self.step if step is None else step,
                                 self.device)

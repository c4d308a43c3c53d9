r"""One training loop for every model family.

Each step draws a batch, computes ``model.loss(batch, step)`` (under autocast when
``precision`` is ``"bf16"`` or ``"fp16"``), backpropagates, clips the gradient norm, steps the
optimizer and the LR schedule, and updates the EMA weights that evaluation and sampling use.
Around it: tqdm progress, JSONL metrics (and the same scalars and the sample plots in
TensorBoard's format, ``out_dir/tensorboard``), periodic sample plots, and atomic checkpoints
that a run resumes from exactly (model, EMA, optimizer, schedule, gradient scaler, step, batch
source and every RNG state), so that on the CPU a resumed run equals an uninterrupted one bit
for bit. Besides the rolling checkpoint, ``keep_every`` keeps ``checkpoints/step_XXXXXXX.pt``
for evaluating intermediate weights (:func:`~sdeflow.training.checkpoint.list_checkpoints`).

Non-finite losses or gradients stop training (``on_nonfinite="stop"``) with an error naming the
step and the last good checkpoint, which is left untouched, or skip the step (``"skip"``).

Precision (``"fp32"``, ``"bf16"``, ``"fp16"`` with a gradient scaler whose skipped steps are
counted, not errors) is described in :mod:`sdeflow.training.precision`.

Multi-process (DDP) training: pass ``distributed=init_distributed()`` (see
:mod:`sdeflow.training.distributed`) and launch with ``torchrun``. The loss computation is wrapped
in DistributedDataParallel (gradients averaged over the ranks), the non-finite check is collective
(all ranks stop or skip together), logged metrics are averaged over the ranks, rank 0 alone logs,
plots and checkpoints, and each rank takes its shard of the batches from a
:class:`~sdeflow.training.batches.BatchSource` sharded by rank.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sdeflow.training.batches import BatchSource
from sdeflow.training.checkpoint import kept_checkpoint_path, load_checkpoint, save_checkpoint
from sdeflow.training.distributed import DistributedContext
from sdeflow.training.ema import EMA
from sdeflow.training.precision import MIN_LOSS_SCALE, PRECISIONS, resolve_precision
from sdeflow.training.rng import get_rng_state, set_rng_state
from sdeflow.training.tensorboard import TensorBoardLog, tensorboard_available

__all__ = ["Trainer", "NonFiniteError", "get_rng_state", "set_rng_state", "select_device"]

_NONFINITE = ("stop", "skip")
CHECKPOINT_FORMAT = 1


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinite loss or gradient (``on_nonfinite="stop"``)."""


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available")
    return device


class Trainer:
    r"""Trains ``model`` (anything with ``loss(batch, step) -> (loss, dict)``) on ``data``.

    Arguments:
        model: A module with ``loss(batch, step)``; see :mod:`sdeflow.training.models`.
        data: A :class:`~sdeflow.training.batches.BatchSource` (e.g. ``TensorBatches``).
        steps: Total number of optimizer steps.
        lr: Learning rate of the default Adam optimizer.
        optimizer: Factory ``params -> Optimizer`` (default Adam(lr)).
        scheduler: Factory ``optimizer -> LR scheduler`` stepped once per step (default
            ``StepLR(lr_step_size, lr_gamma)``).
        lr_gamma: Decay factor of the default StepLR (0.95 as in DiffFlow).
        lr_step_size: Steps between decays (default ``steps // 30``: DiffFlow's 30 epochs).
        grad_clip: Max gradient norm (``None``: no clipping; the norm is still checked).
        ema_decay: EMA decay (``None``: evaluate the trained weights).
        ema_warmup: Warm the EMA decay up as :math:`\min(\beta, (1+j)/(10+j))` after
            :math:`j` averaging updates (see :class:`~sdeflow.training.ema.EMA`).
        ema_start: The EMA is a copy of the weights until this many updates have happened,
            then decays: :math:`\bar\theta_k = \theta_k` for :math:`k \le` ``ema_start``,
            else :math:`\beta_k\bar\theta_{k-1} + (1 - \beta_k)\theta_k` (the official recipes:
            10, with ``ema_warmup=False``).
        precision: ``"fp32"``; ``"bf16"``: bfloat16 autocast of the loss; ``"fp16"``: float16
            autocast with a gradient scaler (the official recipes; see the module docstring).
            Both on CUDA and on the CPU.
        mixed_precision: Deprecated: ``True`` is ``precision="bf16"`` on CUDA and, as it always
            was, full precision on the CPU.
        device: Device (default CUDA when present, else CPU); the model is moved there.
        out_dir: Folder of ``metrics.jsonl``, plots and the checkpoint (``None``: nothing is
            written, no checkpoints).
        checkpoint_every: Steps between checkpoints (a final one is always written).
        checkpoint_name: File name of the checkpoint inside ``out_dir``.
        keep_every: Also keep the checkpoint of every ``keep_every``-th step as
            ``out_dir/checkpoints/step_{step:07d}.pt`` (``None``: only the rolling one).
        log_every: Steps between metric records.
        plot_every: Steps between sample plots (``None``: none).
        plot_fn: ``plot_fn(eval_model, path)`` (default ``eval_model.plot(path)``); the picture
            it writes is also logged to TensorBoard (tag ``samples``).
        tensorboard: Write the metrics records' numbers (tags ``train/<key>``) and the plots to
            ``out_dir/tensorboard`` on rank 0 (``None``: when the ``tensorboard`` package is
            installed and there is an ``out_dir``). A resumed run hides the events written
            after its checkpoint (TensorBoard's ``purge_step``).
        on_nonfinite: ``"stop"`` (raise :class:`NonFiniteError`) or ``"skip"`` the step.
        max_consecutive_skips: Stop anyway after this many skipped steps in a row.
        progress: Show a tqdm progress bar.
        callbacks: ``callback(trainer, step, record)`` after every step.
        config: JSON-serializable run configuration stored in checkpoints.
        rank, world_size: Process rank and count (logging and checkpoints on rank 0).
        distributed: A :class:`~sdeflow.training.distributed.DistributedContext` (from
            ``init_distributed()``): sets ``rank``, ``world_size`` and the default device, and
            under several processes trains with DDP (see the module docstring).

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
        >>> trainer = Trainer(Mean(), data, steps=200, lr=0.1, progress=False)
        >>> _ = trainer.fit()
        >>> bool((trainer.eval_model.mu - 3).abs().max() < 0.5)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        data: BatchSource,
        *,
        steps: int,
        lr: float = 1e-3,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer] | None = None,
        scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        lr_gamma: float = 0.95,
        lr_step_size: int | None = None,
        grad_clip: float | None = 1.0,
        ema_decay: float | None = 0.999,
        ema_warmup: bool = True,
        ema_start: int = 0,
        precision: str = "fp32",
        mixed_precision: bool | None = None,
        device: str | torch.device | None = None,
        out_dir: str | os.PathLike | None = None,
        checkpoint_every: int | None = None,
        checkpoint_name: str = "checkpoint.pt",
        keep_every: int | None = None,
        log_every: int = 10,
        plot_every: int | None = None,
        plot_fn: Callable[[nn.Module, Path], None] | None = None,
        tensorboard: bool | None = None,
        on_nonfinite: str = "stop",
        max_consecutive_skips: int = 20,
        progress: bool = True,
        callbacks: Sequence[Callable[[Trainer, int, dict], None]] = (),
        config: dict[str, Any] | None = None,
        rank: int = 0,
        world_size: int = 1,
        distributed: DistributedContext | None = None,
    ) -> None:
        if not callable(getattr(model, "loss", None)):
            raise TypeError(f"model must have a loss(batch, step) method, got "
                            f"{type(model).__name__}")
        if not isinstance(data, BatchSource):
            raise TypeError(f"data must be a BatchSource (next_batch, state_dict, "
                            f"load_state_dict), got {type(data).__name__}")
        _check_int("steps", steps, 1)
        _check_int("log_every", log_every, 1)
        _check_int("ema_start", ema_start, 0)
        for name, value in (("checkpoint_every", checkpoint_every), ("plot_every", plot_every),
                            ("lr_step_size", lr_step_size), ("keep_every", keep_every)):
            if value is not None:
                _check_int(name, value, 1)
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
        if out_dir is None and keep_every is not None:
            raise ValueError("keep_every needs an out_dir to keep checkpoints in")
        if tensorboard and out_dir is None:
            raise ValueError("tensorboard=True needs an out_dir to write the event files in")
        if tensorboard and not tensorboard_available():
            raise ImportError("tensorboard=True needs the tensorboard package: "
                              "pip install 'sdeflow[eval]' (or pip install tensorboard)")
        if on_nonfinite not in _NONFINITE:
            raise ValueError(f"on_nonfinite must be one of {_NONFINITE}, got {on_nonfinite!r}")
        if grad_clip is not None and not grad_clip > 0:
            raise ValueError(f"grad_clip must be > 0 or None, got {grad_clip}")
        if distributed is not None:
            if not isinstance(distributed, DistributedContext):
                raise TypeError(f"distributed must be a DistributedContext, got "
                                f"{type(distributed).__name__}")
            rank, world_size = distributed.rank, distributed.world_size
            device = distributed.device if device is None else device
        if not (0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, "
                             f"world_size={world_size}")
        self.device = select_device(device)
        self.model = model.to(self.device)
        self.distributed = distributed if distributed is not None and distributed.enabled else None
        # one DDP forward per step around the whole loss (the networks run many times inside);
        # wrapped before the EMA copy, so that it starts from rank 0's broadcast weights
        self._loss = self.model.loss if self.distributed is None else self.distributed.wrap(
            self.model)
        self.data, self.steps = data, steps
        self.rank, self.world_size = rank, world_size
        self.grad_clip, self.on_nonfinite = grad_clip, on_nonfinite
        self.max_consecutive_skips = max_consecutive_skips
        self.precision = resolve_precision(precision, mixed_precision, self.device)
        self.autocast_dtype = PRECISIONS[self.precision]
        self.amp = self.autocast_dtype is not None  # whether the loss runs under autocast
        # the official recipes' scaler: default settings, fp16 only (bf16 has fp32's range)
        self.scaler = (torch.amp.GradScaler(self.device.type) if self.precision == "fp16"
                       else None)
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = (optimizer or (lambda ps: torch.optim.Adam(ps, lr=lr)))(self.params)
        if scheduler is None:
            step_size = lr_step_size or max(1, steps // 30)
            self.scheduler = torch.optim.lr_scheduler.StepLR(self.optimizer, step_size, lr_gamma)
        else:
            self.scheduler = scheduler(self.optimizer)
        self.ema = None if ema_decay is None else EMA(self.model, ema_decay, warmup=ema_warmup,
                                                      start=ema_start)
        self.out_dir = None if out_dir is None else Path(out_dir)
        self.checkpoint_every, self.log_every = checkpoint_every, log_every
        self.keep_every = keep_every
        self.tensorboard = self.out_dir is not None and (
            tensorboard_available() if tensorboard is None else bool(tensorboard))
        self._tensorboard_log: TensorBoardLog | None = None
        self.checkpoint_path = None if self.out_dir is None else self.out_dir / checkpoint_name
        self.plot_every, self.plot_fn = plot_every, plot_fn
        self.progress, self.callbacks = progress, list(callbacks)
        self.config = dict(config or {})
        self.step = 0
        self.skipped = 0
        self.scaler_skips = 0  # steps the fp16 gradient scaler skipped (inf/NaN gradients)
        self.train_time = 0.0
        self.last_loss = math.nan
        self.last_checkpoint: tuple[Path, int] | None = None

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
        return None if self.out_dir is None else self.out_dir / "metrics.jsonl"

    # -- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs (see the module docstring)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "step": self.step,
            "model": self.model.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
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
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"checkpoint format {state.get('format')!r} is not "
                             f"{CHECKPOINT_FORMAT}")
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            if state["ema"] is None:
                raise ValueError("the checkpoint has no EMA weights but this trainer uses EMA")
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
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
        """
        if resume:
            path = self.checkpoint_path if resume is True else Path(resume)
            if path is None:
                raise ValueError("resume=True needs an out_dir (or pass a checkpoint path)")
            if resume is not True and not path.exists():
                raise FileNotFoundError(f"resume: no checkpoint at {path}")
            if path.exists():
                self._restore_rank_rng(self.load_checkpoint(path))
                self._truncate_metrics()
                self._log({"event": "resume", "step": self.step, "checkpoint": str(path)})
        if self.step >= self.steps:
            return self
        show = self.progress and self.is_main
        bar = tqdm(total=self.steps, initial=self.step, disable=not show, dynamic_ncols=True,
                   desc="train")
        consecutive_skips = 0
        self._open_tensorboard()
        try:
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
                if (step % self.log_every == 0 or step == self.steps or record.get("skipped")
                        or record.get("scaler_skipped")):
                    record["time_s"] = round(self.train_time, 4)
                    self._log(self._reduce(record))
                    bar.set_postfix(loss=f"{self.last_loss:.4g}")
                if self.plot_every and step % self.plot_every == 0:
                    self.plot(step)
                rolling = self.checkpoint_path is not None and (
                    step == self.steps or (self.checkpoint_every and
                                           step % self.checkpoint_every == 0))
                kept = self.keep_every is not None and step % self.keep_every == 0
                if rolling or kept:
                    self._write_checkpoint(rolling=rolling, kept=kept)
                for callback in self.callbacks:  # last: they see this step's checkpoint
                    callback(self, step, record)
        finally:
            bar.close()
            self._close_tensorboard()
        return self

    def _train_step(self, step: int) -> dict[str, Any]:
        self.model.train()
        batch = self.data.next_batch().to(self.device, non_blocking=True)
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
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            loss_scale = self.scaler.get_scale()
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        scaled: dict[str, Any] = {}
        if self.scaler is None:
            if not torch.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                return self._nonfinite(step, f"non-finite gradient norm ({float(grad_norm)})")
            self.optimizer.step()
            updated = True
        else:
            self.scaler.step(self.optimizer)  # no step when the gradients hold an inf or NaN
            self.scaler.update()  # ... and then the scale is lowered
            updated = not self.scaler.get_scale() < loss_scale
            scaled["loss_scale"] = loss_scale
            if not updated:
                self.optimizer.zero_grad(set_to_none=True)
                scaled["scaler_skipped"] = True
                if self.scaler.get_scale() < MIN_LOSS_SCALE:
                    self._stop_nonfinite(step, f"non-finite gradient norm ({float(grad_norm)}) "
                                               f"at every loss scale down to {loss_scale:g}")
        if updated:
            self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self._step_schedule_only()
        record = {"step": step, "loss": float(loss.detach()), "grad_norm": float(grad_norm),
                  "lr": self.optimizer.param_groups[0]["lr"], **scaled}
        record.update(info)
        return record

    def _nonfinite(self, step: int, what: str) -> dict[str, Any]:
        if self.on_nonfinite == "stop":
            self._stop_nonfinite(step, what)
        self._step_schedule_only()
        return {"step": step, "skipped": True, "reason": what,
                "lr": self.optimizer.param_groups[0]["lr"]}

    def _step_schedule_only(self) -> None:
        """A skipped step: no optimizer or EMA update; the LR schedule still follows the step
        count."""
        with warnings.catch_warnings():  # "scheduler stepped before optimizer" is intended here
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

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
        if not self.is_main:
            return
        if self._tensorboard_log is not None:  # the events up to the checkpoint are on disk
            self._tensorboard_log.flush()
        state = self.state_dict() | ({} if rng_ranks is None else {"rng_ranks": rng_ranks})
        if kept:
            save_checkpoint(state, kept_checkpoint_path(self.out_dir, self.step))
        if rolling:
            save_checkpoint(state, self.checkpoint_path)
            self.last_checkpoint = (self.checkpoint_path, self.step)

    def _log(self, record: dict[str, Any]) -> None:
        if not self.is_main or self.metrics_path is None:
            return
        self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record, allow_nan=True) + "\n")
        if self._tensorboard_log is not None and "event" not in record and "step" in record:
            self._tensorboard_log.scalars(record)

    @property
    def tensorboard_dir(self) -> Path | None:
        """Folder of the TensorBoard event files (``None`` when they are not written)."""
        return self.out_dir / "tensorboard" if self.tensorboard else None

    def _open_tensorboard(self) -> TensorBoardLog | None:
        """The event log (rank 0), opened if needed: events from an earlier run of this folder
        at later steps than this trainer's are hidden (a resumed run writes them anew)."""
        if not self.tensorboard or not self.is_main:
            return None
        if self._tensorboard_log is None:
            self._tensorboard_log = TensorBoardLog(self.tensorboard_dir,
                                                   purge_step=self.step + 1)
        return self._tensorboard_log

    def _close_tensorboard(self) -> None:
        if self._tensorboard_log is not None:
            self._tensorboard_log.close()
            self._tensorboard_log = None

    def _truncate_metrics(self) -> None:
        """Drop records a killed run wrote after the checkpoint we resume from."""
        path = self.metrics_path
        if not self.is_main or path is None or not path.exists():
            return
        kept = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by the kill
            if record.get("step", 0) <= self.step:
                kept.append(line)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".metrics.", suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            f.write("".join(line + "\n" for line in kept))
        os.replace(tmp, path)

    def plot(self, step: int | None = None) -> Path | None:
        """Plot samples of the EMA model to ``out_dir/samples/step_XXXXXX.png`` (rank 0).

        Sampling runs on a forked RNG, so plotting never changes the training stream.
        """
        if not self.is_main or self.out_dir is None:
            return None
        step = self.step if step is None else step
        path = self.out_dir / "samples" / f"step_{step:06d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        model = self.eval_model
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        was_training = model.training
        model.eval()
        try:
            with torch.random.fork_rng(devices=devices), torch.no_grad():
                if self.plot_fn is not None:
                    self.plot_fn(model, path)
                else:
                    model.plot(path)
        finally:
            model.train(was_training)
        self._log({"event": "plot", "step": step, "path": str(path)})
        if self.tensorboard:
            opened_here = self._tensorboard_log is None  # a plot outside fit()
            log = self._open_tensorboard()
            try:
                log.image_file("samples", path, step)
            except (OSError, ValueError) as err:  # e.g. a plot_fn that writes no picture
                warnings.warn(f"the plot {path} could not be read back for TensorBoard: {err}",
                              RuntimeWarning, stacklevel=2)
            if opened_here:
                self._close_tensorboard()
            else:
                log.flush()
        return path


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


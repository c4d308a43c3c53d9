r"""The :class:`~sdeflow.training.Trainer`'s grouped options: one small frozen object per concern.

- :class:`Optimization`: the learning rate, the optimizer and LR-schedule factories and the
  gradient clipping (:func:`step_lr` builds DiffFlow's StepLR schedule, :func:`lr_decay` a
  warm-up followed by a linear or cosine decay);
- :class:`EMAConfig`: the exponential moving average of the weights (``ema=None``: none);
- :class:`Checkpointing`: when the rolling checkpoint is written (every so many steps and every
  so many seconds) and which steps' checkpoints are kept;
- :class:`Logging`: the metrics records, the progress bar and TensorBoard;
- :class:`Plots`: periodic sample plots.

Each is validated when it is built, and its errors name the field and what was expected.

Example:
    >>> opt = Optimization(lr=2e-4, scheduler=step_lr(1000, 0.95))
    >>> Checkpointing(every=500, keep_every=5000).seconds
    60.0
    >>> EMAConfig(decay=1.5)
    Traceback (most recent call last):
        ...
    ValueError: EMAConfig.decay must be a number in [0, 1), got 1.5
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["Optimization", "EMAConfig", "Checkpointing", "Logging", "Plots", "step_lr",
           "lr_decay", "LR_DECAYS"]

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], Any]
PlotFn = Callable[[nn.Module, Path], None]


def _check_int(where: str, value: object, low: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        none = " or None" if optional else ""
        raise ValueError(f"{where} must be an integer >= {low}{none}, got {value!r}")


def _check_positive(where: str, value: object, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not math.isfinite(value) or not value > 0):
        none = " or None" if optional else ""
        raise ValueError(f"{where} must be a finite number > 0{none}, got {value!r}")


def _check_callable(where: str, value: object, what: str) -> None:
    if value is not None and not callable(value):
        raise TypeError(f"{where} must be {what} or None, got {type(value).__name__}")


def _check_bool(where: str, value: object, *, optional: bool = False) -> None:
    if not (isinstance(value, bool) or (optional and value is None)):
        none = " or None" if optional else ""
        raise TypeError(f"{where} must be a bool{none}, got {value!r}")


def option_or_default(name: str, value: Any, kind: type, default: Any) -> Any:
    """``value`` when it is a ``kind``, ``default`` when it is ``None``; else a ``TypeError``
    naming the argument ``name``.

    Example:
        >>> option_or_default("logging", None, Logging, Logging()).every
        10
    """
    if value is None:
        return default
    if not isinstance(value, kind):
        raise TypeError(f"{name} must be a {kind.__name__} or None, got {type(value).__name__}")
    return value


def step_lr(step_size: int, gamma: float) -> SchedulerFactory:
    r"""A picklable scheduler factory: ``optimizer -> StepLR(optimizer, step_size, gamma)``.

    The learning rate is multiplied by ``gamma`` every ``step_size`` optimizer steps (DiffFlow's
    official 2D recipe: ``gamma=0.95`` each of its 30 epochs).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=1.0)
        >>> schedule = step_lr(2, 0.5)(opt)
        >>> for _ in range(4):
        ...     opt.step(); schedule.step()
        >>> opt.param_groups[0]["lr"]
        0.25
    """
    _check_int("step_lr: step_size", step_size, 1)
    _check_positive("step_lr: gamma", gamma)
    return functools.partial(torch.optim.lr_scheduler.StepLR, step_size=step_size,
                             gamma=float(gamma))


#: The shapes :func:`lr_decay` draws after its warm-up.
LR_DECAYS: tuple[str, ...] = ("constant", "linear", "cosine")


def _lr_factor(step: int, *, kind: str, total: int, warmup: int, final: float) -> float:
    """The learning rate's factor after ``step`` scheduler steps (see :func:`lr_decay`)."""
    if step < warmup:
        return step / warmup
    if kind == "constant":
        return 1.0
    p = min(1.0, (step - warmup) / max(1, total - warmup))
    if kind == "linear":
        return 1.0 - (1.0 - final) * p
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * p))


def lr_decay(kind: str, total: int, *, warmup: int = 0, final: float = 0.1) -> SchedulerFactory:
    r"""A picklable scheduler factory: a linear warm-up over ``warmup`` steps, then a ``kind``
    decay to ``final`` times the learning rate at step ``total``. The factor at step :math:`k`:

    .. math:: \rho_k = \begin{cases} k / w & k < w \\
        1 - (1 - \rho_\infty)\,p & \text{linear} \\
        \rho_\infty + (1 - \rho_\infty)\,\tfrac12 (1 + \cos \pi p) & \text{cosine} \\
        1 & \text{constant} \end{cases}, \qquad p = \min\!\Big(1, \frac{k - w}{T - w}\Big).

    The warm-up starts at 0, as TorchCFM's ``warmup_lr`` (``min(step, warmup) / warmup``).

    Example:
        >>> net = torch.nn.Linear(2, 1)
        >>> opt = torch.optim.SGD(net.parameters(), lr=1.0)
        >>> schedule = lr_decay("linear", 4, warmup=2, final=0.5)(opt)
        >>> lrs = []
        >>> for _ in range(5):
        ...     lrs.append(opt.param_groups[0]["lr"]); opt.step(); schedule.step()
        >>> lrs
        [0.0, 0.5, 1.0, 0.75, 0.5]
    """
    if kind not in LR_DECAYS:
        raise ValueError(f"lr_decay: kind must be one of {LR_DECAYS}, got {kind!r}")
    _check_int("lr_decay: total", total, 1)
    _check_int("lr_decay: warmup", warmup, 0)
    if not (isinstance(final, int | float) and not isinstance(final, bool)
            and 0 <= final <= 1):
        raise ValueError(f"lr_decay: final must be a number in [0, 1], got {final!r}")
    factor = functools.partial(_lr_factor, kind=kind, total=total, warmup=warmup,
                               final=float(final))
    return functools.partial(torch.optim.lr_scheduler.LambdaLR, lr_lambda=factor)


@dataclass(frozen=True)
class Optimization:
    r"""How the weights are updated.

    Arguments:
        lr: Learning rate of the default Adam optimizer (unused when ``optimizer`` is given).
        optimizer: Factory ``params -> Optimizer`` (default ``Adam(params, lr)``).
        scheduler: Factory ``optimizer -> LR scheduler``, stepped once per optimizer step
            (default: a constant learning rate); e.g. :func:`step_lr`, :func:`lr_decay`.
        grad_clip: Max gradient norm (``None``: no clipping; the norm is still checked).

    Example:
        >>> Optimization(lr=1e-2, grad_clip=None).grad_clip is None
        True
        >>> Optimization(grad_clip=0)
        Traceback (most recent call last):
            ...
        ValueError: Optimization.grad_clip must be a finite number > 0 or None, got 0
    """

    lr: float = 1e-3
    optimizer: OptimizerFactory | None = None
    scheduler: SchedulerFactory | None = None
    grad_clip: float | None = 1.0

    def __post_init__(self) -> None:
        _check_positive("Optimization.lr", self.lr)
        _check_callable("Optimization.optimizer", self.optimizer,
                        "a factory params -> Optimizer")
        _check_callable("Optimization.scheduler", self.scheduler,
                        "a factory optimizer -> LR scheduler")
        _check_positive("Optimization.grad_clip", self.grad_clip, optional=True)

    def build(self, params: list[nn.Parameter]) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer of ``params`` and its LR scheduler (``None`` for a constant LR)."""
        optimizer = (self.optimizer(params) if self.optimizer is not None
                     else torch.optim.Adam(params, lr=self.lr))
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"Optimization.optimizer must return a torch.optim.Optimizer, got "
                            f"{type(optimizer).__name__}")
        scheduler = None if self.scheduler is None else self.scheduler(optimizer)
        if scheduler is not None and not callable(getattr(scheduler, "step", None)):
            raise TypeError(f"Optimization.scheduler must return an LR scheduler (with step()), "
                            f"got {type(scheduler).__name__}")
        return optimizer, scheduler


@dataclass(frozen=True)
class EMAConfig:
    r"""The exponential moving average of the weights that evaluation and sampling use
    (:class:`~sdeflow.training.ema.EMA`).

    Arguments:
        decay: The decay :math:`\beta` in :math:`[0, 1)`.
        warmup: Warm the decay up as :math:`\min(\beta, (1+j)/(10+j))` after :math:`j`
            averaging updates.
        start: The EMA is a copy of the weights until this many updates have happened, then
            decays: :math:`\bar\theta_k = \theta_k` for :math:`k \le` ``start``, else
            :math:`\beta_k\bar\theta_{k-1} + (1 - \beta_k)\theta_k` (the official recipes: 10,
            with ``warmup=False``).

    Example:
        >>> EMAConfig(decay=0.999, warmup=False, start=10).start
        10
    """

    decay: float = 0.999
    warmup: bool = True
    start: int = 0

    def __post_init__(self) -> None:
        if (isinstance(self.decay, bool) or not isinstance(self.decay, (int, float))
                or not 0.0 <= self.decay < 1.0):
            raise ValueError(f"EMAConfig.decay must be a number in [0, 1), got {self.decay!r}")
        _check_bool("EMAConfig.warmup", self.warmup)
        _check_int("EMAConfig.start", self.start, 0)


@dataclass(frozen=True)
class Checkpointing:
    r"""When the run's checkpoints are written (only when the trainer has an ``out_dir``).

    The rolling checkpoint ``out_dir/name`` is written every ``every`` steps, and also after any
    step that ends ``seconds`` or more of wall time after the last checkpoint (or after
    :meth:`~sdeflow.training.Trainer.fit` began), so that the first one comes within about
    ``seconds`` whatever ``every``; a final one is written at the last step.

    Arguments:
        every: Steps between rolling checkpoints (``None``: by time only).
        seconds: Seconds of wall time between rolling checkpoints (``None``: by steps only).
        keep_every: Also keep the checkpoint of every ``keep_every``-th step as
            ``out_dir/checkpoints/step_{step:07d}.pt`` (``None``: only the rolling one).
        name: File name of the rolling checkpoint inside ``out_dir``.

    Example:
        >>> Checkpointing(every=1000, seconds=None).every
        1000
        >>> Checkpointing(name="sub/ckpt.pt")
        Traceback (most recent call last):
            ...
        ValueError: Checkpointing.name must be a plain file name ending in .pt, got 'sub/ckpt.pt'
    """

    every: int | None = None
    seconds: float | None = 60.0
    keep_every: int | None = None
    name: str = "checkpoint.pt"

    def __post_init__(self) -> None:
        _check_int("Checkpointing.every", self.every, 1, optional=True)
        _check_positive("Checkpointing.seconds", self.seconds, optional=True)
        _check_int("Checkpointing.keep_every", self.keep_every, 1, optional=True)
        if (not isinstance(self.name, str) or Path(self.name).name != self.name
                or not self.name.endswith(".pt") or self.name == ".pt"):
            raise ValueError(f"Checkpointing.name must be a plain file name ending in .pt, "
                             f"got {self.name!r}")


@dataclass(frozen=True)
class Logging:
    r"""What the run reports.

    Arguments:
        every: Steps between metric records in ``out_dir/metrics.jsonl`` (skipped steps and the
            last step are always logged).
        progress: Show a tqdm progress bar (rank 0).
        tensorboard: Also write the records' numbers (tags ``train/<key>``) and the plots to
            ``out_dir/tensorboard`` (``None``: when the ``tensorboard`` package is installed
            and there is an ``out_dir``).

    Example:
        >>> Logging(every=100, progress=False).tensorboard is None
        True
    """

    every: int = 10
    progress: bool = True
    tensorboard: bool | None = None

    def __post_init__(self) -> None:
        _check_int("Logging.every", self.every, 1)
        _check_bool("Logging.progress", self.progress)
        _check_bool("Logging.tensorboard", self.tensorboard, optional=True)


@dataclass(frozen=True)
class Plots:
    r"""Periodic sample plots ``out_dir/samples/step_XXXXXX.png`` of the evaluated model.

    Arguments:
        every: Steps between plots (``None``: none).
        fn: ``fn(eval_model, path)`` (default ``eval_model.plot(path)``); the picture it writes
            is also logged to TensorBoard (tag ``samples``).

    Example:
        >>> Plots(every=500).fn is None
        True
    """

    every: int | None = None
    fn: PlotFn | None = None

    def __post_init__(self) -> None:
        _check_int("Plots.every", self.every, 1, optional=True)
        _check_callable("Plots.fn", self.fn, "a function fn(model, path)")

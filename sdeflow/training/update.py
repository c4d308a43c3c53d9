r"""One update of the weights from a loss: backward pass (scaled under ``precision="fp16"``),
gradient clipping, the non-finite check, the optimizer step, the LR schedule and the EMA.

A step whose gradient norm is not finite changes nothing but the LR schedule (which follows the
step count); the :class:`~sdeflow.training.Trainer` decides whether that stops training. Under
fp16 the gradient scaler's skipped steps are its search for a scale, not errors (see
:mod:`sdeflow.training.precision`), until the scale falls below
:data:`~sdeflow.training.precision.MIN_LOSS_SCALE`.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from sdeflow.training.ema import EMA
from sdeflow.training.precision import MIN_LOSS_SCALE

__all__ = ["WeightUpdate", "UpdateOutcome", "NonFiniteError"]


class NonFiniteError(FloatingPointError):
    """Training met a NaN or infinite loss or gradient (``on_nonfinite="stop"``)."""


@dataclass
class UpdateOutcome:
    """What one :meth:`WeightUpdate.apply` did.

    Attributes:
        grad_norm: The gradient norm before clipping.
        nonfinite: Why the step was not taken (a non-finite gradient), else ``None``; the LR
            schedule was not stepped (the caller stops training or calls
            :meth:`WeightUpdate.skip`).
        diverged: The fp16 scaler found no finite gradient at any loss scale.
        record: Entries for the metrics record (``loss_scale``, ``scaler_skipped``).
    """

    grad_norm: float
    nonfinite: str | None = None
    diverged: bool = False
    record: dict[str, Any] = field(default_factory=dict)


class WeightUpdate:
    r"""Updates ``model``'s weights from a loss.

    Arguments:
        model: The trained module (its EMA follows it).
        params: The parameters the optimizer updates.
        optimizer: The optimizer.
        scheduler: The LR scheduler stepped once per step (``None``: a constant LR).
        scaler: The fp16 gradient scaler (``None``: unscaled gradients).
        ema: The EMA of the weights (``None``: none).
        grad_clip: Max gradient norm (``None``: no clipping).

    Example:
        >>> net = nn.Linear(2, 1)
        >>> params = list(net.parameters())
        >>> update = WeightUpdate(net, params, torch.optim.SGD(params, lr=0.1), None, None,
        ...                       None, grad_clip=1.0)
        >>> outcome = update.apply(net(torch.ones(4, 2)).pow(2).mean() + 1e3)
        >>> outcome.nonfinite is None and outcome.grad_norm > 0
        True
    """

    def __init__(self, model: nn.Module, params: list[nn.Parameter],
                 optimizer: torch.optim.Optimizer, scheduler: Any | None,
                 scaler: torch.amp.GradScaler | None, ema: EMA | None,
                 grad_clip: float | None) -> None:
        self.model, self.params, self.optimizer = model, params, optimizer
        self.scheduler, self.scaler, self.ema, self.grad_clip = scheduler, scaler, ema, grad_clip

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group."""
        return self.optimizer.param_groups[0]["lr"]

    def apply(self, loss: torch.Tensor) -> UpdateOutcome:
        """Backpropagate the (finite) ``loss`` and update the weights unless the gradient is
        not finite."""
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
        else:
            loss_scale = self.scaler.get_scale()
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)  # clip the true gradient, not the scaled one
        max_norm = self.grad_clip if self.grad_clip is not None else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, max_norm)
        outcome = UpdateOutcome(float(grad_norm))
        if self.scaler is None:
            if not torch.isfinite(grad_norm):  # the caller skips the step or stops
                self.optimizer.zero_grad(set_to_none=True)
                outcome.nonfinite = f"non-finite gradient norm ({float(grad_norm)})"
                return outcome
            self.optimizer.step()
            updated = True
        else:
            self.scaler.step(self.optimizer)  # no step when the gradients hold an inf or NaN
            self.scaler.update()  # ... and then the scale is lowered
            updated = not self.scaler.get_scale() < loss_scale
            outcome.record["loss_scale"] = loss_scale
            if not updated:
                self.optimizer.zero_grad(set_to_none=True)
                outcome.record["scaler_skipped"] = True
                if self.scaler.get_scale() < MIN_LOSS_SCALE:  # the caller stops
                    outcome.diverged = True
                    outcome.nonfinite = (f"non-finite gradient norm ({float(grad_norm)}) at "
                                         f"every loss scale down to {loss_scale:g}")
                    return outcome
        if updated:
            if self.scheduler is not None:
                self.scheduler.step()
            if self.ema is not None:
                self.ema.update(self.model)
        else:
            self.skip()
        return outcome

    def skip(self) -> None:
        """A skipped step: no optimizer or EMA update; the LR schedule still follows the step
        count."""
        if self.scheduler is None:
            return
        with warnings.catch_warnings():  # "scheduler stepped before optimizer" is intended here
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

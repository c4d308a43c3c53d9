r"""Exponential moving average (EMA) of a model's weights, used for evaluation and sampling.

After each optimizer step, every floating parameter :math:`\theta` updates its average

.. math:: \bar\theta_k = \beta_k\,\bar\theta_{k-1} + (1 - \beta_k)\,\theta_k,
          \qquad \beta_k = \min\!\left(\beta,\ \frac{1 + k}{10 + k}\right),

where :math:`\beta` is ``decay`` (0.999 in DiffFlow) and the warm-up :math:`(1 + k)/(10 + k)`
(``warmup=True``) keeps short runs from averaging in the random initialization: with
:math:`\beta = 0.999` alone, the initial weights still carry :math:`0.999^{500} \approx 60\%`
of the average after 500 steps. Buffers (and non-floating tensors) are copied.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = ["EMA"]


class EMA:
    r"""A copy of ``model`` holding the moving average of its weights (:attr:`module`).

    Arguments:
        model: The trained module (it is deep-copied; the copy takes no gradients).
        decay: :math:`\beta \in [0, 1)`.
        warmup: Use :math:`\min(\beta, (1 + k)/(10 + k))` at update :math:`k`.

    Example:
        >>> import torch
        >>> net = torch.nn.Linear(1, 1, bias=False)
        >>> ema = EMA(net, decay=0.5, warmup=False)
        >>> with torch.no_grad():
        ...     _ = net.weight.fill_(1.0)
        >>> w0 = float(ema.module.weight)
        >>> ema.update(net)
        >>> abs(float(ema.module.weight) - (0.5 * w0 + 0.5)) < 1e-7
        True
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        self.decay, self.warmup = decay, bool(warmup)
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        self.n_updates = 0

    def current_decay(self) -> float:
        """:math:`\\beta_k` of the next update."""
        if not self.warmup:
            return self.decay
        k = self.n_updates
        return min(self.decay, (1.0 + k) / (10.0 + k))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (call after each optimizer step)."""
        beta = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            if e.is_floating_point():
                e.lerp_(p.detach().to(e.dtype), 1.0 - beta)
            else:
                e.copy_(p)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)
        self.n_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite ``model``'s parameters and buffers with the averages."""
        model.load_state_dict(self.module.state_dict())

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and the update count (for checkpoints)."""
        return {"module": self.module.state_dict(), "n_updates": self.n_updates,
                "decay": self.decay, "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.module.load_state_dict(state["module"])
        self.n_updates = int(state["n_updates"])

    def to(self, *args: Any, **kwargs: Any) -> EMA:
        """Move or cast the averaged copy, as :meth:`torch.nn.Module.to`."""
        self.module.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return (f"EMA({type(self.module).__name__}, decay={self.decay}, warmup={self.warmup}, "
                f"n_updates={self.n_updates})")

r"""Exponential moving average (EMA) of a model's weights, used for evaluation and sampling.

After the :math:`k`-th optimizer step (:math:`k = 1, 2, \dots`), every floating parameter
:math:`\theta` updates its average

.. math:: \bar\theta_k = \begin{cases} \theta_k, & k \le k_0, \\
          \beta_k\,\bar\theta_{k-1} + (1 - \beta_k)\,\theta_k, & k > k_0, \end{cases}
          \qquad \beta_k = \min\!\left(\beta,\ \frac{k - k_0}{9 + k - k_0}\right),

where :math:`\beta` is ``decay`` (0.999 in DiffFlow), :math:`\bar\theta_0` the initial weights
and :math:`k_0` is ``start``: the average is a copy of the weights until ``start`` updates have
happened, and decays from the next one on. This is the official DiffFlow trainer's EMA
(``jamtorch.io.EMA`` with ``num_warm=10``, ``num_every=1``: updates before the 10th keep nothing,
the 10th copies the weights, later ones decay with :math:`\beta`), except that before the start
sdeflow already holds the current weights (the official one holds none), and that buffers
(and non-floating tensors) are copied at every update (the official one keeps them from the
copy). The warm-up :math:`(k - k_0)/(9 + k - k_0)` (``warmup=True``; the official recipe has
none) keeps short runs from averaging in early weights: with :math:`\beta = 0.999` alone, the
first averaged weights still carry :math:`0.999^{500} \approx 60\%` of the average 500 steps
later. With ``start=0`` the average starts from the initial weights.
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
        warmup: Use :math:`\min(\beta, (k - k_0)/(9 + k - k_0))` at update :math:`k > k_0`.
        start: :math:`k_0`, the number of updates that copy the weights before the averaging
            starts (10 in the official recipes, 0 by default).

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
        >>> late = EMA(net, decay=0.5, warmup=False, start=1)  # update 1 copies the weights
        >>> late.update(net)
        >>> float(late.module.weight)
        1.0
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, *, warmup: bool = True,
                 start: int = 0) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {decay}")
        if isinstance(start, bool) or not isinstance(start, int) or start < 0:
            raise ValueError(f"start must be an integer >= 0, got {start!r}")
        self.decay, self.warmup, self.start = decay, bool(warmup), start
        self.module = copy.deepcopy(model)
        self.module.requires_grad_(False)
        self.module.eval()
        self.n_updates = 0

    def current_decay(self) -> float:
        """:math:`\\beta_k` of the next update (0 while it copies the weights)."""
        averaged = self.n_updates - self.start  # averaging updates before this one
        if averaged < 0:
            return 0.0
        if not self.warmup:
            return self.decay
        return min(self.decay, (1.0 + averaged) / (10.0 + averaged))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s current weights in (call after each optimizer step)."""
        beta = self.current_decay()
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            e = ema_params[name]
            if e.is_floating_point() and beta > 0.0:
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
        """The averaged weights, the update count and the start (for checkpoints)."""
        return {"module": self.module.state_dict(), "n_updates": self.n_updates,
                "decay": self.decay, "warmup": self.warmup, "start": self.start}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the averages, the update count and the start (kept when ``state`` predates
        it); the decay and the warm-up stay this object's."""
        self.module.load_state_dict(state["module"])
        self.n_updates = int(state["n_updates"])
        self.start = int(state.get("start", self.start))

    def to(self, *args: Any, **kwargs: Any) -> EMA:
        """Move or cast the averaged copy, as :meth:`torch.nn.Module.to`."""
        self.module.to(*args, **kwargs)
        return self

    def __repr__(self) -> str:
        return (f"EMA({type(self.module).__name__}, decay={self.decay}, warmup={self.warmup}, "
                f"start={self.start}, n_updates={self.n_updates})")

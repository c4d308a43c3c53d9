r"""Training precision: full precision, bfloat16 autocast, or the official DiffFlow recipes'
automatic mixed precision (float16 autocast with a gradient scaler).

``precision="fp16"`` is the official DiffFlow recipes' automatic mixed precision: float16
autocast and a :class:`torch.amp.GradScaler` (default settings, as there) that multiplies the
loss by a scale :math:`s` before the backward pass, unscales the gradients before clipping, and
skips the optimizer step when they hold an inf or NaN (halving :math:`s`; it doubles after 2000
good steps). Such a step is the scaler finding its scale, not an error: whatever
``on_nonfinite``, it is counted (:attr:`~sdeflow.training.Trainer.scaler_skips`) and logged
(``"scaler_skipped": true``), and like a skipped step it changes neither the weights nor the
EMA (the official trainer updates its EMA anyway) while the LR schedule still advances. Only
gradients that stay non-finite at every scale (:math:`s < 2^{-16}`) stop training. A
non-finite loss is the forward pass's, which no scale changes: it follows ``on_nonfinite``.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["PRECISIONS", "MIN_LOSS_SCALE", "resolve_precision", "autocast_supported"]

#: Precision name -> autocast dtype (``None``: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
#: Below this loss scale the gradients are non-finite whatever the scale: a divergence, not an
#: fp16 overflow.
MIN_LOSS_SCALE = 2.0**-16


def resolve_precision(precision: str, device: torch.device) -> str:
    """``precision``, checked: a known name whose autocast ``device`` supports.

    Example:
        >>> resolve_precision("fp16", torch.device("cpu"))
        'fp16'
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {tuple(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is not None and not autocast_supported(device.type, dtype):
        raise ValueError(f"precision={precision!r} needs {dtype} autocast on {device.type}, "
                         f"which this torch ({torch.__version__}) does not support; choose "
                         f"another precision or device")
    return precision


def autocast_supported(device_type: str, dtype: torch.dtype) -> bool:
    """Whether autocast to ``dtype`` works on ``device_type`` (torch warns and disables it
    when the dtype is not supported there).

    Example:
        >>> autocast_supported("cpu", torch.bfloat16)
        True
    """
    if not torch.amp.is_autocast_available(device_type):
        return False
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.autocast(device_type, dtype=dtype)
    return not caught

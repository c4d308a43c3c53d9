"""Argument checks shared by the public objects (private)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["as_time", "expand_to", "check_finite", "check_same_device_dtype", "sum_state"]


def as_time(t: Tensor | float, x: Tensor) -> Tensor:
    """``t`` as a tensor on ``x``'s device and dtype, of shape ``()``, ``(1,)`` or ``(B,)``."""
    if not isinstance(t, Tensor):
        return torch.as_tensor(t, dtype=x.dtype, device=x.device)
    if t.dim() > 1 or (t.dim() == 1 and t.shape[0] not in (1, x.shape[0])):
        raise ValueError(
            f"t must have shape (), (1,) or (batch,)=({x.shape[0]},), got {tuple(t.shape)}"
        )
    return t


def expand_to(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-time value of shape ``()`` or ``(B,)`` so it broadcasts against ``x``."""
    if v.dim() == 0 or v.dim() == x.dim():
        return v
    return v.reshape(v.shape + (1,) * (x.dim() - v.dim()))


def sum_state(v: Tensor, x: Tensor) -> Tensor:
    """Sum ``v`` (broadcastable to ``x`` of shape ``(B, *state)``) over the state dims: ``(B,)``.

    A ``v`` constant over the state (shape ``()`` or ``(B, 1, ..., 1)``) is multiplied by the
    number of state elements instead of being expanded.
    """
    d = x[0].numel()
    if v.dim() == 0:
        return (v * d).expand(x.shape[0])
    if all(s == 1 for s in v.shape[1:]):
        return (v.reshape(v.shape[0]) * d).expand(x.shape[0])
    return v.expand(x.shape).reshape(x.shape[0], -1).sum(-1)


def check_finite(name: str, x: Tensor) -> None:
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} must be finite, got NaN or inf")


def check_same_device_dtype(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has dtype {ref.dtype}")


def check_modules(x: Tensor, modules: Iterable[object], x_name: str = "x0") -> None:
    """Every floating parameter/buffer of ``modules`` shares ``x``'s device and dtype."""
    for module in modules:
        if not isinstance(module, nn.Module):
            continue
        for pname, p in list(module.named_parameters()) + list(module.named_buffers()):
            if not p.is_floating_point():
                continue
            if p.device != x.device:
                raise ValueError(
                    f"{type(module).__name__}.{pname} is on {p.device} but {x_name} is on "
                    f"{x.device}; move the modules with .to({x.device!s})"
                )
            if p.dtype != x.dtype:
                raise TypeError(
                    f"{type(module).__name__}.{pname} has dtype {p.dtype} but {x_name} has dtype "
                    f"{x.dtype}; cast the modules with .to({x.dtype})"
                )

r"""The exact GELU, with its derivative computed in the forward pass.

.. math:: \mathrm{GELU}(z) = z\,\Phi(z), \qquad
    \mathrm{GELU}'(z) = \Phi(z) + z\,\varphi(z), \qquad
    \mathrm{GELU}''(z) = \varphi(z)\,(2 - z^2)

with :math:`\Phi` and :math:`\varphi` the standard normal CDF and density
(:math:`\varphi' = -z\varphi` gives the second derivative).

Why: in DiffFlow training the backward pass runs long after the forward pass of the same layer
(a whole trajectory of network evaluations lies between them), so the pre-activation ``z`` that
``torch.nn.GELU``'s backward re-reads has left the caches, and the backward kernel evaluates
``erf`` and ``exp`` again on cold memory. Here the forward pass evaluates
:math:`\mathrm{GELU}'(z)` while ``z`` is in cache and keeps it; the first-order backward pass is
one multiply. Measured on a 2-core CPU (``benchmarks/train_step.py``, batch 5000, N = 30,
Backprop): 14% less time per training step. The price is memory: ``z`` is kept too, so that
second derivatives (``create_graph``, ``torch.func.jacrev`` as in
:class:`~sdeflow.objectives.FlowNLL`) stay exact. The values equal ``torch.nn.GELU``'s.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["GELU"]

_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)


def _gelu_second_derivative(z: Tensor) -> Tensor:
    r""":math:`\mathrm{GELU}''(z) = \varphi(z)(2 - z^2)` from differentiable operations."""
    return torch.exp(-0.5 * z * z) * _INV_SQRT_2PI * (2.0 - z * z)


class _GELUWithDerivative(torch.autograd.Function):
    r"""``z -> (GELU(z), GELU'(z))``; the second output is not differentiable."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z: Tensor) -> tuple[Tensor, Tensor]:
        one = torch.ones((), dtype=z.dtype, device=z.device).expand_as(z)
        return F.gelu(z), torch.ops.aten.gelu_backward(one, z)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        (z,), (_, derivative) = inputs, output
        ctx.mark_non_differentiable(derivative)
        ctx.save_for_backward(z, derivative)

    @staticmethod
    def backward(ctx, grad_h: Tensor, _grad_derivative: Tensor | None) -> Tensor:
        z, derivative = ctx.saved_tensors
        return _ScaleByDerivative.apply(grad_h, z, derivative)


class _ScaleByDerivative(torch.autograd.Function):
    r"""``(g, z, GELU'(z)) -> g GELU'(z)``: one multiply, and exact derivatives in ``g`` and
    ``z`` (through :math:`\mathrm{GELU}''`) for double backward."""

    generate_vmap_rule = True

    @staticmethod
    def forward(grad_h: Tensor, z: Tensor, derivative: Tensor) -> Tensor:
        return grad_h * derivative

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        grad_h, z, _ = inputs
        ctx.save_for_backward(grad_h, z)

    @staticmethod
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        grad_h, z = ctx.saved_tensors
        # Differentiable expressions of z, so that higher orders stay exact as well.
        d_grad = torch.ops.aten.gelu_backward(grad_out, z) if ctx.needs_input_grad[0] else None
        d_z = grad_out * grad_h * _gelu_second_derivative(z) if ctx.needs_input_grad[1] else None
        return d_grad, d_z, None


class GELU(nn.Module):
    r"""The exact (erf) GELU, :math:`z\,\Phi(z)`, equal to ``torch.nn.GELU()`` in value and in
    derivatives of every order.

    When a graph is recorded, the forward pass also computes :math:`\mathrm{GELU}'(z)` (see the
    module docstring) and the backward pass is one multiply; otherwise it is
    ``torch.nn.functional.gelu``.

    Arguments:
        precompute_derivative: Whether to compute the derivative in the forward pass (faster
            backward when activations are large and the backward runs long after the forward,
            as in backprop through a trajectory; costs one more kept tensor of ``z``'s size).
            ``None`` (default): on CPU tensors only. On a GPU, where small networks are bound
            by kernel launches, its extra forward kernel was slower (see
            ``docs/benchmarks.md``).

    Example:
        >>> import torch
        >>> z = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
        >>> torch.allclose(GELU()(z), torch.nn.GELU()(z))
        True
        >>> torch.autograd.gradcheck(GELU(), (z,))
        True
    """

    def __init__(self, precompute_derivative: bool | None = None) -> None:
        super().__init__()
        if precompute_derivative is not None and not isinstance(precompute_derivative, bool):
            raise TypeError(f"precompute_derivative must be a bool or None, got "
                            f"{precompute_derivative!r}")
        self.precompute_derivative = precompute_derivative

    def forward(self, z: Tensor) -> Tensor:
        precompute = (z.device.type == "cpu" if self.precompute_derivative is None
                      else self.precompute_derivative)
        if precompute and z.requires_grad and torch.is_grad_enabled():
            return _GELUWithDerivative.apply(z)[0]
        return F.gelu(z)

    def extra_repr(self) -> str:
        return f"precompute_derivative={self.precompute_derivative}"

r"""Gradient strategies: how a trajectory sweep is differentiated (an object, not a flag).

A *sweep* is a recurrence over the grid with a carried state (for DiffFlow: the state
:math:`x_i` and the forward drift :math:`f(x_i, t_i)` that the next step reuses)

.. math:: c_0 = \mathrm{init}(x_0), \qquad (c_{i+1}, \ell_i) = \mathrm{step}(i, c_i),

returning the final carry and the per-step terms :math:`\ell_i`. A strategy runs it and decides
what autograd keeps: :class:`Backprop` keeps every step's activations.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Sweep", "GradientStrategy", "Backprop"]

Carry = tuple[Tensor, ...]


class Sweep(Protocol):
    """A recurrence ``init``/``step`` over ``n_steps`` (see the module docstring)."""

    n_steps: int

    def init(self, x0: Tensor) -> Carry: ...

    def step(self, i: int, carry: Carry) -> tuple[Carry, Tensor]: ...


class GradientStrategy:
    """Base class: ``strategy(sweep, x0, params) -> (final carry, terms (B, N))``."""

    def __call__(
        self, sweep: Sweep, x0: Tensor, params: tuple[Tensor, ...]
    ) -> tuple[Carry, Tensor]:
        raise NotImplementedError  # pragma: no cover - abstract

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Backprop(GradientStrategy):
    """Plain backpropagation through every step: activation memory grows linearly in N.

    Example:
        >>> import torch
        >>> class Doubling:
        ...     n_steps = 3
        ...     def init(self, x0): return (x0,)
        ...     def step(self, i, c): return (2 * c[0],), c[0].sum(-1)
        >>> (x,), terms = Backprop()(Doubling(), torch.ones(1, 2), ())
        >>> x, terms
        (tensor([[8., 8.]]), tensor([[2., 4., 8.]]))
    """

    def __call__(
        self, sweep: Sweep, x0: Tensor, params: tuple[Tensor, ...]
    ) -> tuple[Carry, Tensor]:
        carry = sweep.init(x0)
        terms = []
        for i in range(sweep.n_steps):
            carry, term = sweep.step(i, carry)
            terms.append(term)
        return carry, torch.stack(terms, -1)

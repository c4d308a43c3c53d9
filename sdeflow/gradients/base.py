r"""The sweep protocol, the strategy interface and plain backpropagation.

A *sweep* is a recurrence over the grid with a carried state (for DiffFlow: the state
:math:`x_i` and the forward drift :math:`f(x_i, t_i)` that the next step reuses)

.. math:: c_0 = \mathrm{init}(x_0), \qquad (c_{i+1}, \ell_i) = \mathrm{step}(i, c_i),

returning the final carry and the per-step terms :math:`\ell_i`. A
:class:`GradientStrategy` runs it and decides what autograd keeps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

import torch
from torch import Tensor

__all__ = ["Sweep", "GradientStrategy", "Backprop"]

Carry = tuple[Tensor, ...]


class Sweep(Protocol):
    """A recurrence ``init``/``step`` over ``n_steps`` (see the module docstring).

    ``step`` must be a deterministic function of ``(i, carry)``, the parameters and the random
    state (recomputing strategies call it again in the backward pass). A sweep with a method
    ``shard(index: slice) -> Sweep`` (the same recurrence for samples ``index`` of the batch)
    can also be run by :class:`~sdeflow.gradients.Sharded`.
    """

    n_steps: int

    def init(self, x0: Tensor) -> Carry: ...

    def step(self, i: int, carry: Carry) -> tuple[Carry, Tensor]: ...


class GradientStrategy(ABC):
    """Base class: ``strategy(sweep, x0, params) -> (final carry, terms (B, N))``.

    ``params`` are the tensors the gradient must reach (the objective passes the trainable
    parameters of its modules); :class:`Backprop` reaches every leaf regardless.
    """

    @abstractmethod
    def __call__(
        self, sweep: Sweep, x0: Tensor, params: tuple[Tensor, ...]
    ) -> tuple[Carry, Tensor]:
        """Run ``sweep`` from ``x0``; returns the final carry and the terms ``(B, N)``."""

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


def autocast_state(device_type: str) -> dict:
    """The autocast settings in force, to replay them in the backward pass (which autograd runs
    outside the caller's autocast context): a bf16 forward must be recomputed in bf16."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
        dtype = torch.get_autocast_dtype(device_type)
    except TypeError:  # torch < 2.4: per-device functions
        cuda = device_type == "cuda"
        enabled = torch.is_autocast_enabled() if cuda else torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_gpu_dtype() if cuda else torch.get_autocast_cpu_dtype()
    return {"device_type": device_type, "enabled": enabled, "dtype": dtype,
            "cache_enabled": torch.is_autocast_cache_enabled()}


def _leaves(outputs: list[Tensor]) -> list[Tensor]:
    """Every leaf tensor that the graphs of ``outputs`` accumulate gradients into."""
    seen, stack, found = set(), [t.grad_fn for t in outputs if t.grad_fn is not None], []
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)
        if variable is not None:
            found.append(variable)
        stack.extend(next_fn for next_fn, _ in fn.next_functions)
    return found


def check_leaves(strategy: GradientStrategy, outputs: list[Tensor], known: list[Tensor]) -> None:
    """Raise if the graphs of ``outputs`` reach a leaf requiring grad outside ``known``: a strategy
    that differentiates with respect to its inputs only would silently drop its gradient."""
    ids = {id(t) for t in known}
    foreign = [t for t in _leaves(outputs) if id(t) not in ids]
    if foreign:
        raise ValueError(
            f"{type(strategy).__name__}: the sweep uses {len(foreign)} tensor(s) requiring grad "
            f"that are not among params (shapes {[tuple(t.shape) for t in foreign[:4]]}); pass "
            f"networks to the processes as nn.Module objects so that they are registered, not "
            f"inside closures"
        )

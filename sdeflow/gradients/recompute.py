r"""Recomputing gradient strategies: the paper's stochastic adjoint and segment checkpointing.

- :class:`StochasticAdjoint` (the paper's memory-saving gradient) runs the sweep without a graph,
  keeping only the carries :math:`c_i`, then walks back down the grid recomputing one step at a
  time with a graph and passing the adjoint :math:`\bar c_i = \bar\ell_i\,\partial\ell_i/\partial
  c_i + \bar c_{i+1}\,\partial c_{i+1}/\partial c_i` back, accumulating
  :math:`\bar\theta \mathrel{+}= \bar\ell_i\,\partial\ell_i/\partial\theta + \bar c_{i+1}\,
  \partial c_{i+1}/\partial\theta`. Activation memory is one step's, whatever :math:`N`;
- :class:`Checkpointed` does the same per segment of ``k`` steps (carries kept every ``k``
  steps, ``k`` steps of activations alive in the backward pass).

The recomputed steps see the same noise (the sweep holds it) and, with ``preserve_rng_state``,
the same random state (dropout), so the gradients equal :class:`~sdeflow.gradients.Backprop`'s
exactly up to floating-point summation order.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from sdeflow.gradients.base import (
    Backprop,
    Carry,
    GradientStrategy,
    Sweep,
    autocast_state,
    check_leaves,
)

__all__ = ["StochasticAdjoint", "Checkpointed"]


class _Recompute(GradientStrategy):
    """Shared machinery of the recomputing strategies (segments of ``segment`` steps)."""

    def __init__(self, segment: int, preserve_rng_state: bool) -> None:
        if isinstance(segment, bool) or not isinstance(segment, int) or segment < 1:
            raise ValueError(f"segment must be an int >= 1, got {segment!r}")
        self.segment = segment
        self.preserve_rng_state = bool(preserve_rng_state)

    def __call__(
        self, sweep: Sweep, x0: Tensor, params: tuple[Tensor, ...]
    ) -> tuple[Carry, Tensor]:
        params = tuple(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"params must be tensors, got {type(p).__name__}")
        if not (torch.is_grad_enabled() and (x0.requires_grad or any(p.requires_grad
                                                                     for p in params))):
            # Nothing to differentiate: the plain sweep, without storing carries.
            return Backprop()(sweep, x0, params)
        *carry, terms = _RecomputeSweep.apply(self, sweep, x0, *params)
        return tuple(carry), terms

    def __repr__(self) -> str:
        return f"{type(self).__name__}(segment={self.segment})"


class StochasticAdjoint(_Recompute):
    r"""The paper's memory-saving gradient: a graph-free forward sweep keeping only the carries,
    then a reverse sweep recomputing each step with a graph and passing the adjoint back.

    The carries are the states :math:`x_i` and the cached drifts :math:`f(x_i, t_i)`: keeping
    :math:`f_i` costs one state's memory per step (a few per cent of one step's activations for
    the paper's networks) and saves one drift evaluation per step in the backward sweep.
    Activation memory does not grow with :math:`N`; compute is about one extra forward pass.
    It is a :class:`torch.autograd.Function` over ``x0`` and ``params``, so
    ``terms.loss.backward()`` and :func:`torch.autograd.grad` work as usual; the networks'
    parameters must be among ``params`` (an error says so otherwise).

    Arguments:
        preserve_rng_state: Restore the random state of each step before recomputing it (needed
            for dropout; costs one RNG-state copy per step).

    References:
        Diffusion Normalizing Flow (Zhang & Chen, 2021), https://arxiv.org/abs/2110.07579
        (section "Stochastic adjoint").

    Example:
        >>> import torch
        >>> w = torch.tensor(1.5, requires_grad=True)
        >>> class Scaling:
        ...     n_steps = 3
        ...     def init(self, x0): return (x0,)
        ...     def step(self, i, c): return (w * c[0],), c[0].sum(-1)
        >>> (x,), terms = StochasticAdjoint()(Scaling(), torch.ones(1, 2), (w,))
        >>> (x.sum() + terms.sum()).backward()
        >>> w.grad  # d/dw [2 w^3 + 2 (1 + w + w^2)] = 6 w^2 + 2 + 4 w
        tensor(21.5000)
    """

    def __init__(self, preserve_rng_state: bool = True) -> None:
        super().__init__(1, preserve_rng_state)

    def __repr__(self) -> str:
        return "StochasticAdjoint()"


class Checkpointed(_Recompute):
    r"""Segment checkpointing: carries kept every ``segment`` steps, each segment recomputed
    with a graph in the backward pass (``segment=1`` is :class:`StochasticAdjoint`).

    Activation memory is ``segment`` steps' worth; carry memory :math:`N/\mathrm{segment}`
    states. Longer segments mean fewer, larger backward calls.

    Arguments:
        segment: Steps per recomputed segment (``>= 1``).
        preserve_rng_state: As in :class:`StochasticAdjoint`.

    Example:
        >>> Checkpointed(segment=5)
        Checkpointed(segment=5)
    """

    def __init__(self, segment: int = 5, preserve_rng_state: bool = True) -> None:
        super().__init__(segment, preserve_rng_state)


def _rng_devices(x: Tensor) -> list[int]:
    return [x.device.index or 0] if x.is_cuda else []


def _get_rng(devices: list[int]) -> tuple[Tensor, list[Tensor]]:
    return torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices]


def _set_rng(state: tuple[Tensor, list[Tensor]], devices: list[int]) -> None:
    torch.set_rng_state(state[0])
    for d, s in zip(devices, state[1]):
        torch.cuda.set_rng_state(s, d)


class _RecomputeSweep(torch.autograd.Function):
    """``(strategy, sweep, x0, *params) -> (*final carry, terms)`` with a recomputing backward."""

    @staticmethod
    def forward(ctx, strategy: _Recompute, sweep: Sweep, x0: Tensor, *params: Tensor):
        n, k = sweep.n_steps, strategy.segment
        devices = _rng_devices(x0) if strategy.preserve_rng_state else []
        starts = list(range(0, n, k))
        rng: dict[int, tuple[Tensor, list[Tensor]]] = {}
        if strategy.preserve_rng_state:
            rng[0] = _get_rng(devices)
            # one tensor each (set_rng_state reads a state from the start of its storage)
            rng_slots = [rng[0][0].new_empty(rng[0][0].shape) for _ in starts[1:]]
        carry = sweep.init(x0)
        # The carries at the segment starts after the first (row i // k - 1), the terms and the
        # random states go into buffers allocated once: kept one by one, they would sit between
        # each step's freed activations and fragment the heap (the resident set then grew with N:
        # 108 -> 395 MiB from N = 10 to 100, for 64 -> 67 MiB allocated; train_step benchmark).
        bank: list[Tensor] = []
        terms: Tensor | None = None
        for i in range(n):
            if i % k == 0 and i:
                if not bank:
                    bank = [x.new_empty((len(starts) - 1, *x.shape)) for x in carry]
                for b, x in zip(bank, carry):
                    b[i // k - 1].copy_(x)
                if strategy.preserve_rng_state:
                    cpu, cuda = _get_rng(devices)
                    rng[i] = (rng_slots[i // k - 1].copy_(cpu), cuda)
            if i == 0:
                # One step with a graph: every leaf it reaches must be an input of this Function,
                # or its gradient would be silently lost (e.g. a network hidden in a lambda).
                with torch.enable_grad():
                    c = tuple(t.detach().requires_grad_(t.is_floating_point()) for t in carry)
                    carry, term = sweep.step(0, c)
                check_leaves(strategy, [*carry, term], [x0, *params, *c])
                carry, term = tuple(t.detach() for t in carry), term.detach()
            else:
                carry, term = sweep.step(i, carry)
            if terms is None:
                terms = term.new_empty((*term.shape, n))
            terms[..., i] = term
        ctx.strategy, ctx.sweep, ctx.starts, ctx.devices = strategy, sweep, starts, devices
        ctx.bank, ctx.rng = bank, rng
        ctx.autocast = autocast_state(x0.device.type)
        ctx.n_carry = len(carry)
        ctx.save_for_backward(x0, *params)
        return (*carry, terms)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        x0, *params = ctx.saved_tensors
        strategy, sweep, k, n = ctx.strategy, ctx.sweep, ctx.strategy.segment, ctx.sweep.n_steps
        adjoint = list(grads[: ctx.n_carry])
        grad_terms = grads[ctx.n_carry]
        param_grads: list[Tensor | None] = [None] * len(params)
        x0_grad = None
        want_x0 = ctx.needs_input_grad[2]
        for start in reversed(ctx.starts):
            end = min(start + k, n)
            fork = (torch.random.fork_rng(devices=ctx.devices)
                    if strategy.preserve_rng_state else nullcontext())
            with fork, torch.enable_grad(), torch.autocast(**ctx.autocast):
                if strategy.preserve_rng_state:
                    _set_rng(ctx.rng[start], ctx.devices)
                if start == 0:
                    x0_in = x0.detach().requires_grad_(want_x0)
                    carry, inputs = sweep.init(x0_in), ([x0_in] if want_x0 else [])
                else:
                    carry = tuple(b[start // k - 1].detach().requires_grad_(b.is_floating_point())
                                  for b in ctx.bank)
                    inputs = list(carry)
                outputs, out_grads = [], []
                for i in range(start, end):
                    carry, term = sweep.step(i, carry)
                    outputs.append(term)
                    out_grads.append(grad_terms[..., i])
            outputs += carry
            out_grads += adjoint
            pairs = [(o, g) for o, g in zip(outputs, out_grads)
                     if g is not None and o.requires_grad]
            n_in = len(inputs)
            if pairs and (n_in or params):
                got = torch.autograd.grad([o for o, _ in pairs], inputs + params,
                                          [g for _, g in pairs], allow_unused=True)
            else:
                got = [None] * (n_in + len(params))
            if start == 0:
                x0_grad = got[0] if want_x0 else None
            else:
                adjoint = [g if g is not None else torch.zeros_like(c)
                           for g, c in zip(got[:n_in], inputs)]
            for j, g in enumerate(got[n_in:]):
                if g is not None:
                    param_grads[j] = g if param_grads[j] is None else param_grads[j] + g
        return (None, None, x0_grad, *param_grads)

r"""Batch sharding over CPU threads: each core runs the whole sweep, forward and backward, on its
own slice of the batch.

On a CPU, torch splits every operation across its threads. A DiffFlow step is hundreds of
medium operations (the paper's 2D networks: ``5000 × 128`` activations), so each one ends in a
barrier, and the activations one core writes are read by the other.
:class:`Sharded` instead splits the batch into one shard per thread and runs the inner strategy
on each shard in its own thread with a single intra-op thread. The shards share nothing but the
parameters, and the loss is a batch mean, so

.. math:: \nabla_\theta \frac1B \sum_{b=1}^{B} \mathcal L_b
    = \sum_{j} \frac{B_j}{B}\, \nabla_\theta \Big(\frac{1}{B_j} \sum_{b \in \text{shard } j}
    \mathcal L_b\Big):

the gradient is the same as unsharded up to floating-point summation order; the shards' parameter
gradients are added in shard order, so a run is reproducible.
"""

from __future__ import annotations

import concurrent.futures
import os
import queue
import threading
from collections.abc import Callable
from typing import TypeVar

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

__all__ = ["Sharded"]

T = TypeVar("T")
_WORKERS: dict[int, _Workers] = {}
_WORKERS_LOCK = threading.Lock()
_LOCAL = threading.local()
os.register_at_fork(after_in_child=_WORKERS.clear)  # a forked child has none of the threads


class Sharded(GradientStrategy):
    r"""Run ``strategy`` on ``shards`` slices of the batch at once, one CPU thread each.

    Every shard runs the whole sweep, forward and backward, in its own thread with one torch
    intra-op thread, so each core works on its own data (see the module docstring). Values and
    gradients equal those of ``strategy`` on the whole batch up to floating-point summation
    order. Measured on a 2-core CPU with the paper's 2D configuration (batch 5000, N = 30,
    ``benchmarks/train_step.py``): 0.75-0.81 s per training step against 0.81-1.25 s for
    :class:`Backprop` with two intra-op threads (61% of the machine's matmul rate).

    Requirements: CPU tensors; a sweep with a ``shard`` method (the DiffFlow objective's sweeps
    have one); steps that draw no random numbers (the sweep holds its noise; dropout in the
    networks would make the result depend on thread timing, and is an error). While the shards
    run, torch's intra-op thread count is 1 for the whole process; it is restored afterwards.

    Arguments:
        strategy: The strategy each shard runs (:class:`Backprop` by default; the recomputing
            strategies keep their memory bound per shard).
        shards: Number of shards and threads (default: ``torch.get_num_threads()`` at each call;
            a batch smaller than this gets one shard per sample).

    Example:
        >>> import torch
        >>> from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal
        >>> from sdeflow import TimeGrid
        >>> from sdeflow.nets import FourierMLP
        >>> score = FourierMLP(2, 16, 1)
        >>> reverse = ReverseSDE(ForwardSDE(FourierMLP(2, 16, 1), 0.5), score)
        >>> objective = DiffFlowObjective(reverse, StandardNormal((2,)),
        ...                               TimeGrid.uniform(10, 1e-3, 0.5),
        ...                               gradient=Sharded(Backprop(), shards=2))
        >>> objective(torch.randn(16, 2)).loss.backward()
        >>> score.output.weight.grad is not None
        True
    """

    def __init__(self, strategy: GradientStrategy | None = None, shards: int | None = None) -> None:
        strategy = Backprop() if strategy is None else strategy
        if not isinstance(strategy, GradientStrategy):
            raise TypeError(f"strategy must be a GradientStrategy, got {type(strategy).__name__}")
        if isinstance(strategy, Sharded):
            raise TypeError("strategy must not itself be Sharded")
        if shards is not None and (isinstance(shards, bool) or not isinstance(shards, int)
                                   or shards < 1):
            raise ValueError(f"shards must be None or an int >= 1, got {shards!r}")
        self.strategy, self.shards = strategy, shards

    def __call__(
        self, sweep: Sweep, x0: Tensor, params: tuple[Tensor, ...]
    ) -> tuple[Carry, Tensor]:
        if x0.device.type != "cpu":
            raise ValueError(f"Sharded runs shards on CPU threads; x0 is on {x0.device} (on a "
                             f"GPU use the strategy itself, or DistributedDataParallel)")
        n = min(self.shards or torch.get_num_threads(), x0.shape[0])
        if n <= 1:
            return self.strategy(sweep, x0, params)
        if not callable(getattr(sweep, "shard", None)):
            raise TypeError(f"Sharded needs a sweep with a shard(index) method; "
                            f"{type(sweep).__name__} has none")
        bounds = [x0.shape[0] * j // n for j in range(n + 1)]
        sweeps = [sweep.shard(slice(a, b)) for a, b in zip(bounds, bounds[1:])]
        params = tuple(params)
        if torch.is_grad_enabled() and (x0.requires_grad or any(p.requires_grad for p in params)):
            *carry, terms = _ShardedSweep.apply(self, sweeps, bounds, x0, *params)
            return tuple(carry), terms
        # Nothing to differentiate in the shards' threads; any graph (say, to a network held in
        # a closure) is kept whole for the caller's backward pass.
        outputs = _run_shards(self, sweeps, bounds, x0, params, grad=torch.is_grad_enabled(),
                              x0_grad=False, check=False)
        return _join([(carry, terms) for _, carry, terms in outputs])

    def __repr__(self) -> str:
        shards = "" if self.shards is None else f", shards={self.shards}"
        return f"Sharded({self.strategy!r}{shards})"


class _CheckedSweep:
    """``sweep`` with its first step's graph checked for parameters outside ``params``."""

    def __init__(self, strategy: Sharded, sweep: Sweep, params: tuple[Tensor, ...]) -> None:
        self.strategy, self.sweep, self.params = strategy, sweep, params
        self.n_steps = sweep.n_steps

    def init(self, x0: Tensor) -> Carry:
        self.x0 = x0
        return self.sweep.init(x0)

    def step(self, i: int, carry: Carry) -> tuple[Carry, Tensor]:
        out, term = self.sweep.step(i, carry)
        if i == 0 and torch.is_grad_enabled():
            check_leaves(self.strategy, [t for t in (*out, term) if t.requires_grad],
                         [self.x0, *self.params, *carry])
        return out, term


class _Workers:
    """``n`` daemon threads, shard ``j`` always on thread ``j`` (its cache and its ``malloc``
    arena stay with its data from one call to the next)."""

    def __init__(self, n: int) -> None:
        self.queues: list[queue.SimpleQueue] = [queue.SimpleQueue() for _ in range(n)]
        for j, q in enumerate(self.queues):
            threading.Thread(target=self._serve, args=(q,), daemon=True,
                             name=f"sdeflow-shard-{j}").start()

    @staticmethod
    def _serve(q: queue.SimpleQueue) -> None:
        _LOCAL.in_shard = True
        while True:
            fn, future = q.get()
            try:
                future.set_result(fn())
            except BaseException as error:  # handed to the caller
                future.set_exception(error)

    def map(self, fns: list[Callable[[], T]]) -> list[T]:
        futures = [concurrent.futures.Future() for _ in fns]
        for q, fn, future in zip(self.queues, fns, futures):
            q.put((fn, future))
        concurrent.futures.wait(futures)
        return [f.result() for f in futures]  # re-raises the first shard's error


def _workers(n: int) -> _Workers:
    with _WORKERS_LOCK:
        if n not in _WORKERS:
            _WORKERS[n] = _Workers(n)
        return _WORKERS[n]


def _in_threads(fns: list[Callable[[], T]]) -> list[T]:
    """Run ``fns`` at once, one thread each with one intra-op thread; results in order."""
    if getattr(_LOCAL, "in_shard", False):
        raise RuntimeError("Sharded cannot run inside one of its own shards")
    threads = torch.get_num_threads()

    def single_threaded(fn: Callable[[], T]) -> Callable[[], T]:
        def run() -> T:
            torch.set_num_threads(1)
            return fn()
        return run

    try:
        return _workers(len(fns)).map([single_threaded(fn) for fn in fns])
    finally:
        torch.set_num_threads(threads)


def _run_shards(strategy: Sharded, sweeps: list[Sweep], bounds: list[int], x0: Tensor,
                params: tuple[Tensor, ...], grad: bool, x0_grad: bool,
                check: bool) -> list[tuple[Tensor, Carry, Tensor]]:
    """``(x0 shard, final carry, terms)`` per shard, with graphs if ``grad`` (reaching the x0
    shard if ``x0_grad``; the first step checked for leaves outside ``params`` if ``check``)."""
    autocast = autocast_state("cpu")
    rng = torch.get_rng_state()

    def run(j: int) -> tuple[Tensor, Carry, Tensor]:
        with torch.set_grad_enabled(grad), torch.autocast(**autocast):
            x0_j = x0[bounds[j]:bounds[j + 1]].detach().requires_grad_(x0_grad)
            sweep = _CheckedSweep(strategy, sweeps[j], params) if j == 0 and check else sweeps[j]
            carry, terms = strategy.strategy(sweep, x0_j, params)
        return x0_j, carry, terms

    outputs = _in_threads([lambda j=j: run(j) for j in range(len(sweeps))])
    if not torch.equal(rng, torch.get_rng_state()):
        raise RuntimeError("Sharded: the sweep drew random numbers (e.g. dropout in a network), "
                           "which makes the shards' results depend on thread timing; use the "
                           "strategy without Sharded")
    return outputs


def _join(parts: list[tuple[Carry, Tensor]]) -> tuple[Carry, Tensor]:
    carry = tuple(torch.cat(c) for c in zip(*(p[0] for p in parts)))
    return carry, torch.cat([p[1] for p in parts])


class _ShardedSweep(torch.autograd.Function):
    """``(strategy, sweeps, bounds, x0, *params) -> (*final carry, terms)``: the shards' graphs
    are kept and differentiated in their threads in the backward pass."""

    @staticmethod
    def forward(ctx, strategy: Sharded, sweeps: list[Sweep], bounds: list[int], x0: Tensor,
                *params: Tensor):
        outputs = _run_shards(strategy, sweeps, bounds, x0, params, grad=True,
                              x0_grad=ctx.needs_input_grad[3], check=True)
        ctx.outputs, ctx.bounds = outputs, bounds
        ctx.save_for_backward(*params)
        carry, terms = _join([(tuple(t.detach() for t in c), t.detach())
                              for _, c, t in outputs])
        return (*carry, terms)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, *grads: Tensor):
        if ctx.outputs is None:
            raise RuntimeError("Sharded: the shards' graphs were freed by an earlier backward "
                               "pass; a second one through the same loss is not supported")
        outputs, bounds, ctx.outputs = ctx.outputs, ctx.bounds, None
        params = ctx.saved_tensors
        wanted = [p for p, need in zip(params, ctx.needs_input_grad[4:]) if need]
        want_x0 = ctx.needs_input_grad[3]

        def run(j: int) -> tuple[Tensor | None, ...]:
            x0_j, carry, terms = outputs[j]
            a, b = bounds[j], bounds[j + 1]
            pairs = [(o, g[a:b]) for o, g in zip((*carry, terms), grads)
                     if g is not None and o.requires_grad]
            inputs = ([x0_j] if want_x0 else []) + wanted
            if not pairs or not inputs:
                return (None,) * len(inputs)
            return torch.autograd.grad([o for o, _ in pairs], inputs, [g for _, g in pairs],
                                       allow_unused=True)

        got = _in_threads([lambda j=j: run(j) for j in range(len(outputs))])
        x0_grad = None
        if want_x0:
            x0_grad = torch.cat([g[0] if g[0] is not None else torch.zeros_like(o[0])
                                 for g, o in zip(got, outputs)])
            got = [g[1:] for g in got]
        summed = iter([_sum_in_order(gs) for gs in zip(*got)])
        param_grads = [next(summed) if need else None for need in ctx.needs_input_grad[4:]]
        return (None, None, None, x0_grad, *param_grads)


def _sum_in_order(grads: tuple[Tensor | None, ...]) -> Tensor | None:
    total = None
    for g in grads:
        if g is not None:
            total = g if total is None else total + g
    return total

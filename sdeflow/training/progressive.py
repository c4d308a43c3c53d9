r"""Schedules of the number of time steps :math:`N` during training.

DiffFlow's CIFAR-10 configurations train on coarse grids first (cheap steps, while the drift
and score are far from their optimum) and refine them as training goes on. A schedule is a
callable :math:`s \mapsto N(s)` of the training step :math:`s` (1-based: the first optimizer
step is :math:`s = 1`), and its ``n_end`` is the :math:`N` used for evaluation.

- :class:`ProgressiveSteps`: a ramp, with :math:`S` = ``ramp_steps``,

  .. math:: N(s) = n_{start} + \left\lfloor (n_{end} - n_{start})\,
            \min\!\left(1, \frac{s - 1}{S}\right) \right\rfloor,

  held constant over blocks of ``every`` steps.
- :class:`SteppedSteps`: the official "cont" recipes (``conf/model/cont_cifar.yaml``,
  ``cont_mnist.yaml``; ``modules/sde_loss.py``), piecewise constant with milestones
  :math:`m_1 < \dots < m_K`,

  .. math:: N(s) = n_{\#\{j \,:\, s > m_j\}},

  so :math:`N` takes its next value at step :math:`m_j + 1`.
- :class:`FixedSteps`: :math:`N(s) = n` (declares ``constant = True``: a model trains on one
  fixed grid).

:data:`STEPS_SCHEDULES` names them for recipes (``schedule.kind``): ``fixed``, ``stepped``,
``ramp``; each factory is ``(spec, iterations) -> StepsSchedule`` with the recipe's
``[schedule]`` table and the run's number of iterations.

Example:
    >>> STEPS_SCHEDULES.get("ramp")({"n_start": 5, "n_end": 75, "ramp_fraction": 0.5}, 1000)
    ProgressiveSteps(n_start=5, n_end=75, ramp_steps=500, every=1)
"""

from __future__ import annotations

import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sdeflow.registry import Registry

__all__ = ["StepsSchedule", "ProgressiveSteps", "SteppedSteps", "FixedSteps", "STEPS_SCHEDULES"]


class StepsSchedule(ABC):
    r"""The number of grid steps :math:`N(s)` at each training step :math:`s \ge 1`.

    Subclasses implement :meth:`__call__` and set :attr:`n_end`.

    Attributes:
        n_end: The :math:`N` for evaluation: the last value of the schedule.
        constant: Whether :math:`N(s) = n_{end}` at every step (a fixed grid suffices).

    Example:
        >>> class Constant(StepsSchedule):
        ...     n_end = 30
        ...     def __call__(self, step: int) -> int:
        ...         return self.n_end
        >>> Constant()(1), isinstance(SteppedSteps([5, 10], [100]), StepsSchedule)
        (30, True)
    """

    n_end: int
    constant: bool = False

    @abstractmethod
    def __call__(self, step: int) -> int:
        """:math:`N` at training step ``step`` (1-based)."""

    @staticmethod
    def _check_step(step: int) -> None:
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an integer >= 1, got {step!r}")


class ProgressiveSteps(StepsSchedule):
    r"""A ramp of the number of grid steps :math:`N` (see the module docstring).

    Arguments:
        n_start: :math:`N` at the first step.
        n_end: :math:`N` from step ``ramp_steps + 1`` on (and for evaluation).
        ramp_steps: :math:`S`, the training steps over which :math:`N` grows.
        every: Change :math:`N` only every ``every`` steps (fewer distinct grids).

    Example:
        >>> schedule = ProgressiveSteps(5, 75, ramp_steps=700)
        >>> schedule(1), schedule(351), schedule(701), schedule(10_000)
        (5, 40, 75, 75)
    """

    def __init__(self, n_start: int, n_end: int, ramp_steps: int, *, every: int = 1) -> None:
        for name, value in (("n_start", n_start), ("n_end", n_end), ("ramp_steps", ramp_steps),
                            ("every", every)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        self.n_start, self.n_end, self.ramp_steps, self.every = n_start, n_end, ramp_steps, every

    def __call__(self, step: int) -> int:
        """:math:`N` at training step ``step`` (1-based)."""
        self._check_step(step)
        s = ((step - 1) // self.every) * self.every
        # integer arithmetic: the floor of the formula exactly (a float product can land just
        # below an integer, e.g. 70 * 470 / 700 = 46.999...)
        return self.n_start + (self.n_end - self.n_start) * min(s, self.ramp_steps) // \
            self.ramp_steps

    def __repr__(self) -> str:
        return (f"ProgressiveSteps(n_start={self.n_start}, n_end={self.n_end}, "
                f"ramp_steps={self.ramp_steps}, every={self.every})")


class SteppedSteps(StepsSchedule):
    r"""A piecewise-constant number of grid steps, the official DiffFlow "cont" recipes.

    .. math:: N(s) = \text{values}[\#\{j : s > \text{milestones}[j]\}],

    as the official ``cont_loss_fn_wrapper`` computes it from the trainer's iteration counter
    (which is 1 at the first step): ``values[0]`` for steps ``1 .. milestones[0]``,
    ``values[1]`` from step ``milestones[0] + 1`` on, and so on.

    Arguments:
        values: :math:`N` on each stage, integers >= 1 (``n_end`` is the last).
        milestones: The last step of each stage but the final one: strictly increasing
            integers >= 1, one fewer than ``values``.

    Example:
        >>> cifar_b = SteppedSteps([5, 10, 20, 30, 50, 75], [5000, 15000, 20000, 25000, 30000])
        >>> cifar_b(1), cifar_b(5000), cifar_b(5001), cifar_b(30001), cifar_b.n_end
        (5, 5, 10, 75, 75)
        >>> SteppedSteps([5, 10, 20, 30], [3000, 5000, 8000])  # cont_mnist
        SteppedSteps(values=(5, 10, 20, 30), milestones=(3000, 5000, 8000))
    """

    def __init__(self, values: Sequence[int], milestones: Sequence[int]) -> None:
        self.values = _int_tuple("values", values)
        self.milestones = _int_tuple("milestones", milestones)
        if not self.values:
            raise ValueError("values must hold at least one number of steps, got an empty "
                             "sequence")
        if len(self.milestones) != len(self.values) - 1:
            raise ValueError(
                f"milestones must hold one fewer entry than values (len(values) - 1 = "
                f"{len(self.values) - 1}), got {len(self.milestones)}: values={self.values}, "
                f"milestones={self.milestones}"
            )
        if any(v < 1 for v in self.values):
            raise ValueError(f"values must be integers >= 1, got {self.values}")
        if any(m < 1 for m in self.milestones):
            raise ValueError(f"milestones must be integers >= 1, got {self.milestones}")
        if any(b <= a for a, b in zip(self.milestones, self.milestones[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {self.milestones}")
        self.n_end = self.values[-1]

    def __call__(self, step: int) -> int:
        """:math:`N` at training step ``step`` (1-based)."""
        self._check_step(step)
        return self.values[sum(step > m for m in self.milestones)]

    def __repr__(self) -> str:
        return f"SteppedSteps(values={self.values}, milestones={self.milestones})"


class FixedSteps(StepsSchedule):
    r"""One number of grid steps throughout: :math:`N(s) = n`.

    Example:
        >>> FixedSteps(30)(1), FixedSteps(30).n_end, FixedSteps(30).constant
        (30, 30, True)
    """

    constant = True

    def __init__(self, n: int) -> None:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        self.n_end = n

    def __call__(self, step: int) -> int:
        """:math:`N` at training step ``step`` (1-based): always ``n``."""
        self._check_step(step)
        return self.n_end

    def __repr__(self) -> str:
        return f"FixedSteps(n={self.n_end})"


_NUMBER = (int, float)

#: The schedules of :math:`N` by name; factories ``(spec, iterations) -> StepsSchedule``.
STEPS_SCHEDULES: Registry[Callable[[Mapping[str, Any], int], StepsSchedule]] = Registry(
    "N schedule", key="schedule.kind")


@STEPS_SCHEDULES.register("fixed", required={"n": int}, tiny={"n": 4})
def _fixed(spec: Mapping[str, Any], iterations: int) -> StepsSchedule:
    """:class:`FixedSteps` of ``n``."""
    return FixedSteps(spec["n"])


@STEPS_SCHEDULES.register("stepped", required={"values": list, "milestones": list},
                          tiny={"values": [2, 3, 4], "milestones": [1, 2]})
def _stepped(spec: Mapping[str, Any], iterations: int) -> StepsSchedule:
    """:class:`SteppedSteps` of ``values`` at ``milestones``."""
    return SteppedSteps(spec["values"], spec["milestones"])


@STEPS_SCHEDULES.register("ramp", required={"n_start": int, "n_end": int},
                          optional={"ramp_steps": int, "ramp_fraction": _NUMBER},
                          tiny={"n_start": 2, "n_end": 4})
def _ramp(spec: Mapping[str, Any], iterations: int) -> StepsSchedule:
    """:class:`ProgressiveSteps` from ``n_start`` to ``n_end`` over ``ramp_steps``, or over
    ``ramp_fraction`` of the ``iterations``."""
    ramp = spec.get("ramp_steps")
    if ramp is None:
        fraction = spec.get("ramp_fraction")
        if isinstance(fraction, bool) or not isinstance(fraction, _NUMBER) or \
                not 0 < fraction <= 1:
            raise ValueError(f"a ramp needs ramp_steps >= 1 or ramp_fraction in (0, 1], got "
                             f"ramp_fraction={fraction!r}")
        ramp = max(1, int(iterations * fraction))
    return ProgressiveSteps(spec["n_start"], spec["n_end"], ramp)


def _int_tuple(name: str, seq: Sequence[int]) -> tuple[int, ...]:
    if getattr(seq, "ndim", None) == 1 and hasattr(seq, "tolist"):  # numpy array, tensor
        seq = seq.tolist()
    if isinstance(seq, str | bytes) or not isinstance(seq, Sequence):
        raise TypeError(f"{name} must be a sequence of integers, got {type(seq).__name__}")
    out = []
    for v in seq:
        if isinstance(v, bool):
            raise TypeError(f"{name} must hold integers, got {v!r}")
        try:
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(f"{name} must hold integers, got {v!r}") from None
    return tuple(out)

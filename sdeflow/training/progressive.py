r"""Progressive number of time steps: :math:`N` grows from ``n_start`` to ``n_end`` in training.

DiffFlow's CIFAR-10 configuration trains on coarse grids first (cheap steps, while the drift
and score are far from their optimum) and refines them as training goes on. With
:math:`s` the training step (1-based),

.. math:: N(s) = n_{start} + \left\lfloor (n_{end} - n_{start})\,
          \min\!\left(1, \frac{s - 1}{S}\right) \right\rfloor,

held constant over blocks of ``every`` steps, with :math:`S` = ``ramp_steps``.
"""

from __future__ import annotations

__all__ = ["ProgressiveSteps"]


class ProgressiveSteps:
    r"""The number of grid steps :math:`N` at each training step (see the module docstring).

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
        if isinstance(step, bool) or not isinstance(step, int) or step < 1:
            raise ValueError(f"step must be an integer >= 1, got {step!r}")
        s = ((step - 1) // self.every) * self.every
        frac = min(1.0, s / self.ramp_steps)
        return self.n_start + int((self.n_end - self.n_start) * frac)

    def __repr__(self) -> str:
        return (f"ProgressiveSteps(n_start={self.n_start}, n_end={self.n_end}, "
                f"ramp_steps={self.ramp_steps}, every={self.every})")

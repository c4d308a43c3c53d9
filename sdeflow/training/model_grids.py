r"""The training grid of a model at each step: a fixed grid or a factory of grids of
:math:`N(\text{step})` steps (a :class:`~sdeflow.training.progressive.StepsSchedule`), used as it
is, jittered (:meth:`TimeGrid.jitter`), or replaced by a random grid of the same :math:`N` (the
official ``STimer.rand`` / ``ExpTimer.rand``, e.g. :meth:`TimeGrid.s_curve_random`).

Shared by the families trained on a grid (:class:`~sdeflow.training.DiffFlowModel`,
:class:`~sdeflow.training.FlowModel`).
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor

from sdeflow.grids import TimeGrid
from sdeflow.training.progressive import StepsSchedule

__all__ = ["GridSpec"]

#: A fixed grid, or a factory ``n -> TimeGrid`` (with a progressive number of steps).
GridSpec = TimeGrid | Callable[[int], TimeGrid]


def _check_grid(grid: GridSpec, progressive: StepsSchedule | None) -> TimeGrid:
    """The evaluation grid (``n_end`` steps when progressive) from a grid or grid factory."""
    if progressive is not None and not isinstance(progressive, StepsSchedule):
        raise TypeError(f"progressive must be a StepsSchedule (ProgressiveSteps, SteppedSteps, "
                        f"...), got {type(progressive).__name__}")
    if isinstance(grid, TimeGrid):
        if progressive is not None:
            raise ValueError("grid must be a factory n -> TimeGrid (e.g. functools.partial("
                             "TimeGrid.power, t0=1e-3, t1=0.05, exponent=0.9)) to use a "
                             "progressive number of steps")
        return grid
    if not callable(grid):
        raise TypeError(f"grid must be a TimeGrid or a callable n -> TimeGrid, got "
                        f"{type(grid).__name__}")
    if progressive is None:
        raise ValueError("a grid factory needs progressive=ProgressiveSteps(...); pass a "
                         "TimeGrid for a fixed number of steps")
    built = grid(progressive.n_end)
    if not isinstance(built, TimeGrid):
        raise TypeError(f"grid(n) must return a TimeGrid, got {type(built).__name__}")
    return built


class _GridMixin:
    """Training grid at each step: the base grid (or ``grid_fn(N(step))``), jittered."""

    grid_ts: Tensor

    def _setup_grid(self, grid: GridSpec, progressive: StepsSchedule | None,
                    jitter: bool | Callable[[int], TimeGrid]) -> None:
        base = _check_grid(grid, progressive)
        self.register_buffer("grid_ts", base.ts.clone())
        self._grid_fn = None if isinstance(grid, TimeGrid) else grid
        if not (isinstance(jitter, bool) or callable(jitter)):
            raise TypeError(f"jitter must be a bool or a callable n -> TimeGrid (a random grid of "
                            f"n steps, e.g. TimeGrid.s_curve_random), got {type(jitter).__name__}")
        self.progressive, self.jitter = progressive, jitter

    @property
    def grid(self) -> TimeGrid:
        """The evaluation grid (the base grid; ``n_end`` steps with a progressive schedule)."""
        return TimeGrid(self.grid_ts)

    def training_grid(self, step: int) -> TimeGrid:
        """The grid of training step ``step``: ``N(step)`` steps, jittered if ``jitter`` is
        ``True``, or drawn by ``jitter(N)`` when it is a callable."""
        n = self.grid.n_steps if self.progressive is None else self.progressive(step)
        # a random grid draws from the global RNG, which the trainer checkpoints
        if callable(self.jitter):
            grid = self.jitter(n)
            if not isinstance(grid, TimeGrid) or grid.n_steps != n:
                got = grid if not isinstance(grid, TimeGrid) else f"{grid.n_steps} steps"
                raise ValueError(f"jitter(n) must return a TimeGrid of n={n} steps, got {got}")
        elif self.progressive is None:
            grid = self.grid
        else:
            grid = self._grid_fn(n)
        grid = TimeGrid(grid.ts.to(dtype=self.grid_ts.dtype, device=self.grid_ts.device))
        return grid.jitter() if self.jitter is True else grid

r"""Gradient strategies: how a trajectory sweep is differentiated (an object, not a flag).

A *sweep* is a recurrence over the grid with a carried state (for DiffFlow: the state
:math:`x_i` and the forward drift :math:`f(x_i, t_i)` that the next step reuses)

.. math:: c_0 = \mathrm{init}(x_0), \qquad (c_{i+1}, \ell_i) = \mathrm{step}(i, c_i),

returning the final carry and the per-step terms :math:`\ell_i`. A strategy runs it and decides
what autograd keeps:

- :class:`Backprop` keeps every step's activations (memory grows linearly in :math:`N`);
- :class:`StochasticAdjoint` (the paper's memory-saving gradient) keeps only the carries and
  recomputes one step at a time in the backward pass: activation memory is one step's, whatever
  :math:`N`;
- :class:`Checkpointed` does the same per segment of ``k`` steps;
- :class:`Sharded` runs any of these on slices of the batch in parallel CPU threads (faster than
  torch's per-operation threading for the paper's 2D networks).

Every strategy's gradient equals :class:`Backprop`'s up to floating-point summation order
(``tests/test_gradients.py``, DESIGN I8).

:data:`GRADIENTS` names them (a recipe's ``train.gradient``): ``backprop``, ``adjoint``,
``checkpointed``, ``sharded`` (:class:`Sharded` over :class:`Backprop`) and
``sharded-adjoint`` (:class:`Sharded` over :class:`StochasticAdjoint`).

Example:
    >>> GRADIENTS.names()
    ('backprop', 'adjoint', 'checkpointed', 'sharded', 'sharded-adjoint')
    >>> GRADIENTS.resolve("sharded-adjoint").strategy, GRADIENTS.resolve(None, default="backprop")
    (StochasticAdjoint(), Backprop())
"""

from collections.abc import Callable

from sdeflow.gradients.base import Backprop, GradientStrategy, Sweep
from sdeflow.gradients.recompute import Checkpointed, StochasticAdjoint
from sdeflow.gradients.sharded import Sharded
from sdeflow.registry import Registry

__all__ = ["Sweep", "GradientStrategy", "Backprop", "StochasticAdjoint", "Checkpointed",
           "Sharded", "GRADIENTS"]

#: The gradient strategies by name (``train.gradient``); each factory takes no argument.
GRADIENTS: Registry[Callable[[], GradientStrategy]] = Registry("gradient", key="train.gradient")
GRADIENTS.register("backprop", Backprop)
GRADIENTS.register("adjoint", StochasticAdjoint)
GRADIENTS.register("checkpointed", Checkpointed)


@GRADIENTS.register("sharded")
def _sharded_backprop() -> Sharded:
    """:class:`Sharded` over :class:`Backprop`."""
    return Sharded(Backprop())


@GRADIENTS.register("sharded-adjoint")
def _sharded_adjoint() -> Sharded:
    """:class:`Sharded` over :class:`StochasticAdjoint`."""
    return Sharded(StochasticAdjoint())

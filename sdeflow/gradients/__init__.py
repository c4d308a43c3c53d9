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
"""

from sdeflow.gradients.base import Backprop, GradientStrategy, Sweep
from sdeflow.gradients.recompute import Checkpointed, StochasticAdjoint
from sdeflow.gradients.sharded import Sharded

__all__ = ["Sweep", "GradientStrategy", "Backprop", "StochasticAdjoint", "Checkpointed",
           "Sharded"]

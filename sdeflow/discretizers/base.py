r"""Step schemes (discretizers): one file per scheme, each declaring its convergence orders.

A scheme advances any :class:`~sdeflow.processes.SDE` by a signed step ``dt`` (``dt < 0`` steps
a reverse process from :math:`t` down to :math:`t + dt`):

.. math:: x' = \mathrm{step}(x, t, dt, \delta), \qquad \delta \sim \mathcal{N}(0, I),

where :math:`\delta\sqrt{|dt|}` is the Brownian increment over the step. A scheme whose step is
Gaussian in :math:`\delta` also gives its transition ``(mean, std)``, which the trajectory
distributions use for exact log-densities.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from sdeflow.processes.base import SDE

__all__ = ["Discretizer", "DISCRETIZERS", "register_discretizer"]

#: Registry of the step schemes sdeflow ships (name -> class); contract tests loop over it.
DISCRETIZERS: dict[str, type[Discretizer]] = {}


def register_discretizer(name: str):
    """Class decorator adding a scheme to :data:`DISCRETIZERS` under ``name``."""

    def wrap(cls: type[Discretizer]) -> type[Discretizer]:
        if name in DISCRETIZERS:
            raise ValueError(f"a discretizer named {name!r} is registered already")
        DISCRETIZERS[name] = cls
        return cls

    return wrap


class Discretizer(ABC):
    r"""Base class of step schemes.

    Class attributes every scheme declares:

    - ``strong_order``: strong order on general (state-dependent, diagonal) noise;
    - ``strong_order_additive``: strong order when the diffusion depends on ``t`` only;
    - ``weak_order``;
    - ``gaussian``: whether :meth:`transition` exists (the step is Gaussian in the noise).
    """

    strong_order: float
    strong_order_additive: float
    weak_order: float
    gaussian: bool = False

    @abstractmethod
    def step(self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, noise: Tensor) -> Tensor:
        """One step from ``x`` at ``t`` to time ``t + dt`` with standard-normal ``noise``."""

    def transition(
        self, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, drift: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Mean and std of the Gaussian ``step`` given ``x`` (std broadcastable to ``x``).

        ``drift``, when given, is ``sde.drift(x, t)`` already computed.
        """
        raise TypeError(f"{type(self).__name__} has no Gaussian transition")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))

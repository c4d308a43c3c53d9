r"""Step schemes (discretizers): one file per scheme, each declaring its convergence orders.

A scheme advances any :class:`~sdeflow.processes.SDE` by a signed step ``dt`` (``dt < 0`` steps
a reverse process from :math:`t` down to :math:`t + dt`):

.. math:: x' = \mathrm{step}(x, t, dt, \delta), \qquad \delta \sim \mathcal{N}(0, I),

where :math:`\delta\sqrt{|dt|}` is the Brownian increment over the step. A scheme whose step is
Gaussian in :math:`\delta` also gives its transition ``(mean, std)``, which the trajectory
distributions use for exact log-densities, and a scheme whose step is affine in the state, the
drift and the noise declares its coefficients on a whole grid (:meth:`Discretizer.affine_steps`):
every consumer then runs the same fused steps for it, a user's scheme or subclass included
(:class:`~sdeflow.discretizers.stepper.Stepper`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor

from sdeflow.discretizers.stepper import AffineSteps, Stepper
from sdeflow.grids import TimeGrid
from sdeflow.processes.base import SDE
from sdeflow.registry import Registry

__all__ = ["Discretizer", "DISCRETIZERS", "register_discretizer"]

#: The step schemes by name (``train.discretizer`` of a recipe); contract tests loop over it.
#: A :class:`~sdeflow.registry.Registry`: ``DISCRETIZERS[name]`` is the class.
DISCRETIZERS: Registry[type[Discretizer]] = Registry("discretizer", key="train.discretizer")


def register_discretizer(name: str):
    """Class decorator adding a scheme to :data:`DISCRETIZERS` under ``name``
    (``DISCRETIZERS.register(name)``).

    Example:
        >>> from sdeflow import EulerMaruyama
        >>> @register_discretizer("my_euler")
        ... class MyEuler(EulerMaruyama):
        ...     pass
        >>> DISCRETIZERS.resolve("my_euler")
        MyEuler()
        >>> _ = DISCRETIZERS.unregister("my_euler")
    """
    return DISCRETIZERS.register(name)


class Discretizer(ABC):
    r"""Base class of step schemes.

    Class attributes every scheme declares:

    - ``strong_order``: strong order on general (state-dependent, diagonal) noise;
    - ``strong_order_additive``: strong order when the diffusion depends on ``t`` only;
    - ``weak_order``; ``weak_order_additive`` when it differs on additive noise (else ``None``);
    - ``gaussian``: whether :meth:`transition` exists (the step is Gaussian in the noise);
    - ``sde_type``: the calculus whose solution the scheme converges to (``"ito"``).
    """

    strong_order: float
    strong_order_additive: float
    weak_order: float
    weak_order_additive: float | None = None
    gaussian: bool = False
    sde_type: str = "ito"

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        # Declared affine coefficients describe the step of the class that declares them: a
        # subclass that redefines step or transition without redeclaring them falls back to
        # its own step (None), so no consumer runs a step the class no longer takes.
        own = vars(cls)
        if ("step" in own or "transition" in own) and "affine_steps" not in own:
            cls.affine_steps = Discretizer.affine_steps

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

    def declines(self, sde: SDE) -> str | None:
        """Why this scheme does not step ``sde`` (read from the process's declarations), or
        ``None`` when it does. :meth:`step` raises a :class:`TypeError` with this reason; the
        test kit and the contract tests skip a declined process instead of catching errors.

        Example:
            >>> from sdeflow import ExponentialIntegrator, ForwardSDE, VPSDE
            >>> ExponentialIntegrator().declines(VPSDE()) is None
            True
            >>> print(ExponentialIntegrator().declines(ForwardSDE(lambda x, t: -x, 1.0)))
            ... # doctest: +ELLIPSIS
            ExponentialIntegrator needs a process with a declared linear drift part ...
        """
        return None

    def affine_steps(self, sde: SDE, t: Tensor, dt: Tensor) -> AffineSteps | None:
        r"""Coefficients :math:`(\alpha_i, \beta_i, \sigma_i)` of steps from times ``t`` by
        ``dt`` (1-D tensors, one entry per step) when every step is
        :math:`x' = \alpha_i x + \beta_i\, b(x, t_i) + \sigma_i \delta`, for a process with
        additive noise; ``None`` (the default) when the scheme is not affine there.

        Declaring them is how a scheme gets fused steps in every consumer; they must agree with
        :meth:`step` (the test kit checks it).
        """
        return None

    def stepper(self, sde: SDE, grid: TimeGrid, *, reverse: bool = False) -> Stepper:
        """This scheme's steps of ``sde`` on ``grid`` (``reverse``: from :math:`t_N` down),
        with the per-grid work done once; see :class:`~sdeflow.discretizers.stepper.Stepper`.

        Example:
            >>> from sdeflow import EulerMaruyama, ForwardSDE, TimeGrid
            >>> EulerMaruyama().stepper(ForwardSDE(lambda x, t: -x, 0.5), TimeGrid.uniform(4, 0, 1))
            Stepper(EulerMaruyama(), ForwardSDE, n_steps=4, reverse=False, affine=True)
        """
        return Stepper(self, sde, grid, reverse=reverse)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def __eq__(self, other: object) -> bool:
        return other.__class__ is self.__class__ and vars(self) == vars(other)

    def __hash__(self) -> int:
        return hash(type(self))

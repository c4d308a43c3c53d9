r"""The fixed linear forward processes by name (a recipe's ``process.sde`` for the score
family): :data:`LINEAR_SDES`. Each factory takes the ``[process]`` keys it declares as keyword
arguments (absent keys keep the class's defaults).

- ``vp``: :class:`~sdeflow.processes.VPSDE` (``beta_min``, ``beta_max``, ``T``);
- ``subvp``: :class:`~sdeflow.processes.SubVPSDE` (the same keys);
- ``ve``: :class:`~sdeflow.processes.VESDE` (``sigma_min``, ``sigma_max``, ``T``).

Example:
    >>> LINEAR_SDES.get("vp")(beta_min=0.1, beta_max=20.0)
    VPSDE(beta_min=0.1, beta_max=20.0, T=1.0)
    >>> LINEAR_SDES.optional("ve")
    ('sigma_min', 'sigma_max', 'T')
"""

from __future__ import annotations

from collections.abc import Callable

from sdeflow.processes.linear import VESDE, VPSDE, LinearSDE, SubVPSDE
from sdeflow.registry import Registry

__all__ = ["LINEAR_SDES"]

_NUMBER = (int, float)
_VP_KEYS = {"beta_min": _NUMBER, "beta_max": _NUMBER, "T": _NUMBER}

#: The linear SDEs by name; factories ``(**process keys) -> LinearSDE``.
LINEAR_SDES: Registry[Callable[..., LinearSDE]] = Registry("sde", key="process.sde")
LINEAR_SDES.register("vp", VPSDE, optional=_VP_KEYS)
LINEAR_SDES.register("subvp", SubVPSDE, optional=_VP_KEYS)
LINEAR_SDES.register("ve", VESDE, optional={"sigma_min": _NUMBER, "sigma_max": _NUMBER,
                                            "T": _NUMBER})

r"""The fixed linear forward processes by name (a recipe's ``process.sde`` for the score
family): :data:`LINEAR_SDES`; and the affine paths by name (a recipe's ``path.kind`` for the
path-matching family): :data:`PATHS`, the linear and cosine paths and every linear SDE, each a
path :math:`x_t = \alpha(t)\,x_0 + \sigma(t)\,\epsilon`. Each factory takes the keys it declares
(of ``[process]``, of ``[path]``) as keyword arguments (absent keys keep the class's defaults).

- ``vp``: :class:`~sdeflow.processes.VPSDE` (``beta_min``, ``beta_max``, ``T``);
- ``subvp``: :class:`~sdeflow.processes.SubVPSDE` (the same keys);
- ``ve``: :class:`~sdeflow.processes.VESDE` (``sigma_min``, ``sigma_max``, ``T``).

Example:
    >>> LINEAR_SDES.get("vp")(beta_min=0.1, beta_max=20.0)
    VPSDE(beta_min=0.1, beta_max=20.0, T=1.0)
    >>> LINEAR_SDES.optional("ve")
    ('sigma_min', 'sigma_max', 'T')
    >>> PATHS.names(), PATHS.get("vp")(beta_max=10.0).affine_path
    (('linear', 'cosine', 'vp', 'subvp', 've'), True)
"""

from __future__ import annotations

from collections.abc import Callable

from sdeflow.processes.linear import VESDE, VPSDE, LinearSDE, SubVPSDE
from sdeflow.processes.paths import CosinePath, LinearPath
from sdeflow.registry import Registry

__all__ = ["LINEAR_SDES", "PATHS"]

_NUMBER = (int, float)
_VP_KEYS = {"beta_min": _NUMBER, "beta_max": _NUMBER, "T": _NUMBER}

#: The linear SDEs by name; factories ``(**process keys) -> LinearSDE``.
LINEAR_SDES: Registry[Callable[..., LinearSDE]] = Registry("sde", key="process.sde")
LINEAR_SDES.register("vp", VPSDE, optional=_VP_KEYS)
LINEAR_SDES.register("subvp", SubVPSDE, optional=_VP_KEYS)
LINEAR_SDES.register("ve", VESDE, optional={"sigma_min": _NUMBER, "sigma_max": _NUMBER,
                                            "T": _NUMBER})

#: The affine paths by name; factories ``(**path keys) -> SDE`` declaring ``affine_path``: the
#: linear (conditional OT, rectified flow) and cosine paths, and the linear SDEs of
#: :data:`LINEAR_SDES` with their keys (a VP path is the VP SDE itself).
PATHS: Registry[Callable[..., LinearSDE]] = Registry("path", key="path.kind")
PATHS.register("linear", LinearPath)
PATHS.register("cosine", CosinePath)
for _name in LINEAR_SDES:
    _entry = LINEAR_SDES.entry(_name)
    PATHS.register(_name, _entry.factory, optional=_entry.optional)
del _name, _entry

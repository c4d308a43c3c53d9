"""Step schemes. A new scheme is one new file in this folder whose class is decorated with
``@register_discretizer(name)``: every module here is imported, so it joins :data:`DISCRETIZERS`
(and the contract tests that loop over it) with nothing else to edit.
"""

import importlib
import pkgutil

from sdeflow.discretizers.base import DISCRETIZERS, Discretizer, register_discretizer
from sdeflow.discretizers.euler_maruyama import EulerMaruyama
from sdeflow.discretizers.exponential import ExponentialIntegrator
from sdeflow.discretizers.heun import StochasticHeun

for _module in pkgutil.iter_modules(__path__):
    if not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "DISCRETIZERS",
    "Discretizer",
    "EulerMaruyama",
    "ExponentialIntegrator",
    "StochasticHeun",
    "register_discretizer",
]

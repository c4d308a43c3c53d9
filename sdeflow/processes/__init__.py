"""Processes: forward SDEs (trainable DiffFlow drift, linear VP/sub-VP/VE), affine paths (linear,
cosine, any linear SDE's marginals) and their reverse family.

A new process family is one new file here that subclasses :class:`SDE`.
"""

from sdeflow.processes.base import SDE, LinearPart, PathCoefficients
from sdeflow.processes.linear import VESDE, VPSDE, LinearSDE, SubVPSDE
from sdeflow.processes.neural import ForwardSDE
from sdeflow.processes.paths import (
    TARGETS,
    AffinePath,
    ConvertedModel,
    CosinePath,
    LinearPath,
    MarginalPath,
    PathODE,
    conversion,
    convert,
    target_coefficients,
)
from sdeflow.processes.registry import LINEAR_SDES, PATHS
from sdeflow.processes.reverse import ReverseSDE, probability_flow

__all__ = [
    "LINEAR_SDES",
    "PATHS",
    "SDE",
    "LinearPart",
    "ForwardSDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "PathCoefficients",
    "AffinePath",
    "LinearPath",
    "CosinePath",
    "MarginalPath",
    "PathODE",
    "ConvertedModel",
    "TARGETS",
    "target_coefficients",
    "conversion",
    "convert",
    "ReverseSDE",
    "probability_flow",
]

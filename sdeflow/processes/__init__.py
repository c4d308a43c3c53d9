"""Processes: forward SDEs (trainable DiffFlow drift, linear VP/sub-VP/VE) and their reverse family.

A new process family is one new file here that subclasses :class:`SDE`.
"""

from sdeflow.processes.base import SDE, LinearPart
from sdeflow.processes.linear import VESDE, VPSDE, LinearSDE, SubVPSDE
from sdeflow.processes.neural import ForwardSDE
from sdeflow.processes.registry import LINEAR_SDES
from sdeflow.processes.reverse import ReverseSDE, probability_flow

__all__ = [
    "LINEAR_SDES",
    "SDE",
    "LinearPart",
    "ForwardSDE",
    "LinearSDE",
    "VPSDE",
    "SubVPSDE",
    "VESDE",
    "ReverseSDE",
    "probability_flow",
]

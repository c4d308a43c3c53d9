"""Interoperability with other SDE tools: torchsde (:mod:`sdeflow.interop.torchsde`).

The trajectory distributions are pyro ``TorchDistribution``\\ s already, so they work inside
``pyro.sample`` with no adapter (see ``tests/test_interop.py``).
"""

from sdeflow.interop.torchsde import (
    STRATONOVICH_METHODS,
    GridBrownian,
    TorchsdeAdapter,
    brownian_from_noise,
    noise_from_brownian,
    sample_torchsde,
    solve_torchsde,
    to_torchsde,
    torchsde_times,
)

__all__ = [
    "STRATONOVICH_METHODS",
    "GridBrownian",
    "TorchsdeAdapter",
    "brownian_from_noise",
    "noise_from_brownian",
    "sample_torchsde",
    "solve_torchsde",
    "to_torchsde",
    "torchsde_times",
]

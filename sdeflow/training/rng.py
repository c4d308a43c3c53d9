r"""Every global random state a training run draws from (torch on the CPU and CUDA, numpy's
legacy global generator, Python's ``random``) as checkpointable values, and their restoration:
a resumed run continues each stream exactly where the checkpoint left it."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

__all__ = ["get_rng_state", "set_rng_state"]


def get_rng_state() -> dict[str, Any]:
    """Every global RNG state (torch CPU and CUDA, numpy, python) as checkpointable values.

    Example:
        >>> state = get_rng_state()
        >>> a = torch.rand(2)
        >>> set_rng_state(state)
        >>> torch.equal(torch.rand(2), a)
        True
    """
    # the legacy global numpy RNG is the one user code seeds with np.random.seed
    key, pos, has_gauss, cached = np.random.get_state()[1:]  # noqa: NPY002
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    np_state = state["numpy"]
    key = np_state["key"].numpy().astype(np.uint32)
    legacy = ("MT19937", key, np_state["pos"], np_state["has_gauss"], np_state["cached_gaussian"])
    np.random.set_state(legacy)  # noqa: NPY002
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))

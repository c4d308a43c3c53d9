"""Shared fixtures, test modules and Hypothesis strategies for the core test suite.

Nothing here changes torch's default dtype: tests pass ``dtype=`` explicitly (float64 for the
identities). Test modules are defined at module level so that they pickle.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from sdeflow import ConstantSchedule, LinearSchedule, TimeGrid

# The tests use tiny tensors: intra-op threads only add overhead, and CI runs two pytest workers
# on two cores (pytest -n 2), so one thread per worker.
torch.set_num_threads(int(os.environ.get("SDEFLOW_TEST_THREADS", "1")))
os.environ.setdefault("OMP_NUM_THREADS", "1")  # inherited by the subprocess tests (CLI, DDP)

# -- Hypothesis profiles -------------------------------------------------------------------------
# "ci": reproducible (derandomized) and sized for a few-minute suite; "dev": more, random examples.
settings.register_profile(
    "ci",
    deadline=None,
    max_examples=25,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.register_profile(
    "dev", deadline=None, max_examples=200, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

HAS_CUDA = torch.cuda.is_available()
F64 = torch.float64

#: torch.compile on the CPU (inductor) builds C++ with the system compiler.
needs_cpp_compiler = pytest.mark.skipif(
    not any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "g++", "clang++")),
    reason="torch.compile on the CPU needs a C++ compiler (g++ or clang++)",
)


def pytest_collection_modifyitems(config, items):
    if HAS_CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


# -- test fields: drifts and scores --------------------------------------------------------------
class TinyMLP(nn.Module):
    """``f(x, t)``: a one-hidden-layer tanh MLP of the flattened state and the time.

    Works on any state shape with ``dim`` elements; returns a tensor shaped like ``x``.
    """

    def __init__(self, dim: int, width: int = 8, scale: float = 1.0,
                 generator: torch.Generator | None = None, dtype: torch.dtype = F64) -> None:
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(dim, width, generator=generator, dtype=dtype) / dim**0.5)
        self.wt = nn.Parameter(torch.randn(width, generator=generator, dtype=dtype))
        self.b1 = nn.Parameter(0.1 * torch.randn(width, generator=generator, dtype=dtype))
        self.w2 = nn.Parameter(scale * torch.randn(width, dim, generator=generator, dtype=dtype)
                               / width**0.5)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], -1)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(-1, 1) if t.dim() else t  # (), (1,) or (B,) -> broadcast over width
        return (torch.tanh(h @ self.w1 + t * self.wt + self.b1) @ self.w2).reshape(x.shape)


class LinearField(nn.Module):
    """``f(x, t) = x A^T + b + t c`` on the flattened state (A: ``(d, d)``)."""

    def __init__(self, A: Tensor, b: Tensor | None = None, c: Tensor | None = None) -> None:
        super().__init__()
        d = A.shape[0]
        self.A = nn.Parameter(A.clone())
        self.b = nn.Parameter(torch.zeros(d, dtype=A.dtype) if b is None else b.clone())
        self.c = nn.Parameter(torch.zeros(d, dtype=A.dtype) if c is None else c.clone())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = x.reshape(x.shape[0], -1)
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
        t = t.reshape(-1, 1) if t.dim() else t
        return (h @ self.A.T + self.b + t * self.c).reshape(x.shape)


class ZeroField(nn.Module):
    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return torch.zeros_like(x)


def make_field(kind: str, dim: int, seed: int, scale: float = 1.0, dtype=F64) -> nn.Module:
    """A random drift or score: ``"linear"`` or ``"mlp"`` (time-dependent in both cases)."""
    gen = torch.Generator().manual_seed(seed)
    if kind == "linear":
        A = scale * torch.randn(dim, dim, generator=gen, dtype=dtype) / dim**0.5
        b = scale * torch.randn(dim, generator=gen, dtype=dtype)
        c = scale * torch.randn(dim, generator=gen, dtype=dtype)
        return LinearField(A, b, c)
    if kind == "mlp":
        return TinyMLP(dim, scale=scale, generator=gen, dtype=dtype)
    raise ValueError(kind)


# -- Hypothesis strategies ------------------------------------------------------------------------
#: State shapes (without the batch): points, a single coordinate, small images.
STATE_SHAPES = [(1,), (2,), (3,), (1, 2, 2), (3, 4, 4), (2, 3)]

state_shapes = st.sampled_from(STATE_SHAPES)
batch_sizes = st.integers(1, 3)
field_kinds = st.sampled_from(["linear", "mlp"])
seeds = st.integers(0, 2**31 - 1)


@st.composite
def grids(draw, max_steps: int = 6, dtype=F64) -> TimeGrid:
    """Uniform, power (t**p spacing) or jittered grids on ``[t0, t0 + span]``."""
    n = draw(st.integers(1, max_steps))
    t0 = draw(st.floats(0.0, 0.3))
    t1 = t0 + draw(st.floats(0.05, 1.0))
    kind = draw(st.sampled_from(["uniform", "power", "jittered"]))
    if kind == "power":
        return TimeGrid.power(n, t0, t1, draw(st.floats(0.5, 2.0)), dtype=dtype)
    grid = TimeGrid.uniform(n, t0, t1, dtype=dtype)
    if kind == "jittered":
        grid = grid.jitter(torch.Generator().manual_seed(draw(seeds)))
    return grid


@st.composite
def schedules(draw, t0: float = 0.0, t1: float = 1.3):
    """Constant or time-varying (linear) ``g > 0`` on ``[t0, t1]``."""
    if draw(st.booleans()):
        return ConstantSchedule(draw(st.floats(0.1, 2.0)))
    return LinearSchedule(draw(st.floats(0.1, 2.0)), draw(st.floats(0.1, 2.0)), t0, t1)


@pytest.fixture
def gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)

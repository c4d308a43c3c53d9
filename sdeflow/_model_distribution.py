"""What the two model laws of :mod:`sdeflow.distributions` share (private): the prior, the
grid, the shapes, the checks of a value, the condition of a conditional model, and the pyro view
of a torch distribution."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from pyro.distributions import TorchDistribution
from pyro.distributions.torch_distribution import TorchDistributionMixin
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from sdeflow._checks import check_modules, check_same_device_dtype
from sdeflow.conditioning import bind_condition, check_condition
from sdeflow.grids import TimeGrid
from sdeflow.priors import as_sample_shape, resolve_prior
from sdeflow.processes.base import SDE

__all__ = ["SampleShape", "as_pyro"]

SampleShape = int | torch.Size | tuple[int, ...]


class _PyroView(TorchDistribution):
    """A torch distribution as a pyro one (``pyro.sample`` needs pyro's mixin)."""

    arg_constraints: dict = {}

    def __init__(self, base: Distribution) -> None:
        self.base = base
        self.has_rsample = base.has_rsample
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def support(self) -> constraints.Constraint:
        return self.base.support

    def rsample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        return self.base.rsample(as_sample_shape(sample_shape))

    def sample(self, sample_shape: SampleShape = torch.Size()) -> Tensor:
        return self.base.sample(as_sample_shape(sample_shape))

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value)

    def expand(self, batch_shape, _instance=None) -> _PyroView:
        return _PyroView(self.base.expand(torch.Size(batch_shape)))


def as_pyro(dist: Distribution) -> TorchDistribution:
    """``dist`` itself if it is a pyro distribution, else a pyro view of it (private helper)."""
    return dist if isinstance(dist, TorchDistributionMixin) else _PyroView(dist)


class _OnFlatStates(Distribution):
    """``base`` read on states flattened to ``(M, *state)`` from ``(*lead, *state)``."""

    arg_constraints: dict = {}

    def __init__(self, base: Distribution, lead: torch.Size) -> None:
        self.base, self.lead = base, lead
        super().__init__(torch.Size([lead.numel()]), base.event_shape, validate_args=False)

    def log_prob(self, value: Tensor) -> Tensor:
        return self.base.log_prob(value.reshape(self.lead + self.event_shape)).reshape(-1)


class _Drift(nn.Module):
    """The ODE's vector field in torchdiffeq's ``f(t, x)`` order."""

    def __init__(self, ode: SDE) -> None:
        super().__init__()
        self.ode = ode

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        return self.ode.drift(x, t)


class _ModelDistribution(TorchDistribution):
    """What both laws share: the prior, the grid, the shapes, the checks of a value."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, process: SDE, prior: Distribution | Callable[[], Distribution],
                 grid: TimeGrid, validate_args: bool | None, condition: Tensor | None = None,
                 guidance: float = 1.0) -> None:
        if not isinstance(process, SDE):
            raise TypeError(f"process must be an sdeflow SDE, got {type(process).__name__}")
        if not isinstance(grid, TimeGrid):
            raise TypeError(f"grid must be a TimeGrid (x0 at grid.t0, the prior at grid.t1), "
                            f"got {type(grid).__name__}")
        prior = resolve_prior(prior)
        if len(prior.event_shape) == 0:
            raise ValueError("prior must have event_shape equal to the state shape (non-empty); "
                             "wrap it with .to_event(...) or Independent")
        name = type(self).__name__
        self.condition, self.guidance = condition, float(guidance)
        if condition is None:
            bind_condition(process, None, guidance, where=name)  # guidance needs a condition
        else:
            flat = check_condition(condition.reshape((-1,) + _condition_event(condition)),
                                   where=name, like=grid.ts)
            bind_condition(process, flat, guidance, where=name)  # something takes it
            batch = condition.shape[:condition.dim() - len(_condition_event(condition))]
            if prior.batch_shape == ():
                prior = prior.expand(batch)
            elif prior.batch_shape != batch:
                raise ValueError(f"{name}: condition has batch shape {tuple(batch)} but the "
                                 f"prior has batch shape {tuple(prior.batch_shape)}; give a prior "
                                 f"without batch shape or with the condition's")
        try:  # the prior's mean (no random draw) tells its device and dtype, where it has one
            mean = prior.mean
        except NotImplementedError:
            mean = None
        if isinstance(mean, Tensor):
            check_same_device_dtype("prior", mean, "grid.ts", grid.ts)
            check_modules(grid.ts, [process], x_name="grid.ts")
        self.prior, self.grid = prior, grid
        super().__init__(prior.batch_shape, prior.event_shape, validate_args)

    def _conditions(self, lead: torch.Size) -> dict[str, Any]:
        """The ``condition=`` and ``guidance=`` of a call on states flattened from ``(*lead,
        *state)`` (``lead`` ends in the batch shape): the condition repeated over the sample
        dimensions and flattened alike; nothing without a condition."""
        if self.condition is None:
            return {}
        event = _condition_event(self.condition)
        flat = self.condition.expand(tuple(lead) + event).reshape((-1,) + event)
        return {"condition": flat, "guidance": self.guidance}

    def _expanded_condition(self, batch_shape: torch.Size) -> dict[str, Any]:
        """The constructor's ``condition=`` and ``guidance=`` for ``expand(batch_shape)``."""
        if self.condition is None:
            return {}
        event = _condition_event(self.condition)
        return {"condition": self.condition.expand(tuple(batch_shape) + event),
                "guidance": self.guidance}

    @property
    def support(self) -> constraints.Constraint:
        return constraints.independent(constraints.real, len(self.event_shape))

    def _draw_prior(self, sample_shape: SampleShape, generator: torch.Generator | None,
                    reparameterized: bool) -> Tensor:
        """``x_{t_1}``, ``(*sample_shape, *batch, *state)``; with ``generator`` the draw is seeded
        from it (torch distributions take no generator) and the global RNG is left untouched."""
        shape = as_sample_shape(sample_shape)
        draw = self.prior.rsample if reparameterized and self.prior.has_rsample else \
            self.prior.sample
        if generator is None:
            return draw(shape)
        seed = int(torch.randint(0, 2**62, (), generator=generator, device=generator.device))
        device = self.grid.ts.device
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            return draw(shape)

    def _flatten_value(self, value: Tensor) -> tuple[Tensor, torch.Size]:
        """``value`` ``(*S, *batch, *state)`` -> ``((M, *state), lead)``, checked."""
        state = tuple(self.event_shape)
        if not isinstance(value, Tensor) or not value.is_floating_point():
            got = f"dtype {value.dtype}" if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"value must be a floating-point tensor, got {got}")
        k = len(state)
        if value.dim() < k or tuple(value.shape[value.dim() - k:]) != state:
            raise ValueError(f"value must have shape (*sample_shape, *batch_shape="
                             f"{tuple(self.batch_shape)}, *event_shape={state}), "
                             f"got {tuple(value.shape)}")
        check_same_device_dtype("value", value, "grid.ts", self.grid.ts)
        if not bool(torch.isfinite(value).all()):
            raise ValueError("value must be finite, got NaN or inf")
        lead = torch.broadcast_shapes(value.shape[: value.dim() - k], self.batch_shape)
        if lead.numel() == 0:
            raise ValueError(f"value must hold at least one state, got shape "
                             f"{tuple(value.shape)}")
        return value.expand(lead + self.event_shape).reshape((-1,) + state), lead


def _condition_event(condition: Tensor) -> tuple[int, ...]:
    """The shape of one condition: ``()`` for a class label, ``(k,)`` for a vector."""
    return tuple(condition.shape[-1:]) if condition.is_floating_point() else ()

r"""Priors :math:`p_{prior}(x_N)` as modules (zuko's lazy-distribution idiom).

A prior module holds its tensors as buffers, so ``.to(device)`` moves it with the model, and
calling it returns a :class:`torch.distributions.Distribution` whose ``event_shape`` is the state
shape. Plain distributions are accepted wherever a prior is (see :func:`resolve_prior`).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

__all__ = [
    "StandardNormal",
    "DiagonalNormal",
    "resolve_prior",
    "check_data",
    "prior_draws",
    "as_sample_shape",
]


class DiagonalNormal(nn.Module):
    r""":math:`\mathcal{N}(\mu, \mathrm{diag}(\sigma^2))` over states of shape ``loc.shape``.

    Example:
        >>> import torch
        >>> prior = DiagonalNormal(torch.zeros(2), 2 * torch.ones(2))
        >>> prior().event_shape, prior().batch_shape
        (torch.Size([2]), torch.Size([]))
    """

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__()
        if loc.shape != scale.shape or loc.dim() == 0 or loc.numel() == 0:
            raise ValueError(f"loc and scale must share a non-empty state shape, got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be > 0")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self) -> Distribution:
        # no value validation: a diverged model's non-finite x_N must give a NaN loss (which the
        # trainer stops or skips, naming the step), not a ValueError from inside log_prob
        return Independent(Normal(self.loc, self.scale, validate_args=False), self.loc.dim(),
                           validate_args=False)

    def extra_repr(self) -> str:
        return f"state_shape={tuple(self.loc.shape)}"


class StandardNormal(DiagonalNormal):
    r""":math:`\mathcal{N}(0, I)` over states of shape ``state_shape``.

    Example:
        >>> StandardNormal((3, 8, 8))().event_shape
        torch.Size([3, 8, 8])
    """

    def __init__(self, state_shape: tuple[int, ...], scale: float = 1.0,
                 dtype: torch.dtype | None = None) -> None:
        state_shape = tuple(state_shape)
        if not state_shape or not all(isinstance(n, int) and n >= 1 for n in state_shape):
            raise ValueError(f"state_shape must be a non-empty tuple of positive ints, got "
                             f"{state_shape}")
        loc = torch.zeros(state_shape, dtype=dtype)
        super().__init__(loc, torch.full_like(loc, float(scale)))


def resolve_prior(prior: Distribution | Callable[[], Distribution]) -> Distribution:
    """A distribution from a distribution or a prior module/callable returning one."""
    if isinstance(prior, Distribution):
        return prior
    if callable(prior):
        d = prior()
        if isinstance(d, Distribution):
            return d
    raise TypeError(f"prior must be a torch Distribution or a module returning one, got "
                    f"{type(prior).__name__}")


def check_data(x0: Tensor, prior: Distribution | Callable[[], Distribution],
               name: str = "x0") -> tuple[Distribution, tuple[int, ...]]:
    """Resolve ``prior`` and check that ``x0`` is a non-empty, finite ``(batch, *state)`` batch
    whose state shape is the prior's ``event_shape``; returns ``(distribution, state_shape)``."""
    dist = resolve_prior(prior)
    state = tuple(dist.event_shape)
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        got = f"dtype {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
        raise TypeError(f"{name} must be a floating-point tensor, got {got}")
    if x0.dim() != len(state) + 1 or tuple(x0.shape[1:]) != state:
        raise ValueError(f"{name} must have shape (batch, *state) with state {state} (the prior's "
                         f"event_shape), got {tuple(x0.shape)}")
    if x0.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one sample, got an empty batch")
    if not bool(torch.isfinite(x0).all()):
        raise ValueError(f"{name} must be finite, got NaN or inf")
    return dist, state


def as_sample_shape(sample_shape: int | torch.Size | tuple[int, ...]) -> torch.Size:
    """``sample_shape`` as a :class:`torch.Size`; an int ``n`` means ``(n,)``.

    Example:
        >>> as_sample_shape(5), as_sample_shape((2, 3))
        (torch.Size([5]), torch.Size([2, 3]))
    """
    if isinstance(sample_shape, int) and not isinstance(sample_shape, bool):
        sample_shape = (sample_shape,)
    try:
        shape = torch.Size(sample_shape)
    except TypeError:
        raise TypeError(f"sample_shape must be an int or a tuple of ints, got "
                        f"{sample_shape!r}") from None
    if any(n < 0 for n in shape):
        raise ValueError(f"sample_shape must be non-negative, got {tuple(shape)}")
    return shape


def prior_draws(prior: Distribution | Callable[[], Distribution],
                sample_shape: int | torch.Size | tuple[int, ...] = (),
                x_final: Tensor | None = None) -> tuple[Tensor, torch.Size, tuple[int, ...]]:
    """Starting points of a reverse sweep: ``x_final`` (checked) or draws from ``prior``.

    Returns the points flattened to ``(M, *state)``, their leading shape and the state shape.
    """
    dist = resolve_prior(prior)
    state = tuple(dist.event_shape)
    if x_final is None:
        x_final = dist.sample(as_sample_shape(sample_shape))
    elif tuple(x_final.shape[x_final.dim() - len(state):]) != state:
        raise ValueError(f"x_final must end in the prior's event_shape {state}, "
                         f"got {tuple(x_final.shape)}")
    elif not bool(torch.isfinite(x_final).all()):
        raise ValueError("x_final must be finite, got NaN or inf")
    lead = x_final.shape[: x_final.dim() - len(state)]
    return x_final.reshape((-1,) + state), lead, state

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

__all__ = ["StandardNormal", "DiagonalNormal", "resolve_prior"]


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
        if loc.shape != scale.shape or loc.dim() == 0:
            raise ValueError(f"loc and scale must share a non-empty state shape, got "
                             f"{tuple(loc.shape)} and {tuple(scale.shape)}")
        if not bool((scale > 0).all()):
            raise ValueError("scale must be > 0")
        self.register_buffer("loc", loc)
        self.register_buffer("scale", scale)

    def forward(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale), self.loc.dim())

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
        loc = torch.zeros(tuple(state_shape), dtype=dtype)
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

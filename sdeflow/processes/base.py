r"""The SDE protocol: :math:`dx = \mathrm{drift}(x, t)\,dt + \mathrm{diffusion}(x, t)\,dw`.

Noise is diagonal: ``diffusion(x, t)`` returns a tensor that broadcasts against ``x``: a per-time
scale :math:`g(t)` (shape ``()`` or ``(B, 1, ..., 1)``) for the DiffFlow, VP and VE processes, or
a full tensor shaped like ``x`` for state-dependent noise (e.g. geometric Brownian motion).
States have any shape ``(B, *state)``; ``t`` is a tensor of shape ``()``, ``(1,)`` or ``(B,)``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from sdeflow._checks import as_time, expand_to

__all__ = ["SDE"]


class SDE(nn.Module, ABC):
    r"""Base class of all processes: an Itô SDE with diagonal noise.

    Subclasses implement :meth:`drift` and :meth:`diffusion`. A process whose diffusion depends
    only on time sets ``additive_noise = True`` (it then has the same Itô and Stratonovich
    solutions, and Euler–Maruyama converges with strong order 1 on it).
    """

    additive_noise: bool = True

    @abstractmethod
    def drift(self, x: Tensor, t: Tensor) -> Tensor:
        """The drift, a tensor shaped like ``x``."""

    @abstractmethod
    def diffusion(self, x: Tensor, t: Tensor) -> Tensor:
        """The diagonal noise scale, a tensor that broadcasts against ``x``."""

    def diffusion_scale(self, t: Tensor) -> Tensor | None:
        r""":math:`g(t)` for a 1-D tensor of times when the noise is additive, else ``None``.

        Used to validate a whole grid at once (e.g. :math:`g > 0` where a density divides by it).
        """
        return None

    def forward(self, x: Tensor, t: Tensor | float) -> tuple[Tensor, Tensor]:
        """``(drift(x, t), diffusion(x, t))``."""
        t = as_time(t, x)
        return self.drift(x, t), self.diffusion(x, t)

    @staticmethod
    def _broadcast(v: Tensor, x: Tensor) -> Tensor:
        return expand_to(v, x)

r"""The interface of a trained model family: :class:`GenerativeModel`, what the
:class:`~sdeflow.training.Trainer` (:meth:`~GenerativeModel.loss`) and the evaluation
(:meth:`~GenerativeModel.sample`, :meth:`~GenerativeModel.log_likelihood`,
:meth:`~GenerativeModel.nelbo`, :meth:`~GenerativeModel.distribution`) call; the families are in
:mod:`sdeflow.training.models` and :mod:`sdeflow.training.path_model`.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from sdeflow.distributions import (
    MODEL_LAWS,
    ProbabilityFlowDistribution,
    SDESamplerDistribution,
)
from sdeflow.grids import TimeGrid

__all__ = ["GenerativeModel"]


class GenerativeModel(nn.Module, ABC):
    r"""The interface every model family implements for the trainer and the evaluation.

    **Conditional models** (networks declaring ``conditional = True``,
    :mod:`sdeflow.conditioning`): :meth:`loss` takes a batch ``(x, y)``; :meth:`sample`,
    :meth:`log_likelihood`, :meth:`nelbo` and :meth:`distribution` take ``condition=y`` and
    ``guidance=w`` (``None``: the model's :attr:`guidance`). Without a condition a conditional
    model is its unconditional part (the null condition, trained with ``p_uncond > 0``).
    """

    #: What :meth:`nelbo` computes (written to metrics).
    nelbo_kind: str = "negative ELBO"
    #: The classifier-free guidance scale used when a call gives a condition and no guidance.
    guidance: float = 1.0

    @abstractmethod
    def loss(self, batch: Tensor | tuple[Tensor, Tensor], step: int
             ) -> tuple[Tensor, dict[str, float]]:
        """``(scalar loss to minimize, dict of floats to log)`` for one training batch: ``x``,
        or ``(x, condition)`` for a conditional model."""

    @abstractmethod
    def sample(self, n: int, *, lam: float = 1.0, grid: TimeGrid | None = None,
               condition: Tensor | None = None, guidance: float | None = None) -> Tensor:
        """``n`` samples ``(n, *state)`` (no autograd) by the reverse family of noise scale
        ``lam`` on ``grid`` (default: the model's own sampling grid); ``condition``: ``(n,)``
        labels or ``(n, k)`` vectors, or one for all (a label ``()``, a vector ``(k,)``)."""

    @abstractmethod
    def log_likelihood(self, x: Tensor, *, condition: Tensor | None = None,
                       guidance: float | None = None, **ode_kwargs: Any) -> Tensor:
        """Exact :math:`\\log p(x)` (:math:`\\log p(x \\mid y)` with a condition) per sample,
        ``(B,)``, nats, through the model's ODE."""

    @abstractmethod
    def nelbo(self, x: Tensor, *, condition: Tensor | None = None,
              guidance: float | None = None) -> Tensor:
        """Per-sample bound (see :attr:`nelbo_kind`), ``(B,)``, nats."""

    def _conditions(self, condition: Tensor | None, guidance: float | None,
                    n: int | None = None) -> dict[str, Any]:
        """The ``condition=`` and ``guidance=`` of a call (nothing without a condition; one
        condition repeated ``n`` times where ``n`` is given)."""
        if condition is None:
            if guidance is not None and float(guidance) != self.guidance:
                raise ValueError(f"guidance={guidance} needs a condition (condition=...)")
            return {}
        if n is not None and isinstance(condition, Tensor) and (
                condition.dim() == int(condition.is_floating_point())):
            condition = condition.expand((n,) + tuple(condition.shape))
        return {"condition": condition,
                "guidance": self.guidance if guidance is None else float(guidance)}

    def distribution(self, law: str = "probability_flow", **kwargs: Any
                     ) -> ProbabilityFlowDistribution | SDESamplerDistribution:
        """The trained model as a pyro distribution over :math:`x_0` of the law named by ``law``
        (one of :data:`~sdeflow.distributions.MODEL_LAWS`): ``"probability_flow"``, whose samples
        and exact ``log_prob`` agree (:class:`~sdeflow.distributions.ProbabilityFlowDistribution`),
        or ``"sde_sampler"``, the law of :meth:`sample`'s output
        (:class:`~sdeflow.distributions.SDESamplerDistribution`); ``kwargs`` go to the class."""
        raise NotImplementedError(f"{type(self).__name__} does not define distribution(); "
                                  f"the laws are {MODEL_LAWS}")

    @property
    def state_shape(self) -> tuple[int, ...]:
        return tuple(self.prior().event_shape)

    def plot(self, path: str | Path, *, n: int | None = None, data: Tensor | None = None,
             title: str | None = None) -> None:
        """Write a picture of ``n`` samples to ``path``: a scatter plot beside ``data`` for 2D
        states (default 2000 points), an image grid for ``(C, H, W)`` states (default 64
        images); the trainer's periodic plot hook."""
        from sdeflow import plotting  # matplotlib only when plotting

        n = n or (64 if len(self.state_shape) == 3 else 2000)
        samples = self.sample(n).float().cpu()
        if len(self.state_shape) == 1 and self.state_shape[0] == 2:
            plotting.plot_samples_2d(samples, path, data=data, title=title)
        elif len(self.state_shape) == 3:
            plotting.save_image_grid(samples, path, nrow=int(math.sqrt(n)) or 1)
        else:
            raise ValueError(f"plot supports 2D points and (C, H, W) images, got state shape "
                             f"{self.state_shape}")

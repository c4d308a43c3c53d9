r"""What every objective returns: a terms object with the scalar ``loss`` to minimize and the
per-sample values it is the mean of (plus, per objective, where the loss lives)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from torch import Tensor

__all__ = ["ObjectiveTerms", "RegressionTerms"]


@dataclass
class ObjectiveTerms(ABC):
    r"""Base of the objectives' results.

    Attributes:
        loss: The scalar to minimize: the mean of :attr:`per_sample` over the batch.
    """

    loss: Tensor

    @property
    @abstractmethod
    def per_sample(self) -> Tensor:
        """The per-sample values ``(B,)`` whose mean is :attr:`loss`."""


@dataclass
class RegressionTerms(ObjectiveTerms):
    r"""The terms of a regression at random times (score matching, path matching).

    Attributes:
        loss: Mean of :attr:`values`.
        values: The weighted squared error per sample, ``(B,)``, in the order of the data.
        t: The times drawn, ``(B,)``.
    """

    values: Tensor
    t: Tensor

    @property
    def per_sample(self) -> Tensor:
        """:attr:`values`."""
        return self.values

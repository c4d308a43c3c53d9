r"""Conditional networks, called ``net(x, t, condition)``: a learned embedding of the condition
added to the hidden features (see :mod:`sdeflow.conditioning` for how a condition reaches them).

:class:`ConditionEmbedding` maps a condition to ``features`` numbers per sample:

- class labels :math:`y \in \{0, \dots, K-1\}` (integers, ``(B,)``): a learned table
  :math:`E \in \mathbb{R}^{(K+1) \times F}`, whose extra row :math:`E_K` is the *null* class, the
  "no condition" that classifier-free guidance trains with (``p_uncond``) and samples from;
- vectors :math:`c \in \mathbb{R}^k` (floating, ``(B, k)``): a linear map :math:`W c` without
  bias, whose null condition is :math:`c = 0` (it adds nothing). Where a zero vector is a
  meaningful condition, append a column that is 1 for real conditions.

Each network declares ``conditional = True`` and offers ``null_condition(condition)``; called
without a condition (``net(x, t)``) it is the unconditional model, the null condition.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .mlp import FourierMLP, TimeMLP
from .time import _check_input, _check_positive_int, time_batch

__all__ = ["ConditionEmbedding", "ConditionalFourierMLP", "ConditionalTimeMLP"]


class ConditionEmbedding(nn.Module):
    r"""A condition as ``features`` numbers per sample: a learned row per class (plus the null
    class ``num_classes``), or a linear map of a vector (null: the zero vector).

    Arguments:
        features: The number :math:`F` of features.
        num_classes: :math:`K`, for integer class labels ``(B,)`` in ``[0, K)``.
        condition_dim: :math:`k`, for vectors ``(B, k)``. Exactly one of the two.

    Example:
        >>> import torch
        >>> embed = ConditionEmbedding(4, num_classes=2)
        >>> embed(torch.tensor([0, 1]), 2).shape, embed.null_condition(torch.tensor([0, 1]))
        (torch.Size([2, 4]), tensor([2, 2]))
    """

    def __init__(self, features: int, *, num_classes: int | None = None,
                 condition_dim: int | None = None) -> None:
        super().__init__()
        _check_positive_int("features", features)
        if (num_classes is None) == (condition_dim is None):
            raise ValueError(f"give exactly one of num_classes (class labels) and condition_dim "
                             f"(vectors), got num_classes={num_classes!r}, "
                             f"condition_dim={condition_dim!r}")
        self.num_classes, self.condition_dim = num_classes, condition_dim
        if num_classes is not None:
            _check_positive_int("num_classes", num_classes)
            self.table: nn.Module = nn.Embedding(num_classes + 1, features)  # row K: null
        else:
            _check_positive_int("condition_dim", condition_dim)
            self.table = nn.Linear(condition_dim, features, bias=False)

    @property
    def labels(self) -> bool:
        """Whether the condition is a class label (else a vector)."""
        return self.num_classes is not None

    def null_condition(self, condition: Tensor) -> Tensor:
        """The null condition shaped like ``condition``: the null class ``num_classes``, or the
        zero vector."""
        if self.labels:
            return torch.full_like(condition, self.num_classes)
        return torch.zeros_like(condition)

    def _null(self, batch: int, like: Tensor) -> Tensor:
        if self.labels:
            return torch.full((batch,), self.num_classes, dtype=torch.long, device=like.device)
        return torch.zeros(batch, self.condition_dim, dtype=like.dtype, device=like.device)

    def forward(self, condition: Tensor | None, batch: int) -> Tensor:
        """``(batch, features)``; ``condition=None`` embeds the null condition."""
        weight = self.table.weight
        if condition is None:
            condition = self._null(batch, weight)
        if not isinstance(condition, Tensor) or condition.shape[:1] != (batch,):
            got = tuple(condition.shape) if isinstance(condition, Tensor) else \
                type(condition).__name__
            raise ValueError(f"condition must have one entry per sample, batch {batch}, got "
                             f"{got}")
        if condition.device != weight.device:
            raise ValueError(f"condition is on {condition.device} but the network is on "
                             f"{weight.device}")
        if self.labels:
            if condition.is_floating_point() or condition.dim() != 1:
                raise TypeError(f"this network takes class labels, integers of shape (B,), got "
                                f"dtype {condition.dtype}, shape {tuple(condition.shape)}")
            # the range check reads the labels: on a GPU it would sync every call, and there
            # the embedding's own index check stops a bad label
            if condition.numel() and condition.device.type == "cpu" and not (
                    0 <= int(condition.min()) and int(condition.max()) <= self.num_classes):
                raise ValueError(f"class labels must be in [0, {self.num_classes}) (and "
                                 f"{self.num_classes}, the null class), got "
                                 f"[{int(condition.min())}, {int(condition.max())}]")
            return self.table(condition)
        if not condition.is_floating_point() or condition.shape[1:] != (self.condition_dim,):
            raise TypeError(f"this network takes vectors (B, {self.condition_dim}) of floats, got "
                            f"dtype {condition.dtype}, shape {tuple(condition.shape)}")
        if not bool(torch.isfinite(condition).all()):
            raise ValueError("condition must be finite, got NaN or inf")
        return self.table(condition.to(weight.dtype))

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}" if self.labels
                else f"condition_dim={self.condition_dim}")


def _check_state(x: Tensor, dim: int, weight: Tensor, name: str) -> None:
    """``x`` must be ``(batch, *state)`` with ``dim`` elements per state, finite, on ``weight``'s
    device and dtype."""
    if x.dim() < 2 or math.prod(x.shape[1:]) != dim:
        raise ValueError(f"x must have shape (batch, *state) with {dim} elements per state, got "
                         f"{tuple(x.shape)}")
    _check_input(x, weight, name)


class _NullCondition:
    """``null_condition`` of a network holding a :class:`ConditionEmbedding`."""

    condition_embedding: ConditionEmbedding

    def null_condition(self, condition: Tensor) -> Tensor:
        """See :meth:`ConditionEmbedding.null_condition`."""
        return self.condition_embedding.null_condition(condition)


class ConditionalFourierMLP(_NullCondition, FourierMLP):
    r""":class:`~sdeflow.nets.FourierMLP` with a condition embedding added to the time features:

    .. math:: h_0 = \sigma(W_x x + b_x + \mathrm{MLP}_t(\phi(t)) + E(y)),

    the rest as :class:`~sdeflow.nets.FourierMLP` (same arguments, and ``num_classes`` or
    ``condition_dim`` for :class:`ConditionEmbedding`). Called ``net(x, t, condition)``;
    ``net(x, t)`` is the unconditional model (the null condition).

    Example:
        >>> import torch
        >>> net = ConditionalFourierMLP(2, 16, 1, num_classes=2)
        >>> x = torch.randn(3, 2)
        >>> net(x, torch.tensor(0.1), torch.tensor([0, 1, 0])).shape, net.conditional
        (torch.Size([3, 2]), True)
        >>> torch.equal(net(x, 0.1), net(x, 0.1, net.null_condition(torch.zeros(3).long())))
        True
    """

    conditional = True

    def __init__(self, dim: int, width: int = 128, depth: int = 3, n_freqs: int | None = None,
                 activation: str = "gelu", time_features: str = "fourier",
                 zero_output: bool = False, *, num_classes: int | None = None,
                 condition_dim: int | None = None) -> None:
        super().__init__(dim, width, depth, n_freqs, activation, time_features, zero_output)
        self.condition_embedding = ConditionEmbedding(width, num_classes=num_classes,
                                                      condition_dim=condition_dim)

    def forward(self, x: Tensor, t: Tensor | float, condition: Tensor | None = None) -> Tensor:
        """``x`` ``(B, *state)``, ``t`` of shape ``()``, ``(1,)`` or ``(B,)``, ``condition``
        ``(B,)`` labels or ``(B, k)`` vectors (``None``: the null condition)."""
        _check_state(x, self.dim, self.input.weight, "ConditionalFourierMLP")
        b = x.shape[0]
        t = time_batch(t, b, dtype=x.dtype, device=x.device)
        bias = self.time_mlp(self.time_features(t)) + self.condition_embedding(condition, b)
        h = torch.addmm(self.input.bias, x.reshape(b, self.dim), self.input.weight.t()) + bias
        return self.output(self.hidden(h)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, conditional"


class ConditionalTimeMLP(_NullCondition, TimeMLP):
    r""":class:`~sdeflow.nets.TimeMLP` with a condition embedding added to its first layer:
    :math:`h_1 = \sigma(W_1 [x, t] + b_1 + E(y))`, the rest as :class:`~sdeflow.nets.TimeMLP`
    (same arguments, and ``num_classes`` or ``condition_dim``). Called ``net(x, t,
    condition)``; ``net(x, t)`` is the unconditional model (the null condition).

    Example:
        >>> import torch
        >>> net = ConditionalTimeMLP(2, 16, 2, condition_dim=3)
        >>> net(torch.randn(4, 2), torch.rand(4), torch.randn(4, 3)).shape
        torch.Size([4, 2])
    """

    conditional = True

    def __init__(self, dim: int, width: int = 512, depth: int = 4, activation: str = "silu", *,
                 num_classes: int | None = None, condition_dim: int | None = None) -> None:
        super().__init__(dim, width, depth, activation)
        self.condition_embedding = ConditionEmbedding(width, num_classes=num_classes,
                                                      condition_dim=condition_dim)

    def forward(self, x: Tensor, t: Tensor | float, condition: Tensor | None = None) -> Tensor:
        """As :meth:`TimeMLP.forward <sdeflow.nets.TimeMLP.forward>`, with ``condition``
        ``(B,)`` labels or ``(B, k)`` vectors (``None``: the null condition)."""
        _check_state(x, self.dim, self.main[0].weight, "ConditionalTimeMLP")
        b = x.shape[0]
        t = time_batch(t, b, dtype=x.dtype, device=x.device)
        h = torch.cat([x.reshape(b, self.dim), t.expand(b)[:, None]], dim=1)
        h = self.main[0](h) + self.condition_embedding(condition, b)
        return self.main[1:](h).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, conditional"

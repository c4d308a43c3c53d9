r"""The Fourier-feature MLP of DiffFlow's 2D experiments (drift and score networks), and the plain
MLP with the time as an extra input of flow matching's 2D examples."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .time import (
    FourierTimeFeatures,
    GaussianFourierFeatures,
    _check_input,
    _check_positive_int,
    time_batch,
)

__all__ = ["FourierMLP", "TimeMLP", "ACTIVATIONS"]

#: Activation names accepted by the networks of :mod:`sdeflow.nets`.
ACTIVATIONS: dict[str, type[nn.Module]] = {
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "relu": nn.ReLU,
    "elu": nn.ELU,
    "tanh": nn.Tanh,
    "softplus": nn.Softplus,
}


def _activation(name: str) -> type[nn.Module]:
    if not isinstance(name, str) or name.lower() not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name.lower()]


class FourierMLP(nn.Module):
    r"""An MLP of the state plus an MLP of Fourier time features, summed after the first layer.

    For a state :math:`x \in \mathbb{R}^d` (flattened) and time features :math:`\phi(t)`
    (:class:`~sdeflow.nets.FourierTimeFeatures` by default),

    .. math:: h_0 = \sigma(W_x x + b_x + \mathrm{MLP}_t(\phi(t))), \quad
        h_{l} = \sigma(W_l h_{l-1} + b_l)\ (l = 1..L), \quad \mathrm{out} = W_o h_L + b_o

    where :math:`\mathrm{MLP}_t` is ``Linear(2K, width), σ, Linear(width, width)``. This is the
    first layer applied to the concatenation :math:`[x, \mathrm{MLP}_t(\phi(t))]`, split into an
    ``x`` part and a ``t`` part: when ``t`` is shared by the batch (shape ``()`` or ``(1,)``) the
    ``t`` part is computed once, on a ``(1, F)`` tensor, and broadcast as a bias.

    With ``width=128, depth=3`` and ``d=2`` (the paper's 2D configuration, as in the official
    code) the network has 99,714 parameters.

    Arguments:
        dim: The number ``d`` of elements of one state; inputs are ``(B, *state)`` with
            ``prod(state) = d`` and the output has the input's shape.
        width: The hidden width.
        depth: The number ``L`` of hidden ``width x width`` layers.
        n_freqs: The number ``K`` of time frequencies (default: ``width``).
        activation: One of :data:`ACTIVATIONS` (smooth ones suit exact likelihoods).
        time_features: ``"fourier"`` (fixed linearly spaced frequencies, learnable phases) or
            ``"gaussian"`` (seeded random frequencies).
        zero_output: Whether the output layer starts at zero (the network then starts as the
            zero function: a drift-free process or a zero score).

    References:
        | Diffusion Normalizing Flow (Zhang & Chen, 2021)
        | https://arxiv.org/abs/2110.07579

    Example:
        >>> import torch
        >>> net = FourierMLP(2, width=16, depth=2)
        >>> x = torch.randn(5, 2)
        >>> net(x, torch.tensor(0.01)).shape
        torch.Size([5, 2])
        >>> net(x, torch.rand(5)).shape
        torch.Size([5, 2])
    """

    def __init__(
        self,
        dim: int,
        width: int = 128,
        depth: int = 3,
        n_freqs: int | None = None,
        activation: str = "gelu",
        time_features: str = "fourier",
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("width", width)
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 0:
            raise ValueError(f"depth must be a non-negative int, got {depth!r}")
        n_freqs = width if n_freqs is None else n_freqs
        act = _activation(activation)
        self.dim = dim
        if time_features == "fourier":
            self.time_features = FourierTimeFeatures(n_freqs)
        elif time_features == "gaussian":
            self.time_features = GaussianFourierFeatures(n_freqs)
        else:
            raise ValueError(
                f"time_features must be 'fourier' or 'gaussian', got {time_features!r}"
            )
        self.time_mlp = nn.Sequential(
            nn.Linear(self.time_features.out_features, width), act(), nn.Linear(width, width)
        )
        self.input = nn.Linear(dim, width)
        layers: list[nn.Module] = [act()]
        for _ in range(depth):
            layers += [nn.Linear(width, width), act()]
        self.hidden = nn.Sequential(*layers)
        self.output = nn.Linear(width, dim)
        if zero_output:
            nn.init.zeros_(self.output.weight)
            nn.init.zeros_(self.output.bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Evaluates the network.

        Arguments:
            x: The state, of shape ``(B, *state)`` with ``prod(state) = dim``.
            t: The time, of shape ``()``, ``(1,)`` (shared) or ``(B,)``.

        Returns:
            A tensor of ``x``'s shape.
        """
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x must have shape (batch, *state) with {self.dim} elements per state, "
                f"got {tuple(x.shape)}"
            )
        _check_input(x, self.input.weight, "FourierMLP")
        t = time_batch(t, x.shape[0], dtype=x.dtype, device=x.device)
        bias = self.time_mlp(self.time_features(t))  # (1, width) or (B, width)
        x_flat = x.reshape(x.shape[0], self.dim)
        # x W^T with W^T made contiguous (a (d, width) copy): autograd then computes both of
        # this layer's backward products, x^T g and g W, in the layouts that BLAS runs fast for
        # d = 2 (3x faster than the transposed-view layouts nn.Linear gets), and with a shared
        # time one matmul adds both biases, with no extra pass over the (B, width) output.
        weight_t = self.input.weight.t().contiguous()
        if bias.shape[0] == 1:
            h = torch.addmm(bias + self.input.bias, x_flat, weight_t)
        else:
            h = torch.addmm(self.input.bias, x_flat, weight_t) + bias
        return self.output(self.hidden(h)).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class TimeMLP(nn.Module):
    r"""An MLP of the state with the time appended as one more input:
    :math:`h_1 = \sigma(W_1 [x, t] + b_1)`, :math:`h_l = \sigma(W_l h_{l-1} + b_l)`
    (:math:`l = 2..L`), :math:`\mathrm{out} = W_o h_L + b_o`: ``depth`` = :math:`L` activated
    layers of ``width``. With ``width=512, depth=4`` and SiLU (Swish) it is the velocity network
    of Meta's ``flow_matching`` 2D example (``examples/2d_flow_matching.ipynb``, class ``MLP``).

    Arguments:
        dim: The number ``d`` of elements of one state (inputs ``(B, *state)``, flattened).
        width: The hidden width.
        depth: The number ``L >= 1`` of activated layers.
        activation: One of :data:`ACTIVATIONS` (``"silu"``, the same as ``"swish"``).

    References:
        Flow Matching Guide and Code (Lipman et al., 2024), https://arxiv.org/abs/2412.06264

    Example:
        >>> import torch
        >>> net = TimeMLP(2, width=16, depth=2)
        >>> net(torch.randn(5, 2), torch.rand(5)).shape, net(torch.randn(5, 2), 0.5).shape
        (torch.Size([5, 2]), torch.Size([5, 2]))
        >>> sum(p.numel() for p in TimeMLP(2, 512, 4).parameters())  # the 2D example's MLP
        791042
    """

    def __init__(self, dim: int, width: int = 512, depth: int = 4,
                 activation: str = "silu") -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        _check_positive_int("width", width)
        _check_positive_int("depth", depth)
        act = _activation(activation)
        self.dim = dim
        layers: list[nn.Module] = [nn.Linear(dim + 1, width), act()]
        for _ in range(depth - 1):
            layers += [nn.Linear(width, width), act()]
        self.main = nn.Sequential(*layers, nn.Linear(width, dim))

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        """``x`` ``(B, *state)`` and ``t`` of shape ``()``, ``(1,)`` or ``(B,)``; returns ``x``'s
        shape."""
        if x.dim() < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(f"x must have shape (batch, *state) with {self.dim} elements per "
                             f"state, got {tuple(x.shape)}")
        _check_input(x, self.main[0].weight, "TimeMLP")
        t = time_batch(t, x.shape[0], dtype=x.dtype, device=x.device)
        h = torch.cat([x.reshape(x.shape[0], self.dim), t.expand(x.shape[0])[:, None]], dim=1)
        return self.main(h).reshape(x.shape)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"

r"""Time features and time embeddings for networks called as ``net(x, t)``.

Every network in :mod:`sdeflow.nets` is called with a state ``x`` of shape ``(B, *state)`` and a
time ``t`` that is either shared by the whole batch (shape ``()`` or ``(1,)``: the common case in
an SDE loop, where every sample sits at the same grid time) or given per sample (shape ``(B,)``).
:func:`time_batch` validates ``t`` and returns it as ``(1,)`` or ``(B,)``; the embedding modules
below map such a vector of ``T`` times to features of shape ``(T, F)``. With a shared time,
``T = 1``: the features, and everything computed from them alone, are evaluated once per call and
broadcast over the batch, never per sample.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

__all__ = [
    "time_batch",
    "FourierTimeFeatures",
    "GaussianFourierFeatures",
    "SinusoidalTimeEmbedding",
]


def time_batch(
    t: Tensor | float,
    batch_size: int,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    r"""Validates a network's time argument and returns it as a vector of shape ``(1,)`` or
    ``(B,)``.

    Arguments:
        t: A number, or a tensor of shape ``()``, ``(1,)`` (one time for the whole batch) or
            ``(B,)`` (one time per sample).
        batch_size: The batch size ``B`` of the state the network is applied to.
        dtype: The floating dtype of the result (default: ``t``'s own, or the default dtype for
            a number).
        device: The device of the result (default: ``t``'s own).

    Returns:
        ``t`` of shape ``(1,)`` when shared by the batch, else ``(B,)``.

    Example:
        >>> time_batch(0.5, 4)
        tensor([0.5000])
        >>> time_batch(torch.zeros(4), 4).shape
        torch.Size([4])
    """
    if isinstance(t, bool) or not isinstance(t, (Tensor, int, float)):
        raise TypeError(f"t must be a tensor or a number, got {type(t).__name__}")
    if not isinstance(t, Tensor):
        t = torch.tensor(float(t), dtype=dtype or torch.get_default_dtype(), device=device)
    if t.dim() == 0:
        t = t.reshape(1)
    elif t.dim() != 1 or t.shape[0] not in (1, batch_size):
        raise ValueError(
            f"t must have shape (), (1,) or (batch,)=({batch_size},), got {tuple(t.shape)}"
        )
    if not (t.is_floating_point() or dtype is not None):
        t = t.to(torch.get_default_dtype())
    return t.to(dtype=dtype, device=device)


class FourierTimeFeatures(nn.Module):
    r"""Fourier features of ``t`` with fixed frequencies and learnable phases (DiffFlow's 2D net).

    .. math:: \phi(t) = [\sin(\omega_k t + \varphi_k), \cos(\omega_k t + \varphi_k)]_{k=1}^{K},
        \qquad \omega_k = \text{linspace}(\omega_{\min}, \omega_{\max}, K)

    The frequencies are in radians per unit of ``t``; the defaults ``(0.1, 100)`` are those of
    the official DiffFlow code, whose 2D grid spans ``t`` in ``[1e-3, 0.05]``.

    Arguments:
        n_freqs: The number ``K`` of frequencies; the output has ``2K`` features.
        min_freq: The lowest frequency :math:`\omega_1`.
        max_freq: The highest frequency :math:`\omega_K`.
        learnable_phase: Whether the phases :math:`\varphi_k` (initialized from
            :math:`\mathcal{N}(0, 1)`) are parameters; otherwise they are zero.

    Example:
        >>> phi = FourierTimeFeatures(8)
        >>> phi(torch.tensor([0.0, 0.5])).shape
        torch.Size([2, 16])
    """

    def __init__(
        self,
        n_freqs: int = 128,
        min_freq: float = 0.1,
        max_freq: float = 100.0,
        learnable_phase: bool = True,
    ) -> None:
        super().__init__()
        _check_positive_int("n_freqs", n_freqs)
        if not 0 <= min_freq <= max_freq:
            raise ValueError(
                f"min_freq and max_freq must satisfy 0 <= min_freq <= max_freq, "
                f"got {min_freq} and {max_freq}"
            )
        self.n_freqs = n_freqs
        self.out_features = 2 * n_freqs
        self.min_freq, self.max_freq = float(min_freq), float(max_freq)
        if learnable_phase:
            self.phase = nn.Parameter(torch.randn(n_freqs))
        else:
            self.register_buffer("phase", torch.zeros(n_freqs))

    def forward(self, t: Tensor) -> Tensor:
        """Maps times of shape ``(T,)`` to features of shape ``(T, 2K)``."""
        # the frequencies are rebuilt in t's dtype: exact in float64, nothing to save
        freqs = torch.linspace(
            self.min_freq, self.max_freq, self.n_freqs, dtype=t.dtype, device=t.device
        )
        arg = t[:, None] * freqs + self.phase
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class GaussianFourierFeatures(nn.Module):
    r"""Random Fourier features of ``t`` with a fixed, seeded frequency buffer.

    .. math:: \phi(t) = [\sin(2\pi w_k t), \cos(2\pi w_k t)]_{k=1}^{K},
        \qquad w_k \sim \mathcal{N}(0, \text{scale}^2)

    Arguments:
        n_freqs: The number ``K`` of frequencies; the output has ``2K`` features.
        scale: The standard deviation of the frequencies.
        seed: The seed of the frequencies (drawn once, stored as a buffer).

    References:
        | Fourier Features Let Networks Learn High Frequency Functions in Low Dimensional Domains
        | (Tancik et al., 2020)
        | https://arxiv.org/abs/2006.10739

    Example:
        >>> phi = GaussianFourierFeatures(8, scale=16.0, seed=0)
        >>> phi(torch.tensor([0.1])).shape
        torch.Size([1, 16])
    """

    def __init__(self, n_freqs: int = 128, scale: float = 16.0, seed: int = 0) -> None:
        super().__init__()
        _check_positive_int("n_freqs", n_freqs)
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.n_freqs = n_freqs
        self.out_features = 2 * n_freqs
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("freqs", scale * torch.randn(n_freqs, generator=generator))

    def forward(self, t: Tensor) -> Tensor:
        """Maps times of shape ``(T,)`` to features of shape ``(T, 2K)``."""
        arg = (2 * math.pi) * t[:, None] * self.freqs
        return torch.cat([arg.sin(), arg.cos()], dim=-1)


class SinusoidalTimeEmbedding(nn.Module):
    r"""The sinusoidal embedding of DDPM (after the Transformer's position encoding).

    .. math:: e(t) = [\sin(s t\, \omega_k), \cos(s t\, \omega_k)]_{k=0}^{D/2-1},
        \qquad \omega_k = P^{-k / (D/2 - 1)}

    with ``P = max_period`` and ``s = time_scale``; an odd ``D`` is padded with one zero. DDPM
    embeds integer step indices ``0..999``: for a continuous ``t`` in ``[0, 1]``,
    ``time_scale=1000`` gives the same range of phases.

    Arguments:
        dim: The embedding size ``D`` (at least 4).
        max_period: The longest period ``P``.
        time_scale: The factor ``s`` applied to ``t`` before embedding.

    References:
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239

    Example:
        >>> emb = SinusoidalTimeEmbedding(6)
        >>> emb(torch.tensor([0.0, 1.0])).shape
        torch.Size([2, 6])
    """

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0) -> None:
        super().__init__()
        _check_positive_int("dim", dim)
        if dim < 4:
            raise ValueError(f"dim must be at least 4, got {dim}")
        if not max_period > 1:
            raise ValueError(f"max_period must be greater than 1, got {max_period}")
        self.dim = dim
        self.out_features = dim
        self.time_scale = float(time_scale)
        self.max_period = float(max_period)

    def forward(self, t: Tensor) -> Tensor:
        """Maps times of shape ``(T,)`` to embeddings of shape ``(T, D)``."""
        half = self.dim // 2
        k = torch.arange(half, dtype=t.dtype, device=t.device)
        freqs = torch.exp(-math.log(self.max_period) / (half - 1) * k)
        arg = (self.time_scale * t)[:, None] * freqs
        emb = torch.cat([arg.sin(), arg.cos()], dim=-1)
        if self.dim % 2:
            emb = nn.functional.pad(emb, (0, 1))
        return emb


def _check_input(x: Tensor, weight: Tensor, net: str) -> None:
    """``x`` must share the device and (outside autocast) the dtype of the net's weights: say so
    naming ``x``, rather than fail inside a matmul."""
    if x.device != weight.device:
        raise ValueError(f"x is on {x.device} but the {net}'s parameters are on {weight.device}; "
                         f"move the net with .to({x.device!s})")
    if x.dtype != weight.dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"x has dtype {x.dtype} but the {net}'s parameters have dtype "
                        f"{weight.dtype}; cast the net with .to({x.dtype})")


def _check_positive_int(name: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be positive, got {value}")

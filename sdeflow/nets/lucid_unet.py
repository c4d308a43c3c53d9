r"""The "lucidrains-style" U-Net of DiffFlow's MNIST and CIFAR-10 "A" recipes: Mish residual
blocks with GroupNorm, linear attention behind a ReZero gate at every level, sinusoidal
embedding of the raw time ``t``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from .time import SinusoidalTimeEmbedding, _check_input, _check_positive_int, time_batch
from .unet import _memory_format

__all__ = ["LucidUNet", "LucidResBlock", "LinearAttention", "ConvNormMish"]


class ConvNormMish(nn.Module):
    r"""A 3x3 convolution, GroupNorm and Mish.

    .. math:: \mathrm{out} = \mathrm{Mish}(\mathrm{GN}(\mathrm{conv}(x))),
        \qquad \mathrm{Mish}(u) = u \tanh(\mathrm{softplus}(u))

    Arguments:
        in_channels: Input channels.
        out_channels: Output channels (divisible by ``groups``).
        groups: The GroupNorm groups.
    """

    def __init__(self, in_channels: int, out_channels: int, groups: int = 8) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm = nn.GroupNorm(groups, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.mish(self.norm(self.conv(x)))


class LucidResBlock(nn.Module):
    r"""A residual block of two :class:`ConvNormMish` with the time embedding added between
    them.

    .. math:: h = \mathrm{block}_1(x) + W\,\mathrm{Mish}(e_t), \qquad
        \mathrm{out} = \mathrm{block}_2(h) + \mathrm{skip}(x)

    ``e_t`` of shape ``(1, E)`` (time shared by the batch) or ``(B, E)``; the skip is a 1x1
    convolution when the channel count changes.

    Arguments:
        in_channels: Input channels.
        out_channels: Output channels (divisible by ``groups``).
        temb_channels: The size ``E`` of the time embedding.
        groups: The GroupNorm groups.
    """

    def __init__(
        self, in_channels: int, out_channels: int, temb_channels: int, groups: int = 8
    ) -> None:
        super().__init__()
        self.block1 = ConvNormMish(in_channels, out_channels, groups)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.block2 = ConvNormMish(out_channels, out_channels, groups)
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.block1(x) + self.temb_proj(nn.functional.mish(temb))[:, :, None, None]
        return self.block2(h) + self.skip(x)


class LinearAttention(nn.Module):
    r"""Multi-head linear attention over the pixels (keys normalized over the pixels, queries
    not normalized, no scaling).

    With ``Q, K, V`` of shape ``(d, n)`` per head (``d = dim_head`` features, ``n = HW`` pixels)
    from a bias-free 1x1 convolution of ``x``,

    .. math:: \bar K_{dm} = \frac{e^{K_{dm}}}{\sum_{m'} e^{K_{dm'}}}, \qquad
        C = \bar K V^\top \in \mathbb{R}^{d \times d}, \qquad
        O = C^\top Q, \ \text{i.e.}\ O_{en} = \sum_m V_{em} \sum_d \bar K_{dm} Q_{dn},

    the heads' ``O`` are stacked and mapped back to ``x``'s channels by a 1x1 convolution with
    bias. The ``d x d`` context ``C`` makes the cost linear in the number of pixels. The output
    has ``x``'s memory format (contiguous or ``channels_last``).

    Arguments:
        channels: The channel count of ``x``.
        heads: The number of heads.
        dim_head: The features ``d`` per head.

    References:
        | Efficient Attention: Attention with Linear Complexities (Shen et al., 2021)
        | https://arxiv.org/abs/1812.01243

    Example:
        >>> attn = LinearAttention(8, heads=2, dim_head=4)
        >>> attn(torch.randn(2, 8, 4, 4)).shape
        torch.Size([2, 8, 4, 4])
    """

    def __init__(self, channels: int, heads: int = 4, dim_head: int = 32) -> None:
        super().__init__()
        _check_positive_int("channels", channels)
        _check_positive_int("heads", heads)
        _check_positive_int("dim_head", dim_head)
        self.heads = heads
        hidden = heads * dim_head
        self.to_qkv = nn.Conv2d(channels, 3 * hidden, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height = x.shape[2]
        q, k, v = rearrange(
            self.to_qkv(x), "b (n h d) x y -> n b h d (x y)", n=3, h=self.heads
        ).unbind(0)
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q)
        out = rearrange(out, "b h e (x y) -> b (h e) x y", x=height)
        return self.to_out(out.contiguous(memory_format=_memory_format(x)))


class _ReZero(nn.Module):
    r"""``x + g f(x)`` with a scalar gain ``g`` that starts at zero (the block starts as the
    identity)."""

    def __init__(self, fn: nn.Module) -> None:
        super().__init__()
        self.fn = fn
        self.gain = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.gain * self.fn(x)


class _Level(nn.Module):
    """Two residual blocks, gated linear attention, then a resampling (or none)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        groups: int,
        heads: int,
        dim_head: int,
        resample: nn.Module,
    ) -> None:
        super().__init__()
        self.res1 = LucidResBlock(in_channels, out_channels, temb_channels, groups)
        self.res2 = LucidResBlock(out_channels, out_channels, temb_channels, groups)
        self.attn = _ReZero(LinearAttention(out_channels, heads, dim_head))
        self.resample = resample

    def features(self, h: Tensor, temb: Tensor) -> Tensor:
        """The level's output before the resampling (what the skip connection carries)."""
        return self.attn(self.res2(self.res1(h, temb), temb))


class LucidUNet(nn.Module):
    r"""The U-Net of DiffFlow's MNIST and CIFAR-10 "A" recipes (after Phil Wang's
    ``denoising-diffusion-pytorch``): residual blocks of convolution, GroupNorm and Mish, with
    the time embedding added inside each block, and ReZero-gated :class:`LinearAttention` at
    every level and in the middle; no dropout.

    With ``dims = (in_channels, dim m_1, ..., dim m_L)`` for ``dim_mults = (m_1, ..., m_L)``,
    down level ``i`` maps ``dims[i] -> dims[i+1]`` (two residual blocks, attention) and halves
    the image, except the last; the middle is a residual block, attention, a residual block;
    up level ``i = L-1, ..., 1`` concatenates down level ``i``'s output, maps
    ``2 dims[i+1] -> dims[i]`` and doubles the image by a 4x4 transposed convolution. As in the
    official network, the first down level's output feeds no skip connection and there is no
    input convolution (the first residual block sees the image). The head is
    :class:`ConvNormMish` and a 1x1 convolution.

    Time: the embedding is the sinusoidal embedding of ``time_scale * t``
    (:class:`~sdeflow.nets.SinusoidalTimeEmbedding`, ``dim`` features) followed by
    ``Linear(dim, 4 dim), Mish, Linear(4 dim, dim)``. The official networks embed the raw
    ``t`` (``time_scale=1``, the default). With a time shared by the batch (shape ``()`` or
    ``(1,)``) the embedding and every projection of it are computed once and broadcast.

    Sizes (official configurations): CIFAR-10 "A" drift ``LucidUNet(3, dim=128)``,
    117,180,299 parameters; its score net ``LucidUNet(3, dim=64)``, 29,803,467; MNIST
    ``LucidUNet(1, dim=64)``, 29,802,057. The height and width must be divisible by
    ``2 ** (len(dim_mults) - 1)`` (32x32 images for the official configurations).

    The net computes the same function for contiguous and ``channels_last`` inputs and weights,
    runs under autocast (bf16, fp16) and under :func:`torch.compile` (no branching on tensor
    values).

    Arguments:
        in_channels: The image channels ``C``.
        dim: The base channel count (also the time-embedding size; even, at least 4).
        dim_mults: Channel multipliers per level; the image is halved between levels.
        out_channels: Output channels (default: ``in_channels``).
        groups: The GroupNorm groups (the official networks use 8); ``dim`` times every
            multiplier must be divisible by it.
        attn_heads: Heads of the linear attention.
        attn_dim_head: Features per head of the linear attention.
        time_scale: The factor applied to ``t`` before the sinusoidal embedding.
        zero_output: Whether the last convolution starts at zero (the net starts as zero).

    References:
        | Diffusion Normalizing Flow (Zhang & Chen, 2021)
        | https://arxiv.org/abs/2110.07579
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239

    Example:
        >>> net = LucidUNet(1, dim=8, dim_mults=(1, 2), attn_dim_head=4)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> net(x, 0.05).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 3,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        out_channels: int | None = None,
        groups: int = 8,
        attn_heads: int = 4,
        attn_dim_head: int = 32,
        time_scale: float = 1.0,
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("dim", dim)
        _check_positive_int("groups", groups)
        _check_positive_int("attn_heads", attn_heads)
        _check_positive_int("attn_dim_head", attn_dim_head)
        if dim < 4 or dim % 2:
            raise ValueError(f"dim must be even and at least 4, got {dim}")
        dim_mults = tuple(dim_mults)
        if not dim_mults or not all(
            isinstance(m, int) and not isinstance(m, bool) and m >= 1 for m in dim_mults
        ):
            raise ValueError(
                f"dim_mults must be a non-empty sequence of positive ints, got {dim_mults}"
            )
        if any(dim * m % groups for m in dim_mults):
            raise ValueError(
                f"groups must divide dim * m for every m in dim_mults, got groups={groups}, "
                f"dim={dim}, dim_mults={dim_mults}"
            )
        out_channels = in_channels if out_channels is None else out_channels
        _check_positive_int("out_channels", out_channels)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim_mults = dim_mults

        self.time_embedding = SinusoidalTimeEmbedding(dim, time_scale=time_scale)
        self.time_mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.Mish(), nn.Linear(4 * dim, dim))

        dims = [in_channels, *(dim * m for m in dim_mults)]
        pairs = list(zip(dims[:-1], dims[1:]))
        attn = (attn_heads, attn_dim_head)

        self.down = nn.ModuleList()
        for i, (c_in, c_out) in enumerate(pairs):
            last = i == len(pairs) - 1
            downsample = nn.Identity() if last else nn.Conv2d(c_out, c_out, 3, 2, padding=1)
            self.down.append(_Level(c_in, c_out, dim, groups, *attn, downsample))

        c_mid = dims[-1]
        self.mid1 = LucidResBlock(c_mid, c_mid, dim, groups)
        self.mid_attn = _ReZero(LinearAttention(c_mid, *attn))
        self.mid2 = LucidResBlock(c_mid, c_mid, dim, groups)

        self.up = nn.ModuleList()
        for c_in, c_out in reversed(pairs[1:]):
            upsample = nn.ConvTranspose2d(c_in, c_in, 4, 2, padding=1)
            self.up.append(_Level(2 * c_out, c_in, dim, groups, *attn, upsample))

        self.head = ConvNormMish(dim, dim, groups)
        self.conv_out = nn.Conv2d(dim, out_channels, 1)
        if zero_output:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Evaluates the network.

        Arguments:
            x: Images of shape ``(B, in_channels, H, W)``, ``H`` and ``W`` divisible by
                ``2 ** (len(dim_mults) - 1)``.
            t: The time, of shape ``()``, ``(1,)`` (shared) or ``(B,)``.

        Returns:
            A tensor of shape ``(B, out_channels, H, W)``.
        """
        factor = 2 ** (len(self.dim_mults) - 1)
        if (
            x.dim() != 4
            or x.shape[1] != self.in_channels
            or x.shape[2] % factor
            or x.shape[3] % factor
        ):
            raise ValueError(
                f"x must have shape (batch, {self.in_channels}, H, W) with H and W divisible by "
                f"{factor}, got {tuple(x.shape)}"
            )
        _check_input(x, self.conv_out.weight, "LucidUNet")
        t = time_batch(t, x.shape[0], dtype=x.dtype, device=x.device)
        temb = self.time_mlp(self.time_embedding(t))  # (1, dim) or (B, dim)

        skips = []
        h = x
        for i, level in enumerate(self.down):
            h = level.features(h, temb)
            if i > 0:  # the first level's features feed no skip (official architecture)
                skips.append(h)
            h = level.resample(h)

        h = self.mid2(self.mid_attn(self.mid1(h, temb)), temb)

        for level in self.up:
            h = level.resample(level.features(torch.cat([h, skips.pop()], dim=1), temb))
        return self.conv_out(self.head(h))

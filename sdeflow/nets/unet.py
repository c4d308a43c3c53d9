r"""A DDPM-style U-Net for image states ``(B, C, H, W)``, sized by its arguments."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from einops import rearrange
from torch import Tensor, nn

from .time import SinusoidalTimeEmbedding, _check_input, _check_positive_int, time_batch

__all__ = ["UNet", "ResBlock", "AttnBlock"]


def _group_norm(channels: int, num_groups: int) -> nn.GroupNorm:
    # The most groups (up to num_groups) that divide the channels with at least two channels
    # each: 32 for the paper's widths. One channel per group would be instance norm, which
    # erases the per-channel time bias that ResBlock adds just before its second norm.
    groups = max(
        (g for g in range(1, num_groups + 1) if channels % g == 0 and channels // g >= 2),
        default=1,
    )
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ResBlock(nn.Module):
    r"""A residual block with time-embedding injection (DDPM).

    .. math:: h = \mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}(x))) + W\,\mathrm{SiLU}(e_t),

    .. math:: \mathrm{out} = \mathrm{skip}(x)
        + \mathrm{conv}_2(\mathrm{drop}(\mathrm{SiLU}(\mathrm{GN}(h))))

    ``e_t`` of shape ``(1, E)`` (time shared by the batch) or ``(B, E)``; the skip is a 1x1
    convolution when the channel count changes.

    Arguments:
        in_channels: Input channels.
        out_channels: Output channels.
        temb_channels: The size ``E`` of the time embedding.
        dropout: The dropout probability.
        num_groups: The most GroupNorm groups (fewer where needed to divide the channels with
            at least two channels per group).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        temb_channels: int,
        dropout: float = 0.0,
        num_groups: int = 32,
    ) -> None:
        super().__init__()
        self.norm1 = _group_norm(in_channels, num_groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.temb_proj = nn.Linear(temb_channels, out_channels)
        self.norm2 = _group_norm(out_channels, num_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        if in_channels != out_channels:
            self.skip = nn.Conv2d(in_channels, out_channels, 1)
        else:
            self.skip = nn.Identity()

    def forward(self, x: Tensor, temb: Tensor) -> Tensor:
        h = self.conv1(nn.functional.silu(self.norm1(x)))
        h = h + self.temb_proj(nn.functional.silu(temb))[:, :, None, None]
        h = self.conv2(self.dropout(nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


class AttnBlock(nn.Module):
    r"""Single-head self-attention over the pixels, with a residual connection.

    .. math:: \mathrm{out} = x + W_o\, \mathrm{softmax}(Q K^\top / \sqrt{C})\, V,
        \quad (Q, K, V) = W_{qkv}\, \mathrm{GN}(x)

    ``Q, K, V`` have one row per pixel (``HW`` rows of ``C`` features); the attention is
    computed by :func:`torch.nn.functional.scaled_dot_product_attention` on tensors of shape
    ``(B, 1, HW, C)`` (one head), which picks a fused kernel where the device has one (flash
    or memory-efficient attention on CUDA). The features are laid out with unit stride, as
    the fused kernels require: free for ``channels_last`` inputs, one copy otherwise. A
    contiguous ``x`` gives a contiguous output, a ``channels_last`` one a ``channels_last``
    output.

    Arguments:
        channels: The channel count ``C``.
        num_groups: The most GroupNorm groups (as in :class:`ResBlock`).
    """

    def __init__(self, channels: int, num_groups: int = 32) -> None:
        super().__init__()
        self.norm = _group_norm(channels, num_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        height, channels = x.shape[2], x.shape[1]
        # (B, 3C, H, W) -> (B, 3, HW, C): a view for contiguous and channels_last tensors
        qkv = rearrange(self.qkv(self.norm(x)), "b (n c) h w -> b n (h w) c", n=3)
        if qkv.stride(-1) != 1:  # contiguous (NCHW) input: the pixels were the unit stride
            qkv = qkv.contiguous()
        q, k, v = qkv.unsqueeze(2).unbind(1)  # each (B, 1, HW, C): one head
        h = nn.functional.scaled_dot_product_attention(
            q, k, v, scale=1.0 / math.sqrt(channels)
        )
        h = rearrange(h, "b 1 (h w) c -> b c h w", h=height)
        return x + self.proj_out(h.contiguous(memory_format=_memory_format(x)))


def _memory_format(x: Tensor) -> torch.memory_format:
    """``channels_last`` when ``x`` is laid out so (and not also plainly contiguous), else
    ``contiguous_format``."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


class _Level(nn.Module):
    """A residual block, then attention where the resolution asks for it."""

    consumes_skip = False

    def __init__(self, res: ResBlock, attn: AttnBlock | None, consumes_skip: bool) -> None:
        super().__init__()
        self.res = res
        self.attn = attn
        self.consumes_skip = consumes_skip

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        h = self.res(h, temb)
        return h if self.attn is None else self.attn(h)


class _Downsample(nn.Module):
    consumes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.conv(h)


class _Upsample(nn.Module):
    consumes_skip = False

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, h: Tensor, temb: Tensor) -> Tensor:
        return self.conv(nn.functional.interpolate(h, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    r"""A DDPM U-Net: residual blocks with GroupNorm, SiLU and time-embedding injection,
    self-attention at chosen resolutions, skip connections between matching resolutions.

    The time embedding is :class:`~sdeflow.nets.SinusoidalTimeEmbedding` of ``time_scale * t``
    followed by ``Linear(ch, 4ch), SiLU, Linear(4ch, 4ch)``; each residual block adds a linear
    projection of it to its features. When ``t`` is shared by the batch (shape ``()`` or
    ``(1,)``) the embedding and every projection are computed once, on ``(1, ·)`` tensors, and
    broadcast over the batch.

    Sizes: the paper's CIFAR-10 drift net is ``UNet(3, ch=128)`` (35.7M parameters), its score
    net ``UNet(3, ch=64)`` (8.9M); ``UNet(3, ch=8, ch_mult=(1, 2), num_res_blocks=1,
    attn_resolutions=(), image_size=8)`` is a CPU smoke model.

    Memory format: the net computes the same function for contiguous (NCHW) and
    ``channels_last`` inputs and weights (``net.to(memory_format=torch.channels_last)``), and
    for inputs of any strides; ``channels_last`` (weights and inputs) may run faster on GPUs, to
    be measured (``benchmarks/cifar_train.py --variants base,channels_last``). The net also
    runs under :func:`torch.compile`.

    Arguments:
        in_channels: The image channels ``C``.
        ch: The base channel count.
        ch_mult: Channel multipliers per resolution level; the image is halved between levels.
        num_res_blocks: Residual blocks per level on the way down (one more on the way up).
        attn_resolutions: Resolutions (side lengths) at which blocks are followed by attention;
            the middle of the network always has attention.
        dropout: Dropout probability inside residual blocks.
        image_size: The side ``H = W`` of the input images.
        out_channels: Output channels (default: ``in_channels``).
        num_groups: The most GroupNorm groups (as in :class:`ResBlock`).
        time_scale: The factor applied to ``t`` before the sinusoidal embedding (1000 maps
            ``t`` in ``[0, 1]`` to DDPM's step-index range). The official DiffFlow code feeds
            the raw ``t`` to this network (CIFAR-10 "B"): ``time_scale=1.0`` reproduces it.
        zero_output: Whether the last convolution starts at zero (the net starts as zero).

    References:
        | Denoising Diffusion Probabilistic Models (Ho et al., 2020)
        | https://arxiv.org/abs/2006.11239
        | Diffusion Normalizing Flow (Zhang & Chen, 2021)
        | https://arxiv.org/abs/2110.07579

    Example:
        >>> net = UNet(1, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
        ...            image_size=8)
        >>> x = torch.randn(2, 1, 8, 8)
        >>> net(x, torch.tensor(0.5)).shape
        torch.Size([2, 1, 8, 8])
    """

    def __init__(
        self,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: Sequence[int] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: Sequence[int] = (16,),
        dropout: float = 0.1,
        image_size: int = 32,
        out_channels: int | None = None,
        num_groups: int = 32,
        time_scale: float = 1000.0,
        zero_output: bool = False,
    ) -> None:
        super().__init__()
        _check_positive_int("in_channels", in_channels)
        _check_positive_int("ch", ch)
        _check_positive_int("num_res_blocks", num_res_blocks)
        _check_positive_int("image_size", image_size)
        _check_positive_int("num_groups", num_groups)
        ch_mult = tuple(ch_mult)
        if not ch_mult or not all(isinstance(m, int) and m >= 1 for m in ch_mult):
            raise ValueError(
                f"ch_mult must be a non-empty sequence of positive ints, got {ch_mult}"
            )
        if image_size % 2 ** (len(ch_mult) - 1):
            raise ValueError(
                f"image_size must be divisible by 2**(len(ch_mult) - 1) = "
                f"{2 ** (len(ch_mult) - 1)}, got {image_size}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        out_channels = in_channels if out_channels is None else out_channels
        _check_positive_int("out_channels", out_channels)
        attn_resolutions = tuple(attn_resolutions)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = image_size

        temb_ch = 4 * ch
        self.time_embedding = SinusoidalTimeEmbedding(ch, time_scale=time_scale)
        self.time_mlp = nn.Sequential(
            nn.Linear(ch, temb_ch), nn.SiLU(), nn.Linear(temb_ch, temb_ch)
        )

        def level(c_in: int, c_out: int, res: int, consumes_skip: bool) -> _Level:
            attn = AttnBlock(c_out, num_groups) if res in attn_resolutions else None
            block = ResBlock(c_in, c_out, temb_ch, dropout, num_groups)
            return _Level(block, attn, consumes_skip)

        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        down: list[nn.Module] = []
        skip_channels = [ch]
        c, res = ch, image_size
        for i, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                down.append(level(c, ch * mult, res, False))
                c = ch * mult
                skip_channels.append(c)
            if i != len(ch_mult) - 1:
                down.append(_Downsample(c))
                skip_channels.append(c)
                res //= 2
        self.down = nn.ModuleList(down)

        mid_attn = AttnBlock(c, num_groups)
        self.mid = nn.ModuleList(
            [
                _Level(ResBlock(c, c, temb_ch, dropout, num_groups), mid_attn, False),
                _Level(ResBlock(c, c, temb_ch, dropout, num_groups), None, False),
            ]
        )

        up: list[nn.Module] = []
        for i, mult in reversed(list(enumerate(ch_mult))):
            for _ in range(num_res_blocks + 1):
                up.append(level(c + skip_channels.pop(), ch * mult, res, True))
                c = ch * mult
            if i != 0:
                up.append(_Upsample(c))
                res *= 2
        self.up = nn.ModuleList(up)

        self.norm_out = _group_norm(c, num_groups)
        self.conv_out = nn.Conv2d(c, out_channels, 3, padding=1)
        if zero_output:
            nn.init.zeros_(self.conv_out.weight)
            nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: Tensor, t: Tensor | float) -> Tensor:
        r"""Evaluates the network.

        Arguments:
            x: Images of shape ``(B, in_channels, image_size, image_size)``.
            t: The time, of shape ``()``, ``(1,)`` (shared) or ``(B,)``.

        Returns:
            A tensor of shape ``(B, out_channels, image_size, image_size)``.
        """
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(
                f"x must have shape (batch, {', '.join(map(str, expected))}), got {tuple(x.shape)}"
            )
        _check_input(x, self.conv_in.weight, "UNet")
        t = time_batch(t, x.shape[0], dtype=x.dtype, device=x.device)
        temb = self.time_mlp(self.time_embedding(t))  # (1, 4ch) or (B, 4ch)

        hs = [self.conv_in(x)]
        for module in self.down:
            hs.append(module(hs[-1], temb))
        h = hs[-1]
        for module in self.mid:
            h = module(h, temb)
        for module in self.up:
            if module.consumes_skip:
                h = torch.cat([h, hs.pop()], dim=1)
            h = module(h, temb)
        return self.conv_out(nn.functional.silu(self.norm_out(h)))

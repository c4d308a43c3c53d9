"""Tests of the lucidrains-style U-Net (DiffFlow's MNIST and CIFAR-10 "A" nets) and of the raw-t
time input of the official networks."""

from __future__ import annotations

import io
import math

import pytest
import torch

from sdeflow.nets import LinearAttention, LucidUNet, UNet

B = 3


def tiny(in_channels: int = 3, **kwargs) -> LucidUNet:
    config = dict(dim=8, dim_mults=(1, 2), groups=4, attn_heads=2, attn_dim_head=4)
    config.update(kwargs)
    return LucidUNet(in_channels, **config)


def open_gates(net: torch.nn.Module, value: float = 0.7) -> None:
    """The ReZero gains start at zero (attention off): give them a value so that the attention
    takes part in the function."""
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("gain"):
                p.fill_(value)


def official_count(in_ch: int, dim: int, mults=(1, 2, 4, 8), heads=4, dim_head=32) -> int:
    """Parameters of the official ``networks.unet.Unet`` (qsh-zh/DiffFlow), counted from its
    architecture: blocks Conv3x3 + GroupNorm(affine), residual blocks with a Linear(dim, out)
    time projection and a 1x1 skip where channels change, linear attention (bias-free qkv,
    biased output) with a ReZero scalar, Conv3x3 stride-2 down, ConvTranspose 4x4 up."""

    def block(a, b):
        return 9 * a * b + b + 2 * b

    def res(a, b):
        return block(a, b) + block(b, b) + dim * b + b + (a * b + b if a != b else 0)

    def attn(c):
        hidden = heads * dim_head
        return c * 3 * hidden + hidden * c + c + 1

    dims = [in_ch, *(dim * m for m in mults)]
    pairs = list(zip(dims[:-1], dims[1:]))
    total = dim * 4 * dim + 4 * dim + 4 * dim * dim + dim  # time MLP
    for i, (a, b) in enumerate(pairs):
        total += res(a, b) + res(b, b) + attn(b)
        if i < len(pairs) - 1:
            total += 9 * b * b + b
    mid = dims[-1]
    total += 2 * res(mid, mid) + attn(mid)
    for a, b in reversed(pairs[1:]):
        total += res(2 * b, a) + res(a, a) + attn(a) + 16 * a * a + a
    total += block(dim, dim) + dim * in_ch + in_ch
    return total


def n_params(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@pytest.mark.parametrize(
    "in_ch, dim, millions, exact",
    [
        (3, 128, 117.2, 117_180_299),  # CIFAR-10 "A" drift
        (3, 64, 29.8, 29_803_467),  # CIFAR-10 "A" score
        (1, 64, 29.8, 29_802_057),  # MNIST drift and score
    ],
)
def test_official_parameter_counts(in_ch, dim, millions, exact):
    with torch.device("meta"):  # shapes only, no memory
        net = LucidUNet(in_ch, dim=dim, dim_mults=(1, 2, 4, 8))
    n = n_params(net)
    assert n == official_count(in_ch, dim)
    assert n == exact
    assert round(n / 1e6, 1) == millions


def test_ddpm_unet_official_parameter_counts():
    with torch.device("meta"):
        drift = UNet(3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                     dropout=0.1, time_scale=1.0)
        score = UNet(3, ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,),
                     dropout=0.1, time_scale=1.0)
    assert round(n_params(drift) / 1e6, 2) == 35.75
    assert round(n_params(score) / 1e6, 2) == 8.95


@pytest.mark.parametrize("in_ch", [3, 1])
def test_output_shape_32(in_ch):
    torch.manual_seed(0)
    net = LucidUNet(in_ch, dim=8, dim_mults=(1, 2, 4, 8), attn_dim_head=4)
    x = torch.randn(2, in_ch, 32, 32)
    out = net(x, torch.tensor([0.01, 0.1]))
    assert out.shape == x.shape
    assert torch.isfinite(out).all()


def test_out_channels_and_non_square():
    net = tiny(2, out_channels=5).double()
    out = net(torch.randn(2, 2, 8, 12, dtype=torch.float64), 0.5)
    assert out.shape == (2, 5, 8, 12)


def test_time_shapes_agree():
    torch.manual_seed(0)
    net = tiny().double()
    open_gates(net)
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    t = 0.037
    ref = net(x, torch.full((B,), t, dtype=torch.float64))
    for shared in (torch.tensor(t, dtype=torch.float64), torch.tensor([t], dtype=torch.float64), t):
        torch.testing.assert_close(net(x, shared), ref, rtol=1e-12, atol=1e-12)


def test_time_changes_output():
    torch.manual_seed(0)
    net = tiny().double()
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    assert not torch.allclose(net(x, 0.01), net(x, 0.09))


def test_samples_do_not_interact():
    torch.manual_seed(0)
    net = tiny().double()
    open_gates(net)
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.001, 0.05, 0.1], dtype=torch.float64)
    batched = net(x, t)
    for i in range(B):
        torch.testing.assert_close(batched[i : i + 1], net(x[i : i + 1], t[i]),
                                   rtol=1e-12, atol=1e-12)


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = tiny().double()
    open_gates(net)
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    net(x, torch.rand(B, dtype=torch.float64)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().max() > 0, name


def test_gates_start_closed():
    net = tiny()
    gains = [p for name, p in net.named_parameters() if name.endswith("gain")]
    assert len(gains) == 2 + 1 + 1  # one per down level, the middle, one per up level
    assert all(g.item() == 0.0 for g in gains)


def test_linear_attention_matches_written_out_formula():
    torch.manual_seed(0)
    heads, d, c = 2, 3, 5
    attn = LinearAttention(c, heads=heads, dim_head=d).double()
    x = torch.randn(2, c, 3, 4, dtype=torch.float64)
    out = attn(x)

    w_qkv = attn.to_qkv.weight[:, :, 0, 0]  # (3 * heads * d, c)
    w_out, b_out = attn.to_out.weight[:, :, 0, 0], attn.to_out.bias
    n = 12
    expected = torch.empty_like(x)
    for b in range(2):
        pixels = x[b].reshape(c, n)  # (c, n)
        qkv = w_qkv @ pixels  # (3 * heads * d, n)
        stacked = []
        for h in range(heads):
            q = qkv[h * d : (h + 1) * d]
            k = qkv[(heads + h) * d : (heads + h + 1) * d]
            v = qkv[(2 * heads + h) * d : (2 * heads + h + 1) * d]
            k_bar = torch.exp(k) / torch.exp(k).sum(dim=1, keepdim=True)
            # quadratic order: an (n x n) weight matrix A[m, n'] = sum_d k_bar[d, m] q[d, n']
            o = torch.zeros(d, n, dtype=torch.float64)
            for p in range(n):
                for m in range(n):
                    a = sum(k_bar[j, m] * q[j, p] for j in range(d))
                    o[:, p] += a * v[:, m]
            stacked.append(o)
        y = w_out @ torch.cat(stacked) + b_out[:, None]
        expected[b] = y.reshape(c, 3, 4)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_channels_last_same_function():
    torch.manual_seed(0)
    net = tiny().double()
    open_gates(net)
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    ref = net(x, 0.05)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), 0.05)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_linear_attention_keeps_memory_format():
    attn = LinearAttention(8, heads=2, dim_head=4)
    x = torch.randn(2, 8, 4, 4).contiguous(memory_format=torch.channels_last)
    assert attn(x).is_contiguous(memory_format=torch.channels_last)
    assert attn(x.contiguous()).is_contiguous()


# relative error bounds: bf16 keeps 8 significant bits (relative step 2**-8 = 0.4%), fp16 11
# bits (0.05%); a dozen layers deep, about ten steps of relative error is the expected size
@pytest.mark.parametrize("dtype, bound", [(torch.bfloat16, 0.05), (torch.float16, 0.01)])
def test_autocast_close_to_float32(dtype, bound):
    torch.manual_seed(0)
    net = tiny()
    open_gates(net)
    x = torch.randn(B, 3, 8, 8)
    ref = net(x, 0.05)
    with torch.autocast("cpu", dtype=dtype):
        out = net(x, 0.05)
    assert out.dtype == dtype
    err = (out.float() - ref).norm() / ref.norm()
    assert err < bound
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def test_state_dict_round_trip():
    torch.manual_seed(0)
    net = tiny().double()
    open_gates(net)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    other = tiny().double()
    other.load_state_dict(torch.load(buffer, weights_only=True))
    x = torch.randn(B, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(other(x, 0.02), net(x, 0.02), rtol=0, atol=0)


def test_zero_output_starts_at_zero():
    net = tiny(zero_output=True)
    assert net(torch.randn(2, 3, 8, 8), 0.1).abs().max() == 0


def test_default_embeds_raw_time():
    # the official networks embed t itself: scaling t by s is the same as time_scale=s
    torch.manual_seed(0)
    net = tiny().double()
    assert net.time_embedding.time_scale == 1.0
    scaled = tiny(time_scale=7.0).double()
    scaled.load_state_dict(net.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(scaled(x, 0.01), net(x, 0.07), rtol=1e-12, atol=1e-12)


def test_unet_time_scale_one_is_the_official_embedding():
    # official DDPM net (networks/official_unet.py): sin/cos of t * 10000^(-k/(half-1)), raw t
    net = UNet(3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), image_size=8,
               time_scale=1.0).double()
    t = torch.tensor([1e-4, 0.03, 0.1], dtype=torch.float64)
    half = 4
    freqs = torch.tensor([10000 ** (-k / (half - 1)) for k in range(half)], dtype=torch.float64)
    expected = torch.cat([torch.sin(t[:, None] * freqs), torch.cos(t[:, None] * freqs)], dim=1)
    torch.testing.assert_close(net.time_embedding(t), expected, rtol=1e-12, atol=1e-12)
    # the default (1000) is not the official embedding; it stays the default
    assert UNet(3, ch=8, ch_mult=(1, 2), image_size=8).time_embedding.time_scale == 1000.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(dim=6, groups=4), "groups"),
        (dict(dim=7), "dim must be even"),
        (dict(dim_mults=()), "dim_mults"),
        (dict(dim_mults=(1, 0)), "dim_mults"),
        (dict(dim=8.0), "dim must be an int"),
        (dict(attn_heads=0), "attn_heads"),
    ],
)
def test_bad_construction(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny(**kwargs)


@pytest.mark.parametrize("shape", [(2, 2, 8, 8), (2, 3, 7, 8), (2, 3, 8, 5), (3, 8, 8)])
def test_bad_x_shape_names_x(shape):
    net = tiny()
    with pytest.raises(ValueError, match=r"x must have shape"):
        net(torch.randn(shape), 0.1)


def test_bad_x_dtype_names_x():
    with pytest.raises(TypeError, match=r"x has dtype"):
        tiny()(torch.randn(2, 3, 8, 8, dtype=torch.float64), 0.1)


def test_bad_time_shape_names_t():
    with pytest.raises(ValueError, match=r"t must have shape"):
        tiny()(torch.randn(2, 3, 8, 8), torch.zeros(3))


def test_docstring_sizes_are_official():
    # the class docstring quotes the counts; keep it honest
    doc = LucidUNet.__doc__
    for in_ch, dim in [(3, 128), (3, 64), (1, 64)]:
        assert f"{official_count(in_ch, dim):,}" in doc
    assert math.isclose(official_count(3, 128) / 1e6, 117.18, abs_tol=0.01)

"""Contract tests for the networks of sdeflow.nets: shapes, time handling, gradients, sizes."""

from __future__ import annotations

import io
import math
import pickle

import pytest
import torch
from conftest import needs_cpp_compiler

from sdeflow.nets import (
    AttnBlock,
    FourierMLP,
    FourierTimeFeatures,
    GaussianFourierFeatures,
    SinusoidalTimeEmbedding,
    UNet,
    time_batch,
)

B = 3


def tiny_unet(**kwargs) -> UNet:
    config = dict(
        in_channels=2,
        ch=8,
        ch_mult=(1, 2),
        num_res_blocks=1,
        attn_resolutions=(4,),
        dropout=0.0,
        image_size=8,
    )
    config.update(kwargs)
    return UNet(**config)


# (factory, state shape)
NETS = {
    "mlp": (lambda: FourierMLP(2, width=16, depth=2), (2,)),
    "mlp-state": (lambda: FourierMLP(6, width=8, depth=1, activation="silu"), (2, 3)),
    "mlp-gaussian": (lambda: FourierMLP(2, width=8, depth=1, time_features="gaussian"), (2,)),
    "unet": (tiny_unet, (2, 8, 8)),
}


@pytest.fixture(params=sorted(NETS))
def net_and_shape(request):
    factory, shape = NETS[request.param]
    torch.manual_seed(0)
    return factory().double(), shape


@pytest.mark.parametrize(
    "t", [torch.tensor(0.3), torch.tensor([0.3]), torch.linspace(0.1, 0.9, B), 0.3, 1]
)
def test_output_shape_for_every_time_shape(net_and_shape, t):
    net, shape = net_and_shape
    x = torch.randn(B, *shape, dtype=torch.float64)
    if isinstance(t, torch.Tensor):
        t = t.double()
    out = net(x, t)
    assert out.shape == x.shape
    assert out.dtype == torch.float64
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(B + 1,), (B, 1), (1, 1), (2, B)])
def test_bad_time_shape_names_t(net_and_shape, shape):
    net, state = net_and_shape
    x = torch.randn(B, *state, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\bt must have shape"):
        net(x, torch.zeros(shape, dtype=torch.float64))


def test_bad_time_type(net_and_shape):
    net, state = net_and_shape
    with pytest.raises(TypeError, match=r"\bt must be"):
        net(torch.randn(B, *state, dtype=torch.float64), "0.5")


def test_bad_state_shape_names_x(net_and_shape):
    net, state = net_and_shape
    wrong = (state[0] + 1, *state[1:])
    with pytest.raises(ValueError, match=r"\bx must have shape"):
        net(torch.randn(B, *wrong, dtype=torch.float64), 0.5)


def test_shared_time_equals_per_sample_time(net_and_shape):
    net, shape = net_and_shape
    net.eval()
    x = torch.randn(B, *shape, dtype=torch.float64)
    t = torch.tensor(0.37, dtype=torch.float64)
    shared = net(x, t)
    torch.testing.assert_close(net(x, t.reshape(1)), shared, rtol=0, atol=0)
    torch.testing.assert_close(net(x, t.expand(B)), shared, rtol=1e-12, atol=1e-12)


def test_per_sample_times_are_applied_to_their_sample(net_and_shape):
    net, shape = net_and_shape
    net.eval()
    x = torch.randn(B, *shape, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    out = net(x, t)
    for i in range(B):
        torch.testing.assert_close(out[i : i + 1], net(x[i : i + 1], t[i]), rtol=1e-12, atol=1e-12)
    assert (net(x, t[0]) - net(x, t[2])).abs().max() > 1e-4  # the time matters


def test_gradients_reach_every_parameter(net_and_shape):
    net, shape = net_and_shape
    x = torch.randn(B, *shape, dtype=torch.float64)
    net(x, torch.rand(B, dtype=torch.float64)).square().sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert p.grad.abs().sum() > 0, name


def test_float32_and_float64(net_and_shape):
    net, shape = net_and_shape
    for dtype in (torch.float32, torch.float64):
        net = net.to(dtype)
        x = torch.randn(B, *shape, dtype=dtype)
        assert net(x, torch.tensor(0.5, dtype=dtype)).dtype == dtype
        assert net(x, 0.5).dtype == dtype  # a Python number follows x's dtype


def test_pickle_and_torch_save_round_trip(net_and_shape):
    net, shape = net_and_shape
    net.eval()
    x = torch.randn(B, *shape, dtype=torch.float64)
    expected = net(x, 0.25)
    clone = pickle.loads(pickle.dumps(net))
    torch.testing.assert_close(clone(x, 0.25), expected, rtol=0, atol=0)
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    fresh = pickle.loads(pickle.dumps(net))  # same architecture
    for p in fresh.parameters():
        p.data.zero_()
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(fresh(x, 0.25), expected, rtol=0, atol=0)


def test_zero_output_starts_at_zero():
    x = torch.randn(B, 2)
    assert FourierMLP(2, width=8, depth=1, zero_output=True)(x, 0.1).abs().max() == 0
    unet = tiny_unet(zero_output=True)
    assert unet(torch.randn(B, 2, 8, 8), 0.1).abs().max() == 0


def test_fourier_mlp_jacobian_with_torch_func():
    net = FourierMLP(2, width=8, depth=1).double()
    x = torch.randn(2, dtype=torch.float64)
    t = torch.tensor(0.02, dtype=torch.float64)
    jac = torch.func.jacrev(lambda v: net(v[None], t)[0])(x)
    eps = 1e-6
    columns = [
        (net((x + eps * e)[None], t)[0] - net((x - eps * e)[None], t)[0]) / (2 * eps)
        for e in torch.eye(2, dtype=torch.float64)
    ]
    torch.testing.assert_close(jac, torch.stack(columns, dim=1), rtol=1e-6, atol=1e-8)


def test_fourier_mlp_paper_size():
    # the official 2D configuration: width 128, 3 hidden layers, separate drift and score nets
    assert sum(p.numel() for p in FourierMLP(2).parameters()) == 99_714


def test_unet_paper_sizes():
    # built on the meta device: shapes only, no memory
    with torch.device("meta"):
        drift = UNet(3, ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
        score = UNet(3, ch=64, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,))
    n_drift = sum(p.numel() for p in drift.parameters())
    n_score = sum(p.numel() for p in score.parameters())
    assert 35.0e6 < n_drift < 36.5e6  # DDPM's CIFAR-10 model: 35.7M
    assert 8.5e6 < n_score < 9.5e6
    assert n_drift == 35_746_307 and n_score == 8_952_067


def test_unet_tiny_forward_backward_reaches_every_parameter():
    net = UNet(3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), image_size=32)
    net(torch.randn(4, 3, 32, 32), torch.rand(4)).square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())


def test_unet_dropout_only_in_training():
    net = tiny_unet(dropout=0.5).double()
    x = torch.randn(B, 2, 8, 8, dtype=torch.float64)
    net.eval()
    torch.testing.assert_close(net(x, 0.5), net(x, 0.5), rtol=0, atol=0)
    net.train()
    assert not torch.equal(net(x, 0.5), net(x, 0.5))


def test_unet_argument_validation():
    with pytest.raises(ValueError, match="image_size"):
        UNet(3, ch=8, ch_mult=(1, 2, 2), image_size=10)
    with pytest.raises(ValueError, match="ch_mult"):
        UNet(3, ch=8, ch_mult=())
    with pytest.raises(ValueError, match="dropout"):
        UNet(3, ch=8, dropout=1.5)
    with pytest.raises(TypeError, match="ch must be an int"):
        UNet(3, ch=8.0)


def _attention_by_formula(block: AttnBlock, x: torch.Tensor) -> torch.Tensor:
    """``x + W_o softmax(Q K^T / sqrt(C)) V`` with ``(Q, K, V) = W_qkv GN(x)``, written out with
    einsum and softmax: one row of Q, K, V per pixel."""
    b, c, h, w = x.shape
    qkv = block.qkv(block.norm(x)).reshape(b, 3 * c, h * w)
    q, k, v = (qkv[:, i * c : (i + 1) * c].transpose(1, 2) for i in range(3))  # (B, HW, C)
    weights = torch.softmax(torch.einsum("bic,bjc->bij", q, k) / math.sqrt(c), dim=-1)
    attended = torch.einsum("bij,bjc->bic", weights, v)  # (B, HW, C)
    return x + block.proj_out(attended.transpose(1, 2).reshape(b, c, h, w))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_attention_block_equals_the_softmax_formula(layout):
    torch.manual_seed(0)
    block = AttnBlock(16, num_groups=4).double()
    for p in block.parameters():  # GroupNorm starts at (1, 0): perturb it to test it too
        torch.nn.init.normal_(p, std=0.3)
    # H != W: a mixed-up height and width would not go unnoticed
    x = torch.randn(2, 16, 5, 3, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
        block = block.to(memory_format=torch.channels_last)
    elif layout == "strided":  # neither contiguous nor channels_last
        x = torch.randn(2, 16, 10, 3, dtype=torch.float64)[:, :, ::2]
        assert not x.is_contiguous() and not x.is_contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    out, expected = block(x), _attention_by_formula(block, x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    assert (out - x).abs().max() > 1e-2  # the attention branch is not negligible
    # the output keeps x's layout
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last")

    cotangent = torch.randn_like(expected)
    inputs = [x, *block.parameters()]
    grads = torch.autograd.grad(out, inputs, cotangent)
    expected_grads = torch.autograd.grad(expected, inputs, cotangent)
    for name, g, e in zip(["x", *(n for n, _ in block.named_parameters())], grads,
                          expected_grads, strict=True):
        assert e.abs().max() > 0, name
        torch.testing.assert_close(g, e, rtol=0, atol=1e-12, msg=name)


def _channels_last_copy(net: UNet) -> UNet:
    clone = pickle.loads(pickle.dumps(net))
    return clone.to(memory_format=torch.channels_last)


def _perturbed_unet() -> UNet:
    # attention at both resolutions (8 and 4) and in the middle; zero-initialized nothing
    torch.manual_seed(0)
    net = tiny_unet(attn_resolutions=(8, 4)).double().eval()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name:  # GroupNorm starts at (1, 0): make its affine map matter
                p.add_(0.2 * torch.randn_like(p))
    return net


def test_unet_channels_last_equals_nchw():
    net = _perturbed_unet()
    cl = _channels_last_copy(net)
    assert cl.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert not cl.conv_in.weight.is_contiguous()
    x = torch.randn(B, 2, 8, 8, dtype=torch.float64)
    t = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
    expected = net(x, t)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    strided = torch.randn(B, 2, 16, 8, dtype=torch.float64)[:, :, ::2]
    with torch.no_grad():
        strided.copy_(x)  # the same values, neither layout
    assert not strided.is_contiguous()
    for model, inp in [(cl, x_cl), (cl, x), (net, x_cl), (net, strided), (cl, strided)]:
        torch.testing.assert_close(model(inp, t), expected, rtol=0, atol=1e-12)
    # the channels_last net with channels_last input computes in channels_last throughout
    assert cl(x_cl, t).is_contiguous(memory_format=torch.channels_last)


def test_unet_channels_last_gradients_equal_nchw():
    net = _perturbed_unet()
    cl = _channels_last_copy(net)
    x = torch.randn(B, 2, 8, 8, dtype=torch.float64, requires_grad=True)
    x_cl = x.detach().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    cotangent = torch.randn(B, 2, 8, 8, dtype=torch.float64)
    (net(x, 0.3) * cotangent).sum().backward()
    (cl(x_cl, 0.3) * cotangent).sum().backward()
    torch.testing.assert_close(x_cl.grad, x.grad, rtol=0, atol=1e-12)
    cl_params = dict(cl.named_parameters())
    for name, p in net.named_parameters():
        assert p.grad.abs().max() > 0, name
        torch.testing.assert_close(cl_params[name].grad, p.grad, rtol=0, atol=1e-12, msg=name)


@pytest.mark.slow
@needs_cpp_compiler
def test_unet_under_torch_compile_equals_eager():
    net = _perturbed_unet().float()
    compiled = torch.compile(net)
    x = torch.randn(B, 2, 8, 8)
    torch.testing.assert_close(compiled(x, 0.4), net(x, 0.4), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_unet_attention_feeds_the_fused_kernel_layout(channels_last):
    # fused attention kernels (CPU flash attention here) need the features at unit stride;
    # with only them allowed, a layout they reject raises instead of falling back to the
    # unfused math
    from torch.nn.attention import SDPBackend, sdpa_kernel

    net = _perturbed_unet().float()
    x = torch.randn(B, 2, 8, 8)
    expected = net(x, 0.3)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
        out = net(x, 0.3)
        out.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
def test_unet_attention_runs_a_fused_kernel_on_cuda(channels_last):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    # the drift net's attention: 256 channels (one head of size 256) at 16x16
    net = UNet(3, ch=128, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
               dropout=0.0).cuda()
    x = torch.randn(4, 3, 32, 32, device="cuda")
    reference = net(x, 0.5).detach()  # float32, whichever kernel the device picks
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    # fused kernels only: an input layout they reject raises here instead of falling back
    with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net(x, 0.5)
        out.float().square().mean().backward()
    error = (out.float() - reference).norm() / reference.norm()
    assert error < 0.05, error  # bf16 rounding, not a different function
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.slow
@pytest.mark.parametrize("device", [
    pytest.param("cpu", marks=needs_cpp_compiler),
    pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(
        not torch.cuda.is_available(), reason="needs a CUDA device")]),
])
def test_compiled_unet_adjoint_replays_dropout(device):
    # the memory-saving adjoint recomputes each step under the forward's random state: with
    # compiled networks (inductor generates its own dropout) its gradient must still equal
    # backpropagation's, as in examples/diffflow_cifar.py --compile (adjoint, dropout 0.1)
    from sdeflow import (
        Backprop,
        DiffFlowObjective,
        ForwardSDE,
        ReverseSDE,
        StandardNormal,
        TimeGrid,
    )
    from sdeflow.gradients import StochasticAdjoint

    def gradient(strategy) -> torch.Tensor:
        torch.manual_seed(0)
        nets = [UNet(3, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,),
                     dropout=0.3).to(device) for _ in range(2)]
        for net in nets:
            net.compile()
        objective = DiffFlowObjective(
            ReverseSDE(ForwardSDE(nets[0], 1.0), nets[1]), StandardNormal((3, 32, 32)).to(device),
            TimeGrid.power(4, 1e-4, 0.05, 0.9, device=device), gradient=strategy())
        torch.manual_seed(1)
        objective(torch.rand(2, 3, 32, 32, device=device)).loss.backward()
        return torch.cat([p.grad.flatten() for net in nets for p in net.parameters()])

    backprop, adjoint = gradient(Backprop), gradient(StochasticAdjoint)
    assert backprop.norm() > 0
    assert (adjoint - backprop).norm() / backprop.norm() < 1e-4


def test_fourier_mlp_argument_validation():
    with pytest.raises(ValueError, match="activation"):
        FourierMLP(2, activation="sigmoidish")
    with pytest.raises(ValueError, match="time_features"):
        FourierMLP(2, time_features="wavelet")
    with pytest.raises(ValueError, match="depth"):
        FourierMLP(2, depth=-1)
    with pytest.raises(ValueError, match="dim must be positive"):
        FourierMLP(0)


def test_time_batch():
    assert time_batch(0.5, 4).shape == (1,)
    assert time_batch(torch.tensor(0.5), 4).shape == (1,)
    assert time_batch(torch.tensor([0.5]), 4).shape == (1,)
    assert time_batch(torch.zeros(4), 4).shape == (4,)
    assert time_batch(torch.tensor(1), 4).dtype == torch.get_default_dtype()
    assert time_batch(0.5, 4, dtype=torch.float64).dtype == torch.float64
    with pytest.raises(ValueError, match=r"t must have shape \(\), \(1,\) or \(batch,\)=\(4,\)"):
        time_batch(torch.zeros(3), 4)
    with pytest.raises(TypeError, match="t must be"):
        time_batch(True, 4)


def test_time_features():
    t = torch.tensor([0.0, 0.25, 1.0], dtype=torch.float64)
    fourier = FourierTimeFeatures(5, learnable_phase=False).double()
    phi = fourier(t)
    assert phi.shape == (3, 10)
    torch.testing.assert_close(phi[0], torch.cat([torch.zeros(5), torch.ones(5)]).double())
    torch.testing.assert_close(phi[:, :5].square() + phi[:, 5:].square(), torch.ones(3, 5).double())

    g1, g2 = GaussianFourierFeatures(4, seed=3), GaussianFourierFeatures(4, seed=3)
    assert torch.equal(g1.freqs, g2.freqs)
    assert not torch.equal(g1.freqs, GaussianFourierFeatures(4, seed=4).freqs)
    assert g1(t.float()).shape == (3, 8)

    emb = SinusoidalTimeEmbedding(7, time_scale=1000.0).double()
    e = emb(t)
    assert e.shape == (3, 7) and torch.all(e[:, -1] == 0)  # odd size: one zero pad
    # DDPM's frequencies: 10000^(-k/(half-1)), applied to time_scale * t
    half = 3
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float64) / (half - 1))
    torch.testing.assert_close(e[2, :half], torch.sin(1000.0 * freqs))
    assert not list(emb.state_dict())  # nothing to save

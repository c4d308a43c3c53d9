"""CUDA checks (skipped without a GPU; run by ``benchmarks/gpu_check.sh``): a bf16 autocast
training step of DiffFlow on U-Nets is finite and changes the weights, and the memory-saving
adjoint gradient equals backpropagation on the GPU (dropout included: the recomputed steps must
replay the CUDA random state). One check also runs on the CPU: the adjoint's recomputation
replays the forward's autocast (bf16) settings."""

from __future__ import annotations

import math

import pytest
import torch

from sdeflow import Backprop, DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
from sdeflow.gradients import StochasticAdjoint
from sdeflow.nets import UNet
from sdeflow.training import DiffFlowModel, Logging, Optimization, TensorBatches, Trainer

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
gpu = [pytest.mark.gpu, needs_cuda]


class DtypeRecorder(torch.nn.Module):
    """A linear drift that records the dtype its matmul runs in at every call."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(dim, dim)
        self.seen: list[torch.dtype] = []

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.linear(x)
        self.seen.append(h.dtype)
        return h.to(x.dtype)


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=gpu)])
def test_adjoint_recomputes_under_the_forward_autocast(device: str) -> None:
    torch.manual_seed(0)
    drift, score = DtypeRecorder(6).to(device), DtypeRecorder(6).to(device)
    objective = DiffFlowObjective(ReverseSDE(ForwardSDE(drift, 1.0), score),
                                  StandardNormal((6,)).to(device),
                                  TimeGrid.uniform(4, 1e-3, 0.1, device=device),
                                  gradient=StochasticAdjoint())
    with torch.autocast(device, dtype=torch.bfloat16):
        loss = objective(torch.randn(8, 6, device=device)).loss
    calls = len(drift.seen)
    loss.backward()  # outside the autocast context, as the Trainer does
    assert len(drift.seen) > calls  # the backward pass recomputed the steps...
    assert set(drift.seen) == set(score.seen) == {torch.bfloat16}  # ...in bf16


def _unet(dropout: float = 0.0) -> UNet:
    return UNet(3, ch=16, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(8,),
                dropout=dropout, image_size=16)


@pytest.mark.gpu
@needs_cuda
def test_bf16_autocast_training_steps_are_finite() -> None:
    torch.manual_seed(0)
    model = DiffFlowModel(_unet(0.1), _unet(0.1), 1.0, TimeGrid.power(6, 1e-4, 0.05, 0.9),
                          StandardNormal((3, 16, 16)))
    data = TensorBatches(torch.rand(32, 3, 16, 16) * 2 - 1, batch_size=8)
    trainer = Trainer(model, data, steps=3, optimization=Optimization(lr=2e-4),
                      precision="bf16", device="cuda", logging=Logging(progress=False))
    assert trainer.amp
    before = [p.detach().clone() for p in model.parameters()]
    trainer.fit()
    assert math.isfinite(trainer.last_loss) and trainer.skipped == 0
    after = list(model.parameters())
    assert all(torch.isfinite(p).all() for p in after)
    assert any(not torch.equal(a, b) for a, b in zip(after, before))
    assert model.sample(2).isfinite().all()


@pytest.mark.parametrize(("dtype", "rtol"), [pytest.param(torch.float64, 1e-10, marks=gpu),
                                             pytest.param(torch.float32, 1e-4, marks=gpu)])
def test_adjoint_equals_backprop_on_cuda(dtype: torch.dtype, rtol: float) -> None:
    torch.backends.cudnn.deterministic = True
    torch.manual_seed(0)
    drift, score = (_unet(0.1).to("cuda", dtype) for _ in range(2))
    reverse = ReverseSDE(ForwardSDE(drift, 1.0), score)
    grid = TimeGrid.power(5, 1e-4, 0.05, 0.9, dtype=dtype, device="cuda")
    prior = StandardNormal((3, 16, 16), dtype=dtype).to("cuda")
    x = torch.rand(4, 3, 16, 16, dtype=dtype, device="cuda") * 2 - 1
    noise = torch.randn((5, *x.shape), dtype=dtype, device="cuda")
    params = [p for net in (drift, score) for p in net.parameters()]
    grads = {}
    for name, strategy in (("backprop", Backprop()), ("adjoint", StochasticAdjoint())):
        torch.cuda.manual_seed(1)  # the same dropout masks for both
        loss = DiffFlowObjective(reverse, prior, grid, gradient=strategy)(x, noise=noise).loss
        grads[name] = torch.autograd.grad(loss, params)
    for p, a, b in zip(params, grads["adjoint"], grads["backprop"]):
        scale = b.abs().max().clamp_min(1e-30)
        assert float((a - b).abs().max() / scale) < rtol, tuple(p.shape)

"""``sdeflow.nets.GELU`` (derivative computed in the forward pass) equals ``torch.nn.GELU`` in
value and in first, second and third derivatives, under ``torch.func`` transforms too, and
inside the DiffFlow and flow objectives with every gradient strategy (float64)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd import gradcheck, gradgradcheck

from sdeflow import DiffFlowObjective, ForwardSDE, ReverseSDE, StandardNormal, TimeGrid
from sdeflow.gradients import Backprop, Checkpointed, StochasticAdjoint
from sdeflow.nets import GELU, FourierMLP
from sdeflow.objectives import FlowNLL

F64 = torch.float64


def _z(*shape: int, seed: int = 0, dtype: torch.dtype = F64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(*shape, generator=g, dtype=dtype) * 3  # tails as well as the bend
    return z.requires_grad_()


def _native(net: torch.nn.Module) -> torch.nn.Module:
    """``net`` with every sdeflow GELU replaced by ``torch.nn.GELU`` (same weights)."""
    for name, child in net.named_children():
        if isinstance(child, GELU):
            setattr(net, name, torch.nn.GELU())
        else:
            _native(child)
    return net


def _copies(width: int = 16, depth: int = 2, seed: int = 0) -> tuple[FourierMLP, FourierMLP]:
    torch.manual_seed(seed)
    ours = FourierMLP(2, width, depth).double()
    theirs = _native(FourierMLP(2, width, depth).double())
    theirs.load_state_dict(ours.state_dict())
    assert any(isinstance(m, GELU) for m in ours.modules())
    assert not any(isinstance(m, GELU) for m in theirs.modules())
    return ours, theirs


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_values_and_gradient_equal_torch_gelu(dtype: torch.dtype) -> None:
    z = _z(64, 9, dtype=dtype)
    h, ref = GELU()(z), torch.nn.GELU()(z)
    assert h.grad_fn is not None and torch.equal(h, ref)
    g = torch.randn_like(z)
    (ours,) = torch.autograd.grad(h, z, g)
    (theirs,) = torch.autograd.grad(ref, z, g)
    tol = 1e-15 if dtype == F64 else 1e-6
    assert torch.allclose(ours, theirs, rtol=tol, atol=tol)


def test_without_a_graph_it_is_the_plain_gelu() -> None:
    z = _z(8, 3)
    with torch.no_grad():
        assert torch.equal(GELU()(z), torch.nn.functional.gelu(z))
    plain = GELU(precompute_derivative=False)(z)
    assert "Gelu" in type(plain.grad_fn).__name__
    assert "GELUWithDerivative" in type(GELU()(z).grad_fn).__name__
    assert "precompute_derivative=False" in repr(GELU(False))
    with pytest.raises(TypeError, match="precompute_derivative must be a bool or None"):
        GELU("yes")


def test_derivatives_of_every_order_are_exact() -> None:
    z = _z(6, 4, seed=1)
    gelu = GELU()
    assert gradcheck(gelu, (z,))
    assert gradgradcheck(gelu, (z,))

    def first_derivative(x: torch.Tensor) -> torch.Tensor:
        (d,) = torch.autograd.grad(gelu(x).sum(), x, create_graph=True)
        return d

    assert gradgradcheck(first_derivative, (z,))  # third derivatives
    # and the second derivative against the closed form phi(z) (2 - z^2)
    (d2,) = torch.autograd.grad(first_derivative(z).sum(), z)
    phi = torch.exp(-0.5 * z.detach() ** 2) / (2 * torch.pi) ** 0.5
    assert torch.allclose(d2, phi * (2 - z.detach() ** 2), rtol=1e-13, atol=1e-15)


def test_vmap_jacrev_and_its_parameter_gradient_match_torch_gelu() -> None:
    z = _z(5, 3, seed=2).detach()
    w = torch.randn(3, 3, dtype=F64, generator=torch.Generator().manual_seed(3),
                    requires_grad=True)
    grads = []
    for act in (GELU(), torch.nn.GELU()):
        jac = torch.func.vmap(torch.func.jacrev(lambda x, act=act: act(x @ w)))(z)
        (gw,) = torch.autograd.grad(torch.linalg.slogdet(jac)[1].sum(), w)
        grads.append(gw)
    assert torch.allclose(grads[0], grads[1], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("gradient", [Backprop(), StochasticAdjoint(), Checkpointed(2)],
                         ids=["backprop", "adjoint", "checkpointed"])
def test_diffflow_gradients_equal_torch_gelu(gradient) -> None:
    (d1, d2), (s1, s2) = _copies(seed=0), _copies(seed=1)
    grid = TimeGrid.power(5, 1e-3, 0.05, 0.9, dtype=F64)
    x = torch.randn(9, 2, dtype=F64)
    noise = torch.randn(5, 9, 2, dtype=F64)
    grads = []
    for drift, score in ((d1, s1), (d2, s2)):
        reverse = ReverseSDE(ForwardSDE(drift, 0.3), score)
        objective = DiffFlowObjective(reverse, StandardNormal((2,), dtype=F64), grid,
                                      gradient=gradient)
        grads.append(torch.autograd.grad(objective(x, noise=noise).loss,
                                         list(reverse.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)


def test_flow_nll_gradients_equal_torch_gelu() -> None:
    # FlowNLL differentiates the drift's Jacobian (vmap of jacrev): second derivatives.
    ours, theirs = _copies(seed=4)
    grid = TimeGrid.uniform(4, 0.0, 0.5, dtype=F64)
    x = torch.randn(7, 2, dtype=F64)
    grads = []
    for net in (ours, theirs):
        loss = FlowNLL(ForwardSDE(net, 0.0), StandardNormal((2,), dtype=F64), grid)(x).loss
        grads.append(torch.autograd.grad(loss, list(net.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-13)

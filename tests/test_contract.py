"""Contract tests over every process and every registered discretizer: shapes for points and
images, dtype and device propagation, gradients reaching every parameter, pickling and
``torch.save`` round trips, informative reprs; and the distribution contract of the trajectory
distributions (shape rule, ``pyro.sample``, ``kl_divergence``, goodness of fit)."""

from __future__ import annotations

import io
import math
import pickle

import pyro
import pyro.poutine as poutine
import pytest
import torch
from conftest import HAS_CUDA, TinyMLP
from pyro.distributions.testing.gof import auto_goodness_of_fit
from torch.distributions import Independent, Normal, kl_divergence

from sdeflow import (
    DISCRETIZERS,
    VESDE,
    VPSDE,
    BackwardTrajectory,
    DenoisingScoreMatching,
    DiffFlowObjective,
    FlowNLL,
    ForwardSDE,
    ForwardTrajectory,
    LinearSchedule,
    ReverseSDE,
    StandardNormal,
    SubVPSDE,
    TimeGrid,
    sample,
)

F32, F64 = torch.float32, torch.float64
B = 3


# -- processes (module-level factories: everything they build pickles) -------------------------
def forward_mlp(d, dtype):
    return ForwardSDE(TinyMLP(d, dtype=dtype), 0.5)


def forward_mlp_linear_g(d, dtype):
    return ForwardSDE(TinyMLP(d, dtype=dtype), LinearSchedule(0.3, 1.0))


def vp(d, dtype):
    return VPSDE()


def subvp(d, dtype):
    return SubVPSDE()


def ve(d, dtype):
    return VESDE(0.01, 5.0)


def _reverse(d, dtype, lam):
    fwd = ForwardSDE(TinyMLP(d, dtype=dtype), 0.5)
    return ReverseSDE(fwd, TinyMLP(d, generator=torch.Generator().manual_seed(1), dtype=dtype),
                      lam)


def reverse_lam0(d, dtype):
    return _reverse(d, dtype, 0.0)


def reverse_lam05(d, dtype):
    return _reverse(d, dtype, 0.5)


def reverse_lam1(d, dtype):
    return _reverse(d, dtype, 1.0)


def reverse_vp(d, dtype):
    return ReverseSDE(VPSDE(), TinyMLP(d, dtype=dtype), 1.0)


PROCESSES = {f.__name__: f for f in [
    forward_mlp, forward_mlp_linear_g, vp, subvp, ve, reverse_lam0, reverse_lam05, reverse_lam1,
    reverse_vp,
]}
STATES = {"points": (2,), "images": (3, 4, 4)}


def _build(name, state, dtype=F64, device="cpu"):
    process = PROCESSES[name](math.prod(state), dtype).to(dtype=dtype, device=device)
    return process, isinstance(process, ReverseSDE)


def _grid(dtype=F64, device="cpu", n=4):
    return TimeGrid.uniform(n, 0.05, 0.6, dtype=dtype, device=device)


def _x(state, dtype=F64, device="cpu", batch=B, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn((batch,) + state, generator=gen, dtype=dtype).to(device)


def _discretizer_or_skip(dname, process, x, t, dt):
    """The scheme, or a skip when it declares that it does not accept the process
    (``declines``: Heun needs additive noise or Stratonovich, the exponential integrator a
    linear part); any error on an accepted process fails the test."""
    discretizer = DISCRETIZERS[dname]()
    reason = discretizer.declines(process)
    if reason is not None:
        pytest.skip(f"{dname} declines {type(process).__name__}: {reason}")
    return discretizer


def _prior(state, dtype=F64, device="cpu", batch=None):
    prior = StandardNormal(state, dtype=dtype).to(device)()
    return prior if batch is None else prior.expand((batch,))


params = pytest.mark.parametrize
all_cases = [params("pname", sorted(PROCESSES)), params("dname", sorted(DISCRETIZERS)),
             params("state", list(STATES.values()), ids=list(STATES))]


def cases(f):
    for mark in reversed(all_cases):
        f = mark(f)
    return f


# -- shapes, dtypes, devices -------------------------------------------------------------------
@cases
@params("dtype", [F32, F64])
def test_step_shapes_and_dtype(pname, dname, state, dtype):
    process, is_reverse = _build(pname, state, dtype)
    x = _x(state, dtype)
    t = torch.tensor(0.4, dtype=dtype)
    dt = torch.tensor(-0.05 if is_reverse else 0.05, dtype=dtype)
    disc = _discretizer_or_skip(dname, process, x, t, dt)
    with torch.no_grad():
        noise = torch.randn_like(x)
        out = disc.step(process, x, t, dt, noise)
        assert out.shape == x.shape and out.dtype == dtype
        assert torch.isfinite(out).all()
        drift, diffusion = process(x, t)
        assert drift.shape == x.shape and drift.dtype == dtype
        assert torch.broadcast_shapes(diffusion.shape, x.shape) == x.shape
        # one time per sample
        t_batch = torch.linspace(0.2, 0.5, B, dtype=dtype)
        assert process.drift(x, t_batch).shape == x.shape
        assert disc.step(process, x, t_batch, dt, noise).shape == x.shape
        if disc.gaussian:
            mean, std = disc.transition(process, x, t, dt)
            assert mean.shape == x.shape and mean.dtype == dtype and std.dtype == dtype
            torch.testing.assert_close(mean + std * noise, out)


def _trajectory(process, is_reverse, state, dtype, device, disc, n=4):
    grid = _grid(dtype, device, n)
    if is_reverse:
        return BackwardTrajectory(process, _prior(state, dtype, device, batch=B), grid, disc)
    return ForwardTrajectory(process, _x(state, dtype, device), grid, disc)


def _check_trajectory(pname, dname, state, dtype, device):
    process, is_reverse = _build(pname, state, dtype, device)
    x = _x(state, dtype, device)
    t = torch.tensor(0.4, dtype=dtype, device=device)
    disc = _discretizer_or_skip(dname, process, x, t,
                                torch.tensor(-0.05 if is_reverse else 0.05, dtype=dtype,
                                             device=device))
    p = _trajectory(process, is_reverse, state, dtype, device, disc)
    with torch.no_grad():
        tau = p.rsample((2,))
    assert tau.shape == (2, B, 5) + state == p.shape((2,))
    assert tau.dtype == dtype and tau.device.type == torch.device(device).type
    assert torch.isfinite(tau).all()
    has_density = disc.gaussian and not (is_reverse and process.lam == 0)
    if has_density:
        with torch.no_grad():
            lp = p.log_prob(tau)
        assert lp.shape == (2, B) and lp.dtype == dtype and torch.isfinite(lp).all()
    if not is_reverse:
        torch.testing.assert_close(tau[:, :, 0], x.expand((2,) + x.shape))


@cases
@params("dtype", [F32, F64])
def test_trajectory_shapes_and_dtype(pname, dname, state, dtype):
    _check_trajectory(pname, dname, state, dtype, "cpu")


@pytest.mark.gpu
@cases
def test_trajectory_on_cuda(pname, dname, state):
    _check_trajectory(pname, dname, state, F32, "cuda")


@pytest.mark.gpu
@params("state", list(STATES.values()), ids=list(STATES))
def test_objective_and_sample_on_cuda(state):
    process, _ = _build("reverse_lam1", state, F32, "cuda")
    grid = _grid(F32, "cuda")
    prior = StandardNormal(state, dtype=F32).to("cuda")
    terms = DiffFlowObjective(process, prior, grid)(_x(state, F32, "cuda"))
    terms.loss.backward()
    assert terms.nelbo.device.type == "cuda"
    assert all(p.grad is not None and p.grad.device.type == "cuda" for p in process.parameters())
    x = sample(process, prior, grid, (4,))
    assert x.shape == (4,) + state and x.device.type == "cuda"


# -- gradients ---------------------------------------------------------------------------------
def _assert_all_grads(module):
    named = list(module.named_parameters())
    for name, p in named:
        assert p.grad is not None, f"no gradient reached {name}"
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, f"zero gradient at {name}"


@cases
def test_gradients_reach_every_parameter(pname, dname, state):
    process, is_reverse = _build(pname, state)
    x = _x(state)
    t = torch.tensor(0.4, dtype=F64)
    disc = _discretizer_or_skip(dname, process, x, t,
                                torch.tensor(-0.05 if is_reverse else 0.05, dtype=F64))
    x0 = x.clone().requires_grad_()
    if is_reverse:
        # Through a sampled trajectory (any lam) ...
        tau = BackwardTrajectory(process, _prior(state, batch=B), _grid(), disc).rsample()
        tau.pow(2).sum().backward()
        _assert_all_grads(process)
        # ... and through the DiffFlow objective (lam > 0, Gaussian scheme).
        if process.lam > 0 and disc.gaussian:
            process.zero_grad()
            terms = DiffFlowObjective(process, StandardNormal(state, dtype=F64), _grid(),
                                      discretizer=disc)(x0)
            terms.loss.backward()
            _assert_all_grads(process)
            assert x0.grad is not None and torch.isfinite(x0.grad).all()
    else:
        tau = ForwardTrajectory(process, x0, _grid(), disc).rsample()
        tau.pow(2).sum().backward()
        _assert_all_grads(process)
        assert x0.grad is not None and x0.grad.abs().sum() > 0
        if disc.gaussian and list(process.parameters()):  # through the transition means
            x0.grad = None
            process.zero_grad()
            p_F = ForwardTrajectory(process, x0, _grid(), disc)
            p_F.log_prob(tau.detach()).sum().backward()
            _assert_all_grads(process)


@params("dtype", [F32, F64])
def test_objectives_propagate_dtype(dtype):
    x0 = _x((2,), dtype)
    reverse, _ = _build("reverse_lam1", (2,), dtype)
    terms = DiffFlowObjective(reverse, StandardNormal((2,), dtype=dtype), _grid(dtype))(x0)
    assert terms.nelbo.dtype == terms.step_terms.dtype == terms.x_final.dtype == dtype
    flow = ForwardSDE(TinyMLP(2, dtype=dtype), 0.0)
    assert FlowNLL(flow, StandardNormal((2,), dtype=dtype), _grid(dtype))(x0).nll.dtype == dtype
    assert DenoisingScoreMatching(VPSDE(), TinyMLP(2, dtype=dtype))(x0).loss.dtype == dtype
    x = sample(reverse, StandardNormal((2,), dtype=dtype), _grid(dtype), (4,))
    assert x.dtype == dtype


def test_flow_nll_gradients_reach_every_parameter():
    flow = ForwardSDE(TinyMLP(2), 0.0)
    FlowNLL(flow, StandardNormal((2,), dtype=F64), _grid())(_x((2,))).loss.backward()
    _assert_all_grads(flow)


def test_score_matching_gradients_reach_every_parameter():
    score = TinyMLP(2)
    DenoisingScoreMatching(VPSDE(), score)(_x((2,))).loss.backward()
    _assert_all_grads(score)


# -- pickling, torch.save, repr ------------------------------------------------------------------
def _round_trips(obj):
    yield pickle.loads(pickle.dumps(obj))
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    buffer.seek(0)
    yield torch.load(buffer, weights_only=False)


@params("pname", sorted(PROCESSES))
@params("state", list(STATES.values()), ids=list(STATES))
def test_process_round_trip(pname, state):
    process, _ = _build(pname, state)
    x, t = _x(state), torch.tensor(0.3, dtype=F64)
    with torch.no_grad():
        expected = process(x, t)
        for copy in _round_trips(process):
            assert type(copy) is type(process)
            for a, b in zip(copy(x, t), expected):
                torch.testing.assert_close(a, b, rtol=0, atol=0)
            assert repr(copy) == repr(process)


@params("dname", sorted(DISCRETIZERS))
def test_discretizer_round_trip_and_repr(dname):
    disc = DISCRETIZERS[dname]()
    for copy in _round_trips(disc):
        assert copy == disc and type(copy) is type(disc)
    assert type(disc).__name__ in repr(disc)
    for attr in ("strong_order", "strong_order_additive", "weak_order"):
        assert isinstance(getattr(disc, attr), float), attr


def test_grid_round_trip_and_repr():
    grid = TimeGrid.power(7, 1e-3, 0.05, 0.9, dtype=F64).jitter(torch.Generator().manual_seed(0))
    for copy in _round_trips(grid):
        assert copy == grid and copy.dtype == F64
    assert "n_steps=7" in repr(grid) and "float64" in repr(grid)


def test_objectives_round_trip():
    reverse, _ = _build("reverse_lam1", (2,))
    x0 = _x((2,))
    noise = torch.randn((4,) + x0.shape, dtype=F64, generator=torch.Generator().manual_seed(3))
    objective = DiffFlowObjective(reverse, StandardNormal((2,), dtype=F64), _grid())
    flow = FlowNLL(ForwardSDE(TinyMLP(2), 0.0), StandardNormal((2,), dtype=F64), _grid())
    dsm = DenoisingScoreMatching(VESDE(), TinyMLP(2), weighting="likelihood")
    with torch.no_grad():
        expected = objective(x0, noise=noise).nelbo, flow(x0).nll
        for copy in _round_trips(objective):
            torch.testing.assert_close(copy(x0, noise=noise).nelbo, expected[0], rtol=0, atol=0)
        for copy in _round_trips(flow):
            torch.testing.assert_close(copy(x0).nll, expected[1], rtol=0, atol=0)
        for copy in _round_trips(dsm):
            gen = torch.Generator().manual_seed(5)
            torch.testing.assert_close(copy(x0, generator=gen).values,
                                       dsm(x0, generator=torch.Generator().manual_seed(5)).values)


@params("pname", sorted(PROCESSES))
def test_repr_is_informative(pname):
    process, is_reverse = _build(pname, (2,))
    text = repr(process)
    assert type(process).__name__ in text
    if is_reverse:
        assert f"lam={process.lam}" in text
        assert type(process.forward_sde).__name__ in text
    if isinstance(process, VPSDE):
        assert "beta_min" in text and "beta_max" in text
    if isinstance(process, VESDE):
        assert "sigma_min" in text and "sigma_max" in text
    if isinstance(process, ForwardSDE):
        assert "TinyMLP" in text
        assert ("0.5" in text) or ("g0=0.3" in text)  # the diffusion schedule
    objective_repr = repr(DiffFlowObjective(*(_build("reverse_lam1", (2,))[:1]),
                                            StandardNormal((2,), dtype=F64), _grid()))
    assert "DiffFlowObjective" in objective_repr and "ReverseSDE" in objective_repr


# -- the distribution contract -------------------------------------------------------------------
def _p_F(state=(2,), batch=B, n=4):
    return ForwardTrajectory(_build("forward_mlp", state)[0], _x(state, batch=batch), _grid(n=n))


def _p_B(state=(2,), batch=B, n=4, lam_name="reverse_lam1"):
    prior = _prior(state, batch=batch) if batch else _prior(state)
    return BackwardTrajectory(_build(lam_name, state)[0], prior, _grid(n=n))


@params("which", ["forward", "backward", "backward_unbatched"])
@params("sample_shape", [(), (2,), (2, 3)])
@params("state", list(STATES.values()), ids=list(STATES))
def test_shape_rule(which, sample_shape, state):
    p = {"forward": lambda: _p_F(state), "backward": lambda: _p_B(state),
         "backward_unbatched": lambda: _p_B(state, batch=None)}[which]()
    expected = torch.Size(sample_shape) + p.batch_shape + p.event_shape
    assert p.shape(sample_shape) == expected
    assert p.event_shape == (5,) + state
    with torch.no_grad():
        tau = p.rsample(sample_shape)
        assert tau.shape == expected
        assert p.sample(sample_shape).shape == expected
        assert p.log_prob(tau).shape == torch.Size(sample_shape) + p.batch_shape


def test_expand():
    p_F = _p_F(batch=1).expand((4,))
    assert p_F.batch_shape == (4,) and p_F.rsample().shape == (4, 5, 2)
    p_B = _p_B(batch=None).expand((4,))
    assert p_B.batch_shape == (4,) and p_B.rsample().shape == (4, 5, 2)
    p_B = _p_B().expand((2, B))
    assert p_B.batch_shape == (2, B) and p_B.rsample().shape == (2, B, 5, 2)


def test_rsample_is_differentiable_and_sample_is_not():
    p = _p_B()
    assert p.rsample().requires_grad
    assert not p.sample().requires_grad
    assert p.has_rsample


def test_pyro_sample_trace_and_condition():
    p_B = _p_B()

    def model():
        return pyro.sample("tau", p_B)

    trace = poutine.trace(model).get_trace()
    tau = trace.nodes["tau"]["value"]
    assert tau.shape == p_B.shape()
    torch.testing.assert_close(trace.log_prob_sum(), p_B.log_prob(tau).sum())

    observed = p_B.sample()
    conditioned = poutine.trace(poutine.condition(model, data={"tau": observed})).get_trace()
    assert torch.equal(conditioned.nodes["tau"]["value"], observed)
    torch.testing.assert_close(conditioned.log_prob_sum(), p_B.log_prob(observed).sum())

    # A forward trajectory inside a plate over its batch.
    p_F = _p_F()

    def plated():
        with pyro.plate("data", B):
            return pyro.sample("tau", p_F)

    trace = poutine.trace(plated).get_trace()
    torch.testing.assert_close(trace.log_prob_sum(),
                               p_F.log_prob(trace.nodes["tau"]["value"]).sum())


def test_kl_divergence_shape_and_expectation():
    """kl_divergence(p_F, p_B) is a one-sample estimate of the nelbo: shape batch_shape, and its
    mean over many samples agrees with the objective's within the combined standard error."""
    state, n = (2,), 4
    reverse, _ = _build("reverse_lam1", state)
    x0 = _x(state, batch=1).expand(4000, 2)
    p_F = ForwardTrajectory(reverse.forward_sde, x0, _grid(n=n))
    p_B = BackwardTrajectory(reverse, _prior(state, batch=4000), _grid(n=n))
    torch.manual_seed(11)
    with torch.no_grad():
        kl = kl_divergence(p_F, p_B)
        nelbo = DiffFlowObjective(reverse, StandardNormal(state, dtype=F64), _grid(n=n))(
            x0, generator=torch.Generator().manual_seed(12)).nelbo
    assert kl.shape == p_F.batch_shape == (4000,)
    se = math.sqrt(kl.var() / kl.numel() + nelbo.var() / nelbo.numel())
    assert abs(float(kl.mean() - nelbo.mean())) < 4 * se
    assert kl.std() > 0  # a Monte Carlo estimate, not a constant
    small = kl_divergence(_p_F(), _p_B())
    assert small.shape == (B,)
    small.sum().backward()  # reparameterized: differentiable in the parameters


@pytest.mark.slow
def test_backward_trajectory_goodness_of_fit():
    """pyro's goodness-of-fit between ``sample`` and ``log_prob`` (2-D events: N = 1, d = 1)."""
    reverse = ReverseSDE(ForwardSDE(TinyMLP(1), 0.8), TinyMLP(1), 0.7)
    prior = Independent(Normal(torch.zeros(1, dtype=F64), torch.ones(1, dtype=F64)), 1)
    p_B = BackwardTrajectory(reverse, prior, TimeGrid.uniform(1, 0.1, 0.6, dtype=F64))
    torch.manual_seed(0)
    with torch.no_grad():
        tau = p_B.sample((4000,))
        probs = p_B.log_prob(tau).exp()
    assert auto_goodness_of_fit(tau.reshape(4000, -1), probs) > 1e-3


@pytest.mark.slow
def test_forward_trajectory_goodness_of_fit():
    """Density of x_{1:N} given x0 (N = 2, d = 1): goodness of fit on the free coordinates."""
    process = ForwardSDE(TinyMLP(1), LinearSchedule(0.5, 1.0))
    p_F = ForwardTrajectory(process, torch.ones(1, 1, dtype=F64),
                            TimeGrid.uniform(2, 0.0, 0.5, dtype=F64))
    torch.manual_seed(1)
    with torch.no_grad():
        tau = p_F.sample((4000,))
        probs = p_F.log_prob(tau).exp().reshape(-1)
    assert auto_goodness_of_fit(tau[:, 0, 1:].reshape(4000, -1), probs) > 1e-3


def test_cuda_flag_matches_marker():
    # Guard: the gpu marker skips exactly when no CUDA device is visible.
    assert HAS_CUDA == torch.cuda.is_available()

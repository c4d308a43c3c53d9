"""One path through the parts (issue 12): a user's scheme subclass, schedule or additive process
gets the same numbers as the built-in ones, through the same interface.

For random additive processes (DiffFlow's ``ForwardSDE`` with built-in and user schedules, and a
user's own ``SDE`` subclass), grids and lambda, in float64:

- the DiffFlow terms, their gradients (every parameter and x0) and the samples are identical
  whether the scheme is ``EulerMaruyama`` or a trivial subclass of it;
- they equal the generic transition-based path (a subclass that declares no affine steps) and a
  direct transcription of the two step equations written here, independently of the library.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sdeflow import (
    SDE,
    BackwardTrajectory,
    ConstantSchedule,
    DiffFlowObjective,
    EulerMaruyama,
    ForwardSDE,
    LinearSchedule,
    ReverseSDE,
    Schedule,
    StandardNormal,
    TimeGrid,
    sample,
)

F64 = torch.float64


class MyEuler(EulerMaruyama):
    """A user's trivial subclass: must take the same (fused) path."""


class GenericEuler(EulerMaruyama):
    """Euler–Maruyama without declared affine steps: the transition-based path."""

    def affine_steps(self, sde, t, dt):
        return None


class SqrtSchedule(Schedule):
    """A user's schedule, g(t) = c sqrt(1 + t), shaped like t."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, t):
        return self.c * (1 + t).sqrt()


class ScalarSchedule(Schedule):
    """A user's schedule returning a 0-d tensor (broadcast by the Schedule contract)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, t):
        return torch.tensor(self.c, dtype=t.dtype)


class Net(torch.nn.Module):
    """A small time-dependent network f(x, t) = W2 tanh(W1 x + a t) (2-D states)."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.w1 = torch.nn.Parameter(torch.randn(2, 8, generator=gen, dtype=F64) / 2)
        self.a = torch.nn.Parameter(torch.randn(8, generator=gen, dtype=F64))
        self.w2 = torch.nn.Parameter(torch.randn(8, 2, generator=gen, dtype=F64) / 3)

    def forward(self, x, t):
        t = t.reshape(-1, 1) if t.dim() else t
        return torch.tanh(x @ self.w1 + self.a * t) @ self.w2


class MyProcess(SDE):
    """A user's own additive process: dx = f(x, t) dt + c (1 + t) dw."""

    additive_noise = True

    def __init__(self, net: Net, c: float) -> None:
        super().__init__()
        self.net, self.c = net, c

    def drift(self, x, t):
        return self.net(x, t)

    def diffusion(self, x, t):
        g = self.diffusion_scale(t)
        return g.reshape(-1, 1) if g.dim() else g

    def diffusion_scale(self, t):
        return self.c * (1 + t)


def _g(forward, t: float) -> float:
    return float(forward.diffusion_scale(torch.tensor([t], dtype=F64))[0])


def _direct_terms(forward, score, lam, grid, x0, noise, prior):
    """The negative ELBO from the two step equations, written out (DESIGN §1)."""
    ts, d = grid.ts.tolist(), x0[0].numel()
    x, steps = x0, []
    for i in range(grid.n_steps):
        t, t1 = ts[i], ts[i + 1]
        dt = t1 - t
        g0, g1 = _g(forward, t), _g(forward, t1)
        x1 = x + forward.drift(x, torch.tensor(t, dtype=F64)) * dt + g0 * math.sqrt(dt) * noise[i]
        t1_ = torch.tensor(t1, dtype=F64)
        b = forward.drift(x1, t1_) - 0.5 * (1 + lam**2) * g1**2 * score(x1, t1_)
        std_b = lam * g1 * math.sqrt(dt)
        delta_b = (x - (x1 - b * dt)) / std_b
        steps.append(d * math.log(std_b / (g0 * math.sqrt(dt)))
                     + 0.5 * (delta_b.square().sum(-1) - noise[i].square().sum(-1)))
        x = x1
    step_terms = torch.stack(steps, -1)
    return step_terms, -prior().log_prob(x) + step_terms.sum(-1)


def _process(kind: str, c: float, seed: int):
    net = Net(seed)
    if kind == "user-process":
        return MyProcess(net, c), net
    schedule = {"constant": ConstantSchedule(c), "linear": LinearSchedule(c, 2 * c, 0.0, 1.0),
                "user-schedule": SqrtSchedule(c), "scalar-schedule": ScalarSchedule(c)}[kind]
    return ForwardSDE(net, schedule), net


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(["constant", "linear", "user-schedule", "scalar-schedule",
                             "user-process"]),
       c=st.floats(0.2, 1.5), lam=st.floats(0.2, 2.0), n_steps=st.integers(1, 6),
       exponent=st.floats(0.4, 1.5), jitter=st.booleans(), seed=st.integers(0, 2**16))
def test_euler_subclass_generic_and_direct_agree(kind, c, lam, n_steps, exponent, jitter, seed):
    forward, net = _process(kind, c, seed)
    score_net = Net(seed + 1)
    reverse = ReverseSDE(forward, score_net, lam=lam)
    gen = torch.Generator().manual_seed(seed)
    grid = TimeGrid.power(n_steps, 1e-3, 0.4, exponent, dtype=F64)
    grid = grid.jitter(gen) if jitter and n_steps > 1 else grid
    prior = StandardNormal((2,), dtype=F64)
    x0 = torch.randn(5, 2, generator=gen, dtype=F64)
    noise = torch.randn(n_steps, 5, 2, generator=gen, dtype=F64)
    params = [*net.parameters(), *score_net.parameters()]

    results = {}
    for name, scheme in (("euler", EulerMaruyama()), ("subclass", MyEuler()),
                         ("generic", GenericEuler())):
        x = x0.clone().requires_grad_(True)
        terms = DiffFlowObjective(reverse, prior, grid, discretizer=scheme)(x, noise=noise)
        grads = torch.autograd.grad(terms.loss, [x, *params])
        x_final = torch.randn(7, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
        samples = sample(reverse, prior, grid, discretizer=scheme, x_final=x_final,
                         generator=torch.Generator().manual_seed(seed + 2))
        results[name] = (terms.step_terms.detach(), terms.nelbo.detach(), grads, samples)

    with torch.no_grad():
        direct_steps, direct_nelbo = _direct_terms(forward, score_net, lam, grid, x0, noise, prior)
    ref = results["euler"]
    for name in ("subclass", "generic"):
        other = results[name]
        torch.testing.assert_close(other[0], ref[0], rtol=0, atol=1e-10)
        torch.testing.assert_close(other[1], ref[1], rtol=0, atol=1e-10)
        for a, b in zip(other[2], ref[2]):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
        torch.testing.assert_close(other[3], ref[3], rtol=0, atol=1e-10)
    torch.testing.assert_close(ref[0], direct_steps, rtol=0, atol=1e-10)
    torch.testing.assert_close(ref[1], direct_nelbo, rtol=0, atol=1e-10)


def test_subclass_takes_the_fused_path_and_generic_does_not():
    forward = ForwardSDE(Net(0), 0.5)
    grid = TimeGrid.uniform(3, 0.1, 0.5, dtype=F64)
    assert MyEuler().stepper(forward, grid).affine is not None
    assert GenericEuler().stepper(forward, grid).affine is None


def test_lam_zero_draws_no_noise_on_either_path():
    """The probability-flow ODE draws no noise whatever the scheme's path, so a generator's
    state after sampling is the same on both."""
    reverse = ReverseSDE(ForwardSDE(Net(0), 0.5), Net(1), lam=0.0)
    grid, prior = TimeGrid.uniform(4, 0.1, 0.5, dtype=F64), StandardNormal((2,), dtype=F64)
    states = []
    for scheme in (EulerMaruyama(), GenericEuler()):
        gen = torch.Generator().manual_seed(3)
        sample(reverse, prior, grid, 3, discretizer=scheme, generator=gen)
        states.append(gen.get_state())
    assert torch.equal(states[0], states[1])
    assert torch.equal(states[0], torch.Generator().manual_seed(3).get_state())


def test_constructors_draw_no_random_numbers_and_priors_are_accepted_alike():
    """Building a BackwardTrajectory leaves the global RNG alone, and it takes a prior module as
    the objectives and ``sample`` do; ``sample_shape`` may be an int."""
    reverse = ReverseSDE(ForwardSDE(Net(0), 0.5), Net(1))
    grid, prior = TimeGrid.uniform(3, 0.1, 0.5, dtype=F64), StandardNormal((2,), dtype=F64)
    state = torch.get_rng_state()
    p_b = BackwardTrajectory(reverse, prior, grid)
    DiffFlowObjective(reverse, prior, grid)
    assert torch.equal(torch.get_rng_state(), state)
    assert p_b.rsample(4).shape == (4, 4, 2)
    assert sample(reverse, prior, grid, 4).shape == sample(reverse, prior, grid, (4,)).shape

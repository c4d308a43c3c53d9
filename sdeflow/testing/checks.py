r"""Checks on a step scheme (:class:`~sdeflow.discretizers.Discretizer`), for users' test suites.

:func:`check_discretizer` runs them all and returns a :class:`~sdeflow.testing.Report`:

- ``shapes``: ``step`` (and ``transition``) keep shape, dtype and device for states of any shape
  and ``t`` of shape ``()`` or ``(B,)``, and are differentiable in ``x``;
- ``transition``: a Gaussian scheme's step is affine in the noise with its declared transition,
  ``step(δ) == mean + std·δ`` for random ``δ`` (so ``std`` does not depend on ``δ``), and
  ``transition(drift=b)`` agrees with ``transition()``;
- ``affine_steps``: where the scheme declares affine steps (the fused path every consumer
  takes), they equal its ``step``;
- ``I1_*`` / ``I2_*``: DESIGN §2 inside :class:`~sdeflow.ForwardTrajectory`,
  :class:`~sdeflow.BackwardTrajectory` and :class:`~sdeflow.DiffFlowObjective` (Gaussian schemes);
- ``strong_order[p]`` / ``weak_order[p]``: observed orders on the problems of
  :mod:`sdeflow.testing.problems` (nested grids, one shared Brownian path) against the declared
  ``strong_order`` / ``strong_order_additive`` / ``weak_order`` (``weak_order_additive`` where the
  scheme declares one), within ``tol`` = 0.4 (diffrax's rule).

A process that the scheme declines (:meth:`~sdeflow.discretizers.Discretizer.declines`) is
skipped; any error raised on a process it accepts is a failure.
"""

from __future__ import annotations

import torch
from torch import Tensor

from sdeflow.discretizers.base import Discretizer
from sdeflow.grids import TimeGrid
from sdeflow.objectives.diffflow import DiffFlowObjective
from sdeflow.priors import StandardNormal
from sdeflow.processes import SDE, VPSDE, ForwardSDE, ReverseSDE
from sdeflow.schedules import LinearSchedule
from sdeflow.testing.orders import check_orders
from sdeflow.testing.problems import Problem
from sdeflow.testing.report import CheckResult, Report
from sdeflow.trajectories import BackwardTrajectory, ForwardTrajectory

__all__ = ["check_discretizer", "check_shapes", "check_transition", "check_affine_steps",
           "check_trajectory_identities", "default_processes"]

_SHAPES = ((3, 2), (2, 1, 3, 3))


def _drift(x: Tensor, t: Tensor) -> Tensor:
    """A nonlinear, time-dependent drift for the kit's DiffFlow-like process."""
    return torch.tanh(x) * (1.0 + t.reshape(t.shape + (1,) * (x.dim() - t.dim()))) - 0.5 * x


def _score(x: Tensor, t: Tensor) -> Tensor:
    """A nonlinear score for the kit's reverse processes."""
    return -x + 0.3 * torch.sin(2.0 * x)


def default_processes() -> list[tuple[str, SDE, ReverseSDE]]:
    """``(name, forward, reverse)`` pairs the shape and identity checks run on: a nonlinear
    DiffFlow-like process with a linear (time-varying) diffusion schedule, and a VP process."""
    fwd = ForwardSDE(_drift, LinearSchedule(0.6, 1.2))
    vp = VPSDE(0.1, 4.0)
    return [("diffflow", fwd, ReverseSDE(fwd, _score, lam=1.0)),
            ("vp", vp, ReverseSDE(vp, _score, lam=0.8))]


def _applies(scheme: Discretizer, sde: SDE, x: Tensor, t: Tensor, dt: Tensor) -> str | None:
    """``None`` if ``scheme`` steps ``sde``; else the reason it declares
    (:meth:`~sdeflow.discretizers.Discretizer.declines`)."""
    return scheme.declines(sde)


def _max_err(a: Tensor, b: Tensor, scale: Tensor | None = None) -> float:
    """Largest difference relative to ``1 + |scale|`` (``scale = b`` by default)."""
    a, b = a.detach(), b.detach()
    scale = b if scale is None else scale.detach()
    return float(((a - b).abs() / (1.0 + scale.abs())).max())


def _tol(dtype: torch.dtype) -> float:
    return 1e3 * torch.finfo(dtype).eps


def check_shapes(scheme: Discretizer, sde: SDE, x: Tensor, t: Tensor, dt: Tensor) -> CheckResult:
    """``step``/``transition`` keep shape, dtype and device, accept ``t`` of shape ``()`` and
    ``(B,)`` alike, stay finite and pass gradients to ``x``."""
    name, problems = f"shapes[{tuple(x.shape[1:])}, {x.dtype}]", []
    noise = torch.randn(x.shape, dtype=x.dtype, device=x.device)
    x = x.detach().requires_grad_(True)
    y = scheme.step(sde, x, t, dt, noise)
    if not isinstance(y, Tensor):
        return CheckResult(name, "fail", f"step returned {type(y).__name__}, not a tensor")
    for what, got, want in (("shape", tuple(y.shape), tuple(x.shape)), ("dtype", y.dtype, x.dtype),
                            ("device", y.device, x.device)):
        if got != want:
            problems.append(f"step {what} {got}, expected {want}")
    if not problems:
        if not bool(torch.isfinite(y).all()):
            problems.append("step is not finite")
        y_batch_t = scheme.step(sde, x, t.expand(x.shape[0]), dt, noise)
        if _max_err(y_batch_t, y) > _tol(x.dtype):
            problems.append(f"step with t of shape (B,) differs from t of shape () by "
                            f"{_max_err(y_batch_t, y):.2e}")
        (grad,) = torch.autograd.grad(y.sum(), x, allow_unused=True)
        if grad is None or not bool(torch.isfinite(grad).all()):
            problems.append("step does not pass finite gradients to x")
    if scheme.gaussian and not problems:
        mean, std = scheme.transition(sde, x, t, dt)
        if tuple(mean.shape) != tuple(x.shape) or mean.dtype != x.dtype:
            problems.append(f"transition mean {tuple(mean.shape)} {mean.dtype}, expected "
                            f"{tuple(x.shape)} {x.dtype}")
        try:
            if torch.broadcast_shapes(std.shape, x.shape) != x.shape:
                problems.append(f"transition std {tuple(std.shape)} does not broadcast to x")
        except RuntimeError:
            problems.append(f"transition std {tuple(std.shape)} does not broadcast to x")
    if problems:
        return CheckResult(name, "fail", "; ".join(problems))
    return CheckResult(name, "pass", "step" + (" and transition" if scheme.gaussian else "")
                       + " keep shape, dtype, device; t () or (B,); gradients reach x")


def check_transition(scheme: Discretizer, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, *,
                     n_draws: int = 4, generator: torch.Generator | None = None) -> CheckResult:
    r"""A Gaussian scheme's step equals ``mean + std * noise`` for ``noise = 0`` and ``n_draws``
    random draws (the step is affine in the noise with the declared std), with finite ``std >= 0``
    and ``transition(drift=sde.drift(x, t))`` equal to ``transition()``."""
    name = "transition"
    if not scheme.gaussian:
        return CheckResult(name, "skip", "gaussian = False: the scheme declares no transition")
    with torch.no_grad():
        mean, std = scheme.transition(sde, x, t, dt)
        if not bool(torch.isfinite(std).all() and (std >= 0).all()):
            return CheckResult(name, "fail", "transition std is negative or not finite")
        worst = _max_err(scheme.step(sde, x, t, dt, torch.zeros_like(x)), mean)
        for _ in range(n_draws):
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device)
            worst = max(worst, _max_err(scheme.step(sde, x, t, dt, noise), mean + std * noise))
        mean_d, std_d = scheme.transition(sde, x, t, dt, drift=sde.drift(x, t))
        worst_drift = max(_max_err(mean_d, mean), _max_err(std_d.expand_as(x), std.expand_as(x)))
    tol = _tol(x.dtype)
    if worst > tol:
        return CheckResult(name, "fail", f"step(noise) differs from mean + std*noise by {worst:.3e}"
                           f" (tol {tol:.1e}): the step does not match the declared transition",
                           worst, tol)
    if worst_drift > tol:
        return CheckResult(name, "fail", f"transition(drift=b) differs from transition() by "
                           f"{worst_drift:.3e} (tol {tol:.1e})", worst_drift, tol)
    return CheckResult(name, "pass", f"step(noise) == mean + std*noise to {worst:.1e}", worst, tol)


def check_affine_steps(scheme: Discretizer, sde: SDE, x: Tensor, t: Tensor, dt: Tensor, *,
                       n_draws: int = 4, generator: torch.Generator | None = None
                       ) -> CheckResult:
    r"""Where the scheme declares affine steps on ``sde``
    (:meth:`~sdeflow.discretizers.Discretizer.affine_steps`, which every consumer uses instead of
    :meth:`step`), the declared :math:`\alpha x + \beta\, b(x, t) + \sigma\delta` equals
    ``step(x, t, dt, δ)`` for ``δ = 0`` and ``n_draws`` random draws, and the coefficients of a
    two-step grid are those of each step on its own."""
    name = "affine_steps"
    if not sde.additive_noise:
        return CheckResult(name, "skip", "the process has state-dependent noise")
    ts, dts = torch.stack([t, t + dt]), torch.stack([dt, 0.5 * dt])
    steps = scheme.affine_steps(sde, ts, dts)
    if steps is None:
        return CheckResult(name, "skip", "the scheme declares no affine steps (consumers use step)")
    worst = 0.0
    with torch.no_grad():
        alpha, beta, sigma = (c[0] for c in (steps.alpha, steps.beta, steps.sigma))
        b = sde.drift(x, t)
        for k in range(n_draws + 1):
            noise = (torch.zeros_like(x) if k == 0 else
                     torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device))
            declared = alpha * x + beta * b + sigma * noise
            worst = max(worst, _max_err(scheme.step(sde, x, t, dt, noise), declared))
        single = scheme.affine_steps(sde, ts[1:], dts[1:])
        worst = max(worst, *(_max_err(a[1:], c) for a, c in
                             zip((steps.alpha, steps.beta, steps.sigma),
                                 (single.alpha, single.beta, single.sigma))))
    tol = _tol(x.dtype)
    if worst > tol:
        return CheckResult(name, "fail", f"step differs from the declared affine coefficients by "
                           f"{worst:.3e} (tol {tol:.1e}): every consumer would run another step "
                           f"than step()", worst, tol)
    return CheckResult(name, "pass", f"step == alpha x + beta b + sigma noise to {worst:.1e}",
                       worst, tol)


def check_trajectory_identities(
    scheme: Discretizer, forward: SDE, reverse: ReverseSDE, grid: TimeGrid, x0: Tensor, *,
    generator: torch.Generator | None = None, tag: str = "",
) -> list[CheckResult]:
    r"""DESIGN §2 I1/I2 with ``scheme`` inside the trajectory distributions (Gaussian schemes).

    - ``I1_forward`` / ``I1_backward``: ``step_log_probs`` of :math:`p_F` / :math:`p_B` equal the
      sum of :class:`torch.distributions.Normal` log-densities of the declared transitions;
    - ``I1_objective``: :class:`~sdeflow.DiffFlowObjective`'s step terms equal
      :math:`\log p_F(x_{i+1}|x_i) - \log p_B(x_i|x_{i+1})` and its prior term
      :math:`-\log p_{prior}(x_N)`, for the same noises;
    - ``I2_forward``: ``delta_forward`` of the trajectory driven by :math:`\delta^F` returns it;
    - ``I2_backward``: ``delta_backward`` equals :math:`(x_i - \mathrm{mean}_B)/\mathrm{std}_B`,
      and the backward trajectory driven by those noises from :math:`x_N` is :math:`\tau` again.
    """
    names = ["I1_forward", "I1_backward", "I1_objective", "I2_forward", "I2_backward"]
    names = [f"{n}[{tag}]" if tag else n for n in names]
    if not scheme.gaussian:
        return [CheckResult(n, "skip", "gaussian = False: no trajectory density") for n in names]
    state = tuple(x0.shape[1:])
    prior = StandardNormal(state, dtype=x0.dtype)
    p_f = ForwardTrajectory(forward, x0, grid, scheme)
    p_b = BackwardTrajectory(reverse, prior, grid, scheme)
    n, b = grid.n_steps, x0.shape[0]
    generator = generator or torch.Generator().manual_seed(0)  # reproducible by default
    delta_f = torch.randn((b, n) + state, generator=generator, dtype=x0.dtype).to(x0.device)
    ts, dts = grid.ts, grid.dts
    with torch.no_grad():
        tau = p_f.trajectory_from_noise(delta_f)
        lp_f, lp_b, delta_b, std_f, std_b = [], [], [], [], []
        for i in range(n):
            mean, std = scheme.transition(forward, tau[:, i], ts[i], dts[i])
            std_f.append(std.expand_as(mean))
            normal = torch.distributions.Normal(mean, std.expand_as(mean))
            lp_f.append(normal.log_prob(tau[:, i + 1]).reshape(b, -1).sum(-1))
            mean, std = scheme.transition(reverse, tau[:, i + 1], ts[i + 1], -dts[i])
            normal = torch.distributions.Normal(mean, std.expand_as(mean))
            lp_b.append(normal.log_prob(tau[:, i]).reshape(b, -1).sum(-1))
            delta_b.append((tau[:, i] - mean) / std)
            std_b.append(std.expand_as(mean))
        lp_f, lp_b, delta_b = torch.stack(lp_f, -1), torch.stack(lp_b, -1), torch.stack(delta_b, 1)
        std_f, std_b = torch.stack(std_f, 1), torch.stack(std_b, 1)
        objective = DiffFlowObjective(reverse, prior, grid, discretizer=scheme)
        terms = objective(x0, noise=delta_f.transpose(0, 1).contiguous())
        prior_lp = prior().log_prob(tau[:, -1])
        errs = [
            _max_err(p_f.step_log_probs(tau), lp_f),
            _max_err(p_b.step_log_probs(tau), lp_b),
            max(_max_err(terms.step_terms, lp_f - lp_b), _max_err(terms.prior_term, -prior_lp),
                _max_err(terms.x_final, tau[:, -1])),
            # noises compared in state units (std * delta): a tiny std amplifies rounding in delta
            _max_err(std_f * p_f.delta_forward(tau), std_f * delta_f, tau[:, 1:]),
            max(_max_err(std_b * p_b.delta_backward(tau), std_b * delta_b, tau[:, :-1]),
                _max_err(p_b.trajectory_from_noise(tau[:, -1], delta_b), tau)),
        ]
    tol = 1e2 * _tol(x0.dtype)
    what = ["p_F step log-densities vs Normal log-densities of the transitions",
            "p_B step log-densities vs Normal log-densities of the transitions",
            "DiffFlowObjective terms vs log p_F - log p_B",
            "delta_forward(trajectory_from_noise(delta_F)) vs delta_F",
            "delta_backward vs (x_i - mean_B)/std_B and backward round trip"]
    return [CheckResult(nm, "pass" if e <= tol else "fail", f"{w}: max error {e:.2e} (tol "
                        f"{tol:.1e})", e, tol) for nm, w, e in zip(names, what, errs)]


def check_discretizer(
    scheme: Discretizer, *, n_paths: int = 2000, n_weak_paths: int = 20000,
    levels: tuple[int, ...] = (2, 3, 4, 5, 6), tol: float = 0.4, seed: int = 0,
    problems: list[Problem] | None = None,
) -> Report:
    """Run every check on ``scheme`` (seeded, float64 for identities and orders).

    Arguments:
        scheme: The step scheme (an instance).
        n_paths: Brownian paths for the strong-order estimates.
        n_weak_paths: Paths (antithetic pairs) for the weak-order estimates.
        levels: Nested grids with ``2**k`` steps for ``k`` in ``levels``.
        tol: Allowed ``|observed - declared|`` order.
        seed: Seed of every random draw.
        problems: Order-test problems (:func:`~sdeflow.testing.problems.default_problems`: GBM,
            OU, reverse OU, when ``None``; ``[]`` skips the order checks).

    Returns:
        A :class:`~sdeflow.testing.Report`; ``report.assert_ok()`` raises with the details.
    """
    if not isinstance(scheme, Discretizer):
        got = (f"the class {scheme.__name__}; pass an instance, {scheme.__name__}()"
               if isinstance(scheme, type) else type(scheme).__name__)
        raise TypeError(f"scheme must be a Discretizer instance, got {got}")
    gen = torch.Generator().manual_seed(seed)
    results: list[CheckResult] = []
    t, dt = torch.tensor(0.3, dtype=torch.float64), torch.tensor(0.05, dtype=torch.float64)
    grid = TimeGrid.power(5, 0.05, 0.9, 0.9, dtype=torch.float64).jitter(gen)
    applicable = 0
    for name, forward, reverse in default_processes():
        x = torch.randn((3, 2), generator=gen, dtype=torch.float64)
        reason = _applies(scheme, forward, x, t, dt) or _applies(scheme, reverse, x, t, -dt)
        if reason is not None:
            results.append(CheckResult(f"applies[{name}]", "skip", f"not applicable: {reason}"))
            continue
        applicable += 1
        for sde, sign, kind in ((forward, 1.0, "forward"), (reverse, -1.0, "reverse")):
            x = torch.randn(_SHAPES[1], generator=gen, dtype=torch.float64)
            r = check_affine_steps(scheme, sde.double(), x, t, sign * dt, generator=gen)
            r.name = f"affine_steps[{name}, {kind}]"
            results.append(r)
        for shape in _SHAPES:
            for dtype in (torch.float32, torch.float64):
                x = torch.randn(shape, generator=gen, dtype=dtype)
                for sde, sign in ((forward, 1.0), (reverse, -1.0)):
                    r = check_shapes(scheme, sde.to(dtype), x, t.to(dtype), sign * dt.to(dtype))
                    r.name = r.name.replace("shapes[", f"shapes[{name}, "
                                            f"{'reverse' if sign < 0 else 'forward'}, ")
                    results.append(r)
            forward.double()
            reverse.double()
        if not scheme.gaussian:
            continue
        for sde, sign, kind in ((forward, 1.0, "forward"), (reverse, -1.0, "reverse")):
            x = torch.randn(_SHAPES[1], generator=gen, dtype=torch.float64)
            r = check_transition(scheme, sde, x, t, sign * dt, generator=gen)
            r.name = f"transition[{name}, {kind}]"
            results.append(r)
        for shape in _SHAPES:
            x0 = torch.randn(shape, generator=gen, dtype=torch.float64)
            results += check_trajectory_identities(scheme, forward, reverse, grid, x0,
                                                   generator=gen, tag=f"{name}, {shape[1:]}")
    if not scheme.gaussian:
        results.append(CheckResult("transition", "skip", "gaussian = False: the scheme declares "
                                   "no transition; the transition and I1/I2 checks do not apply"))
    if applicable == 0:
        results.append(CheckResult("applies", "fail", "the scheme applies to none of the kit's "
                                   "processes (it declines all of them)"))
    results += check_orders(scheme, problems, n_paths=n_paths, n_weak_paths=n_weak_paths,
                            levels=levels, tol=tol, seed=seed)
    return Report(type(scheme).__name__, results)


r"""Observed strong and weak orders of a step scheme on problems with known solutions.

On nested uniform grids with :math:`n = 2^k` steps (``k`` in ``levels``), all driven by one Brownian
path (the fine increments summed to coarse ones), the scheme's end values :math:`x^h` are compared
with the problem's solution :math:`x` on the same path:

.. math::
    e_{strong}(h) = E|x^h - x|, \qquad
    e_{weak}(h) = |E[\varphi(x^h) - \varphi(x)]|, \quad \varphi(x) = x,\ x^2,

and the observed order is the least-squares slope of :math:`\log e` against :math:`\log h`; the
observed weak order is the smallest slope over the test functions :math:`\varphi` (a scheme may be
more accurate for some of them, e.g. for the mean of a linear problem). The weak estimate uses
antithetic paths and the solution on the same paths as a control variate; levels whose weak error
is within three standard errors of zero are not resolved by the Monte Carlo sample and are left out
of the fit (a scheme whose weak error is unresolved at all levels passes: nothing contradicts its
declaration). Everything runs in float64 with a seeded generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from sdeflow.discretizers.base import Discretizer
from sdeflow.testing.problems import Problem, default_problems
from sdeflow.testing.report import CheckResult

__all__ = ["OrderMeasurement", "simulate", "measure_orders", "fit_order", "check_orders"]

_REF_FACTOR = 16  # the reference path is this much finer than the finest level
_EXACT = 1e-11  # errors below this (relative to |x0|) mean the scheme is exact on the problem


def simulate(scheme: Discretizer, problem: Problem, dw_fine: Tensor, n_steps: int,
             sde_type: str = "ito") -> Tensor:
    """End values of ``scheme`` on ``problem`` with ``n_steps`` uniform steps, driven by the fine
    Brownian increments ``dw_fine`` of shape ``(paths, K)`` (``K`` a multiple of ``n_steps``)."""
    paths, k = dw_fine.shape
    if k % n_steps:
        raise ValueError(f"the fine grid ({k} cells) must nest n_steps={n_steps}")
    sde = problem.sde(sde_type).to(dw_fine.dtype)
    h = problem.duration / n_steps
    dw = dw_fine.reshape(paths, n_steps, k // n_steps).sum(-1)
    ts = torch.linspace(problem.t0, problem.t1, n_steps + 1, dtype=dw_fine.dtype)
    dt = torch.tensor(-h if problem.reverse else h, dtype=dw_fine.dtype)
    x = torch.full((paths, 1), problem.x0, dtype=dw_fine.dtype)
    with torch.no_grad():
        for i in range(n_steps):
            t = ts[n_steps - i] if problem.reverse else ts[i]
            x = scheme.step(sde, x, t, dt, dw[:, i : i + 1] / math.sqrt(h))
    return x


def fit_order(hs: list[float], errors: list[float]) -> float:
    """Least-squares slope of ``log(errors)`` against ``log(hs)``."""
    lh = torch.tensor(hs, dtype=torch.float64).log()
    le = torch.tensor(errors, dtype=torch.float64).clamp_min(1e-300).log()
    lh_c = lh - lh.mean()
    return float((lh_c * (le - le.mean())).sum() / lh_c.pow(2).sum())


@dataclass
class OrderMeasurement:
    """Errors per level and fitted orders (``None`` where not measurable) on one problem."""

    problem: str
    hs: list[float]
    strong_errors: list[float]
    weak_hs: list[float] = field(default_factory=list)
    weak_errors: dict[str, list[float]] = field(default_factory=dict)
    weak_se: dict[str, list[float]] = field(default_factory=dict)

    @property
    def strong_exact(self) -> bool:
        return max(self.strong_errors) < _EXACT

    @property
    def strong_order(self) -> float:
        return fit_order(self.hs, self.strong_errors)

    def weak_order(self, phi: str) -> float | None:
        """Slope over the resolved levels (error > 3 standard errors); ``None`` if < 3 are."""
        keep = [i for i, (e, s) in enumerate(zip(self.weak_errors[phi], self.weak_se[phi]))
                if e > 3 * s and e > _EXACT]
        if len(keep) < 3:
            return None
        return fit_order([self.weak_hs[i] for i in keep], [self.weak_errors[phi][i] for i in keep])


def measure_orders(scheme: Discretizer, problem: Problem, *, n_paths: int = 2000,
                   n_weak_paths: int = 20000, levels: tuple[int, ...] = (2, 3, 4, 5, 6),
                   weak_levels: tuple[int, ...] | None = None, seed: int = 0) -> OrderMeasurement:
    """Strong and weak errors of ``scheme`` on ``problem`` (see the module docstring)."""
    if n_paths < 2 or n_weak_paths < 4:
        raise ValueError(f"need n_paths >= 2 and n_weak_paths >= 4, got {n_paths}, {n_weak_paths}")
    gen = torch.Generator().manual_seed(seed)
    sde_type = scheme.sde_type
    k_fine = 2 ** max(levels) * _REF_FACTOR
    dw = torch.randn(n_paths, k_fine, generator=gen, dtype=torch.float64)
    dw *= math.sqrt(problem.duration / k_fine)
    x0 = torch.full((n_paths, 1), problem.x0, dtype=torch.float64)
    x_ref = problem.solution(x0, dw)
    hs = [problem.duration / 2**k for k in levels]
    strong = [float((simulate(scheme, problem, dw, 2**k, sde_type) - x_ref).abs().mean())
              for k in levels]
    # weak: fewer levels (coarse ones carry the signal), antithetic pairs, coarser reference
    weak_levels = weak_levels or tuple(levels[:-1])
    weak_hs = [problem.duration / 2**k for k in weak_levels]
    out = OrderMeasurement(problem.name, hs, strong, weak_hs, {"x": [], "x^2": []},
                           {"x": [], "x^2": []})
    half = n_weak_paths // 2
    k_fine = 2 ** max(weak_levels) * _REF_FACTOR
    dw = torch.randn(half, k_fine, generator=gen, dtype=torch.float64)
    dw = torch.cat([dw, -dw]) * math.sqrt(problem.duration / k_fine)
    x0 = torch.full((2 * half, 1), problem.x0, dtype=torch.float64)
    x_ref = problem.solution(x0, dw)
    for k in weak_levels:
        x_h = simulate(scheme, problem, dw, 2**k, sde_type)
        for phi, power in (("x", 1), ("x^2", 2)):
            diff = x_h.pow(power) - x_ref.pow(power)
            pair = 0.5 * (diff[:half] + diff[half:])  # antithetic pairs are independent draws
            out.weak_errors[phi].append(float(pair.mean().abs()))
            out.weak_se[phi].append(float(pair.std() / math.sqrt(half)))
    return out


def _declared(scheme: Discretizer, problem: Problem) -> tuple[float, float]:
    if problem.additive:
        return (scheme.strong_order_additive,
                scheme.weak_order_additive or scheme.weak_order)
    return scheme.strong_order, scheme.weak_order


def check_orders(scheme: Discretizer, problems: list[Problem] | None = None, *,
                 n_paths: int = 2000, n_weak_paths: int = 20000,
                 levels: tuple[int, ...] = (2, 3, 4, 5, 6), tol: float = 0.4,
                 seed: int = 0) -> list[CheckResult]:
    """``strong_order[p]`` and ``weak_order[p]`` results for each problem ``p``."""
    results = []
    for problem in default_problems() if problems is None else problems:
        strong_name, weak_name = f"strong_order[{problem.name}]", f"weak_order[{problem.name}]"
        reason = scheme.declines(problem.sde(scheme.sde_type))
        if reason is not None:
            results += [CheckResult(n, "skip", f"not applicable: {reason}")
                        for n in (strong_name, weak_name)]
            continue
        m = measure_orders(scheme, problem, n_paths=n_paths, n_weak_paths=n_weak_paths,
                           levels=levels, seed=seed)
        strong_declared, weak_declared = _declared(scheme, problem)
        errs = ", ".join(f"{e:.2e}" for e in m.strong_errors)
        if not all(math.isfinite(e) for e in m.strong_errors):
            results.append(CheckResult(strong_name, "fail", f"errors not finite: {errs}"))
        elif m.strong_exact:
            results.append(CheckResult(strong_name, "pass", f"exact here (errors {errs})"))
        else:
            obs = m.strong_order
            diff = abs(obs - strong_declared)
            ok = diff <= tol
            results.append(CheckResult(
                strong_name, "pass" if ok else "fail",
                f"observed {obs:.2f}, declared {strong_declared:g} (|diff| {diff:.2f} "
                f"{'<=' if ok else '>'} tol {tol}); errors at h=T/2^{list(levels)}: {errs}",
                obs, strong_declared))
        # the weak order is the worst over test functions: compare the smallest observed slope
        parts, finite, observed = [], True, {}
        for phi in ("x", "x^2"):
            errs = ", ".join(f"{e:.1e}±{s:.0e}" for e, s in zip(m.weak_errors[phi], m.weak_se[phi]))
            if not all(math.isfinite(e) for e in m.weak_errors[phi]):
                finite = False
                parts.append(f"E[{phi}]: errors not finite")
            elif (obs := m.weak_order(phi)) is None:
                parts.append(f"E[{phi}]: not measurable, error resolved by the Monte Carlo sample "
                             f"at fewer than 3 levels ({errs})")
            else:
                observed[phi] = obs
                parts.append(f"E[{phi}]: observed {obs:.2f} (errors {errs})")
        if not finite:
            results.append(CheckResult(weak_name, "fail", "; ".join(parts), None, weak_declared))
            continue
        if not observed:
            results.append(CheckResult(weak_name, "pass", f"declared {weak_declared:g}; "
                                       + "; ".join(parts), None, weak_declared))
            continue
        worst = min(observed.values())
        diff = abs(worst - weak_declared)
        ok = diff <= tol
        results.append(CheckResult(
            weak_name, "pass" if ok else "fail",
            f"observed {worst:.2f} (worst test function), declared {weak_declared:g} (|diff| "
            f"{diff:.2f} {'<=' if ok else '>'} tol {tol}); " + "; ".join(parts),
            worst, weak_declared))
    return results

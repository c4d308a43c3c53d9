r"""The arithmetic behind :class:`sdeflow.grids.TimeGrid`'s official grids: the S-curve's
not-a-knot cubic through the official knots, and the random training grids' draws (one time
uniform in each gap of a base grid, redrawn until strictly increasing in the target dtype).

Private: the grids' constructors are the interface (:meth:`TimeGrid.s_curve`,
:meth:`TimeGrid.s_curve_random`, :meth:`TimeGrid.power_random`, :meth:`TimeGrid.uniform_random`).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__: list[str] = []

# knots of the official S-curve (utils/scalars.py, STimer, up=True) and its first abscissa
_S_CURVE_X = (0.0, 0.1, 0.2, 0.4, 0.7, 0.9, 1.0)
_S_CURVE_Y = (1e-4, 0.05, 0.10, 0.6, 0.93, 0.98, 1.0)
_S_CURVE_X_START = 1e-4
_MAX_REDRAWS = 100


def _random_base(n_steps: int, what: str, generator: torch.Generator | None,
                 uniforms: Tensor | None) -> Tensor:
    """Check the arguments of a random grid; the fractions ``k / (N - 1)`` of its base."""
    if n_steps < 2:
        raise ValueError(
            f"n_steps must be >= 2 for the random {what} grid (its base of n_steps times "
            f"needs at least one gap to draw in), got {n_steps}"
        )
    if generator is not None and uniforms is not None:
        raise ValueError("pass either generator or uniforms, not both")
    return torch.arange(n_steps, dtype=torch.float64) / (n_steps - 1)


def _draw_in_gaps(base: Tensor, to_time, generator: torch.Generator | None,
                  uniforms: Tensor | None, dtype: torch.dtype | None,
                  device: torch.device | str | None) -> Tensor:
    r"""``to_time`` of the base's ends and of one uniform draw :math:`r_{i-1} + u_i (r_i -
    r_{i-1})` in each gap of the float64 ``base``, cast to ``dtype``; redrawn until the cast
    times are strictly increasing (an error for given ``uniforms``)."""
    n = base.numel() - 1
    if uniforms is not None:
        uniforms = _check_uniforms(uniforms, n)
    dtype = dtype or torch.get_default_dtype()
    gap_lo, gap = base[:-1], base[1:] - base[:-1]
    for _ in range(_MAX_REDRAWS):
        if uniforms is None:
            where = generator.device if generator is not None else "cpu"
            u = torch.rand(n, generator=generator, dtype=torch.float64, device=where).cpu()
        else:
            u = uniforms
        v = torch.cat([base[:1], gap_lo + u * gap, base[-1:]])
        ts = to_time(v).to(dtype=dtype, device=device)
        if (ts[1:] > ts[:-1]).all():
            return ts
        if uniforms is not None:
            raise ValueError(
                f"uniforms put a time on the end of its gap: the times, in {dtype}, are not "
                f"strictly increasing (got {ts.tolist()})"
            )
    raise RuntimeError(  # pragma: no cover - probability below 1e-6 ** _MAX_REDRAWS
        f"no strictly increasing random grid in {dtype} after {_MAX_REDRAWS} draws"
    )


def _check_uniforms(uniforms: Tensor, n: int) -> Tensor:
    if not isinstance(uniforms, Tensor):
        raise TypeError(f"uniforms must be a tensor of shape ({n},), got {type(uniforms)}")
    if tuple(uniforms.shape) != (n,):
        raise ValueError(
            f"uniforms must have shape ({n},) (one per gap, n_steps - 1), got "
            f"{tuple(uniforms.shape)}"
        )
    if not uniforms.is_floating_point():
        raise TypeError(f"uniforms must be a floating-point tensor, got dtype {uniforms.dtype}")
    uniforms = uniforms.detach().to(device="cpu", dtype=torch.float64)
    if not ((uniforms >= 0) & (uniforms < 1)).all():
        raise ValueError(f"uniforms must lie in [0, 1), got {uniforms.tolist()}")
    return uniforms


def _not_a_knot_cubic(knots_x: Tensor, knots_y: Tensor, x: Tensor) -> Tensor:
    r"""The cubic spline through ``(knots_x, knots_y)`` with not-a-knot ends, evaluated at ``x``.

    On :math:`[x_i, x_{i+1}]`, with :math:`h_i = x_{i+1} - x_i` and the second derivatives
    :math:`M_i`,

    .. math:: S(x) = \frac{M_i (x_{i+1} - x)^3 + M_{i+1} (x - x_i)^3}{6 h_i}
        + \left(\frac{y_i}{h_i} - \frac{M_i h_i}{6}\right)(x_{i+1} - x)
        + \left(\frac{y_{i+1}}{h_i} - \frac{M_{i+1} h_i}{6}\right)(x - x_i);

    the first derivative is continuous at every interior knot and the third at the second and
    the second-to-last knot (not-a-knot: the spline of scipy's ``interp1d(kind="cubic")``, and
    ``CubicSpline``'s default). Needs at least four knots; ``x`` must lie inside them.
    """
    n = knots_x.numel()
    h = knots_x[1:] - knots_x[:-1]
    slope = (knots_y[1:] - knots_y[:-1]) / h
    a = torch.zeros(n, n, dtype=knots_x.dtype)
    b = torch.zeros(n, dtype=knots_x.dtype)
    for i in range(1, n - 1):  # continuity of S' at the interior knots
        a[i, i - 1], a[i, i], a[i, i + 1] = h[i - 1], 2 * (h[i - 1] + h[i]), h[i]
        b[i] = 6 * (slope[i] - slope[i - 1])
    # not-a-knot: (M_1 - M_0) / h_0 = (M_2 - M_1) / h_1, and the same at the other end
    a[0, 0], a[0, 1], a[0, 2] = -h[1], h[0] + h[1], -h[0]
    a[-1, -3], a[-1, -2], a[-1, -1] = -h[-1], h[-2] + h[-1], -h[-2]
    m = torch.linalg.solve(a, b)
    i = torch.searchsorted(knots_x, x, right=True).sub(1).clamp(0, n - 2)
    xl, xr, hi = knots_x[i], knots_x[i + 1], h[i]
    return (
        (m[i] * (xr - x) ** 3 + m[i + 1] * (x - xl) ** 3) / (6 * hi)
        + (knots_y[i] / hi - m[i] * hi / 6) * (xr - x)
        + (knots_y[i + 1] / hi - m[i + 1] * hi / 6) * (x - xl)
    )


def _check_steps(n_steps: int, t0: float, t1: float) -> None:
    if not isinstance(n_steps, int) or isinstance(n_steps, bool) or n_steps < 1:
        raise ValueError(f"n_steps must be an integer >= 1, got {n_steps!r}")
    if not t1 > t0:
        raise ValueError(f"t1 must be greater than t0, got t0={t0}, t1={t1}")

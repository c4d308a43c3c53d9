"""The S-curve grid against the official ``STimer(up=True)`` formula, recomputed here with scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sdeflow.grids import TimeGrid, _not_a_knot_cubic

interpolate = pytest.importorskip("scipy.interpolate")

KNOTS_X = [0.0, 0.1, 0.20, 0.4, 0.70, 0.9, 1.0]
KNOTS_Y = [1e-4, 0.05, 0.10, 0.6, 0.93, 0.98, 1.0]


def official_times(n_steps: int, t_start: float, t_end: float) -> np.ndarray:
    """``utils/scalars.py`` ``STimer(n_steps, t_start, t_end, up=True).fix_t_slot``, written
    out from its definition (float64, before its final cast to float32)."""
    spline = interpolate.interp1d(KNOTS_X, KNOTS_Y, kind="cubic")
    x = np.linspace(1e-4, 1.0, n_steps + 1)
    dt = spline(x)
    scale = t_end / (np.sum(dt) + t_start)
    return (np.cumsum(dt) + t_start) * scale


def test_official_config_values():
    # the CIFAR-10 "B" recipe: t_start 1e-3, t_end 0.05, N = 5 ... 75
    for n in range(5, 76):
        ts = TimeGrid.s_curve(n, 1e-3, 0.05, dtype=torch.float64).ts.numpy()
        np.testing.assert_allclose(ts, official_times(n, 1e-3, 0.05), rtol=1e-13, atol=0)


@pytest.mark.parametrize("t0, t1", [(0.0, 1.0), (1e-3, 0.05), (0.3, 2.0)])
@pytest.mark.parametrize("n", [1, 2, 5, 17, 75, 200])
def test_matches_official_formula_on_other_ranges(n, t0, t1):
    ts = TimeGrid.s_curve(n, t0, t1, dtype=torch.float64).ts.numpy()
    np.testing.assert_allclose(ts, official_times(n, t0, t1), rtol=1e-13, atol=0)


def test_float32_like_the_official_tensor():
    ts = TimeGrid.s_curve(30, 1e-3, 0.05, dtype=torch.float32).ts
    expected = torch.from_numpy(official_times(30, 1e-3, 0.05)).float()
    assert ts.dtype == torch.float32
    torch.testing.assert_close(ts, expected, rtol=0, atol=0)  # identical after the cast


def test_default_dtype_and_device():
    g = TimeGrid.s_curve(10, 1e-3, 0.05)
    assert g.dtype == torch.get_default_dtype() and g.device.type == "cpu"


def test_end_points():
    for n in range(5, 76):
        g = TimeGrid.s_curve(n, 1e-3, 0.05, dtype=torch.float64)
        weights = interpolate.CubicSpline(KNOTS_X, KNOTS_Y)(np.linspace(1e-4, 1.0, n + 1))
        assert g.t1 == 0.05  # exactly
        # t_0 is (t_start + w_0) scaled, not t_start itself
        first = (1e-3 + weights[0]) * 0.05 / (1e-3 + weights.sum())
        assert g.t0 == pytest.approx(first, rel=1e-13)
        assert 0 < g.t0 < 1e-3


def test_steps_are_the_spline_samples():
    """dt_k = h(x_{k+1}) t_1 / (t_0 + sum w): increasing, shortest first, longest last."""
    for n in range(5, 76):
        g = TimeGrid.s_curve(n, 1e-3, 0.05, dtype=torch.float64)
        dts = g.dts.numpy()
        assert (dts > 0).all()
        assert (np.diff(dts) > 0).all()
        x = np.linspace(1e-4, 1.0, n + 1)
        weights = interpolate.CubicSpline(KNOTS_X, KNOTS_Y)(x)
        np.testing.assert_allclose(dts * (1e-3 + weights.sum()) / 0.05, weights[1:], rtol=1e-10)
        # short steps near t = 0, a plateau of long ones at the end
        assert dts[0] < 0.2 * dts[-1]
        assert dts[-1] < 1.2 * dts[n // 2 + n // 4]


def test_spline_is_scipys_not_a_knot_cubic():
    rng = np.random.default_rng(0)
    for n_knots in (4, 5, 7, 10):
        x = np.sort(rng.uniform(-1.0, 2.0, n_knots))
        y = rng.normal(size=n_knots)
        at = np.concatenate([x, rng.uniform(x[0], x[-1], 50)])
        ours = _not_a_knot_cubic(*(torch.from_numpy(v) for v in (x, y, at))).numpy()
        np.testing.assert_allclose(ours, interpolate.interp1d(x, y, kind="cubic")(at),
                                   rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(ours, interpolate.CubicSpline(x, y)(at), rtol=1e-10,
                                   atol=1e-12)
        np.testing.assert_allclose(ours[:n_knots], y, rtol=1e-12, atol=1e-12)


def test_a_cubic_is_reproduced_exactly():
    # a not-a-knot spline through samples of one cubic is that cubic (independent of scipy)
    x = torch.tensor([0.0, 0.3, 0.5, 1.1, 1.2], dtype=torch.float64)
    cubic = lambda v: 2 * v**3 - v**2 + 0.5 * v - 3  # noqa: E731
    at = torch.linspace(0.0, 1.2, 37, dtype=torch.float64)
    torch.testing.assert_close(_not_a_knot_cubic(x, cubic(x), at), cubic(at), rtol=1e-12,
                               atol=1e-12)


@pytest.mark.parametrize(
    "args, match",
    [
        ((0, 1e-3, 0.05), "n_steps"),
        ((-3, 1e-3, 0.05), "n_steps"),
        ((2.5, 1e-3, 0.05), "n_steps"),
        ((True, 1e-3, 0.05), "n_steps"),
        ((10, 0.05, 0.05), "t1 must be greater than t0"),
        ((10, 0.1, 0.05), "t1 must be greater than t0"),
        ((10, -1e-3, 0.05), "t0 must be >= 0"),
        ((10, float("nan"), 0.05), "t1 must be greater than t0"),
    ],
)
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        TimeGrid.s_curve(*args)


# -- the random S-curve grid (STimer.rand) -------------------------------------------------------


def official_base(n_steps: int, t_start: float, t_end: float) -> np.ndarray:
    """``STimer.random_t_slot`` in float64: the fixed times, linearly interpolated (scipy's
    ``interp1d``, as the official ``time_fn``) at the ``n_steps`` abscissae
    ``linspace(1e-4, 1, n_steps)``."""
    time_fn = interpolate.interp1d(np.linspace(1e-4, 1.0, n_steps + 1),
                                   official_times(n_steps, t_start, t_end))
    return time_fn(np.linspace(1e-4, 1.0, n_steps))


def official_rand(n_steps: int, t_start: float, t_end: float, ratio: np.ndarray) -> np.ndarray:
    """``STimer.rand()`` with its ``torch.rand(num_steps - 1)`` replaced by ``ratio``."""
    slot = official_base(n_steps, t_start, t_end)
    mid = ratio * (slot[1:] - slot[:-1]) + slot[:-1]
    return np.concatenate([slot[:1], mid, slot[-1:]])


@pytest.mark.parametrize("t0, t1", [(1e-3, 0.05), (0.0, 1.0), (0.3, 2.0)])
@pytest.mark.parametrize("n", [2, 3, 5, 30, 75])
def test_random_matches_official_formula(n, t0, t1):
    rng = np.random.default_rng(n)
    for _ in range(3):
        u = rng.uniform(size=n - 1)
        g = TimeGrid.s_curve_random(n, t0, t1, uniforms=torch.from_numpy(u),
                                    dtype=torch.float64)
        assert g.n_steps == n and len(g) == n + 1  # the official N is the number of steps
        np.testing.assert_allclose(g.ts.numpy(), official_rand(n, t0, t1, u), rtol=1e-12,
                                   atol=0)


def test_random_with_the_official_float32_draws():
    """Official uniforms (float32 ``torch.rand``) and the official float32 arithmetic: ours
    rounds once (float64 to float32), the official code up to five times (base ends, gap,
    product, sum) on terms no larger than twice the time: within 8 float32 half-ulps."""
    for n in (5, 10, 20, 30, 50, 75):  # the CIFAR-10 "B" schedule
        slot = torch.from_numpy(official_base(n, 1e-3, 0.05)).float()
        ratio = torch.rand(n - 1, generator=torch.Generator().manual_seed(n))
        official = torch.cat([slot[:1], ratio * (slot[1:] - slot[:-1]) + slot[:-1], slot[-1:]])
        ours = TimeGrid.s_curve_random(n, 1e-3, 0.05, uniforms=ratio, dtype=torch.float32).ts
        assert ours.dtype == torch.float32
        torch.testing.assert_close(ours, official, rtol=8 * 2.0**-24, atol=0)
        assert ours[0] == official[0] and ours[-1] == official[-1] == torch.tensor(0.05)


def test_random_generator_draws_float64_uniforms():
    for n in (2, 7, 30):
        g = TimeGrid.s_curve_random(n, 1e-3, 0.05, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(11))
        u = torch.rand(n - 1, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
        np.testing.assert_allclose(g.ts.numpy(), official_rand(n, 1e-3, 0.05, u.numpy()),
                                   rtol=1e-12, atol=0)
    torch.manual_seed(4)
    a = TimeGrid.s_curve_random(9, 1e-3, 0.05)
    torch.manual_seed(4)
    assert TimeGrid.s_curve_random(9, 1e-3, 0.05) == a  # the global generator by default
    assert a.dtype == torch.get_default_dtype() and a.device.type == "cpu"


def test_random_end_points_increasing_and_inside_the_gaps():
    gen = torch.Generator().manual_seed(0)
    for n in range(2, 76):
        fixed = TimeGrid.s_curve(n, 1e-3, 0.05, dtype=torch.float64)
        base = official_base(n, 1e-3, 0.05)
        for dtype in (torch.float64, torch.float32):
            g = TimeGrid.s_curve_random(n, 1e-3, 0.05, generator=gen, dtype=dtype)
            assert g.n_steps == n and g.dtype == dtype
            # the end points are the fixed grid's, exactly
            assert g.ts[0] == fixed.ts[0].to(dtype) and g.ts[-1] == fixed.ts[-1].to(dtype)
            assert g.t1 == pytest.approx(0.05, rel=0, abs=0 if dtype == torch.float64 else 1e-9)
            assert (g.dts > 0).all()
        ts = g.ts.double().numpy()
        # t_i in the gap [r_{i-1}, r_i] of the base (float32 rounding may land on an end)
        assert (ts[1:-1] >= base[:-1].astype(np.float32)).all()
        assert (ts[1:-1] <= base[1:].astype(np.float32)).all()
        g = TimeGrid.s_curve_random(n, 1e-3, 0.05, generator=gen, dtype=torch.float64)
        ts = g.ts.numpy()
        assert (ts[1:-1] >= base[:-1] * (1 - 1e-12)).all()
        assert (ts[1:-1] < base[1:] * (1 + 1e-12)).all()


def test_random_is_not_a_jitter_of_the_fixed_grid():
    # all uniforms 1/2: every interior time is the midpoint of its base gap, not T_i
    n = 6
    g = TimeGrid.s_curve_random(n, 1e-3, 0.05, uniforms=torch.full((n - 1,), 0.5),
                                dtype=torch.float64)
    base = official_base(n, 1e-3, 0.05)
    np.testing.assert_allclose(g.ts.numpy()[1:-1], (base[:-1] + base[1:]) / 2, rtol=1e-12)
    fixed = TimeGrid.s_curve(n, 1e-3, 0.05, dtype=torch.float64).ts.numpy()
    assert (np.abs(g.ts.numpy()[1:-1] / fixed[1:-1] - 1) > 0.01).all()


def test_random_distribution_uniform_in_each_gap():
    """Each interior time, rescaled to its gap, is U[0, 1): mean 1/2 and variance 1/12 within
    five standard errors (for U[0, 1): sd 1/sqrt(12); sd of the squared deviation
    sqrt(1/80 - 1/144))."""
    n, draws = 6, 2000
    gen = torch.Generator().manual_seed(123)
    ts = np.stack([TimeGrid.s_curve_random(n, 1e-3, 0.05, generator=gen,
                                           dtype=torch.float64).ts.numpy()
                   for _ in range(draws)])
    base = official_base(n, 1e-3, 0.05)
    pos = (ts[:, 1:-1] - base[:-1]) / (base[1:] - base[:-1])
    assert ((pos >= 0) & (pos < 1 + 1e-9)).all()
    mean_se = 1 / np.sqrt(12 * draws)
    np.testing.assert_array_less(np.abs(pos.mean(0) - 0.5), 5 * mean_se)
    var_se = np.sqrt((1 / 80 - 1 / 144) / draws)
    np.testing.assert_array_less(np.abs(((pos - 0.5) ** 2).mean(0) - 1 / 12), 5 * var_se)
    # the gaps are drawn independently: correlation of neighbours near 0
    corr = np.corrcoef(pos.T)[np.arange(n - 2), np.arange(1, n - 1)]
    np.testing.assert_array_less(np.abs(corr), 5 / np.sqrt(draws))
    # so the mean time is the midpoint of each gap
    np.testing.assert_allclose(ts[:, 1:-1].mean(0), (base[:-1] + base[1:]) / 2,
                               atol=5 * float((base[1:] - base[:-1]).max()) * mean_se)


def test_random_redraws_a_grid_with_a_zero_step(monkeypatch):
    real_rand, calls = torch.rand, []

    def first_draw_zero(*args, **kwargs):
        calls.append(args)
        out = real_rand(*args, **kwargs)
        return torch.zeros_like(out) if len(calls) == 1 else out

    monkeypatch.setattr(torch, "rand", first_draw_zero)
    g = TimeGrid.s_curve_random(5, 1e-3, 0.05, generator=torch.Generator().manual_seed(1))
    monkeypatch.undo()
    assert len(calls) == 2 and (g.dts > 0).all()
    gen = torch.Generator().manual_seed(1)
    torch.rand(4, generator=gen, dtype=torch.float64)  # the rejected draw
    u = torch.rand(4, generator=gen, dtype=torch.float64)
    assert g == TimeGrid.s_curve_random(5, 1e-3, 0.05, uniforms=u)
    # injected uniforms cannot be redrawn: a zero step is an error
    with pytest.raises(ValueError, match="not strictly increasing"):
        TimeGrid.s_curve_random(5, 1e-3, 0.05, uniforms=torch.tensor([0.0, 0.5, 0.5, 0.5]))


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"n_steps": 1}, ValueError, "n_steps must be >= 2"),
        ({"n_steps": 0}, ValueError, "n_steps must be an integer >= 1"),
        ({"n_steps": 4.0}, ValueError, "n_steps"),
        ({"t0": 0.05}, ValueError, "t1 must be greater than t0"),
        ({"t0": -1e-3}, ValueError, "t0 must be >= 0"),
        ({"uniforms": torch.rand(3), "generator": torch.Generator()}, ValueError,
         "either generator or uniforms"),
        ({"uniforms": torch.rand(4)}, ValueError, r"uniforms must have shape \(3,\)"),
        ({"uniforms": torch.rand(3, 1)}, ValueError, r"uniforms must have shape \(3,\)"),
        ({"uniforms": torch.tensor([0.2, 1.0, 0.5])}, ValueError, r"lie in \[0, 1\)"),
        ({"uniforms": torch.tensor([0.2, -0.1, 0.5])}, ValueError, r"lie in \[0, 1\)"),
        ({"uniforms": torch.tensor([0.2, float("nan"), 0.5])}, ValueError, r"lie in \[0, 1\)"),
        ({"uniforms": torch.tensor([0, 0, 0])}, TypeError, "floating-point"),
        ({"uniforms": [0.1, 0.2, 0.3]}, TypeError, "must be a tensor"),
    ],
)
def test_random_bad_arguments(kwargs, error, match):
    args = {"n_steps": 4, "t0": 1e-3, "t1": 0.05, **kwargs}
    with pytest.raises(error, match=match):
        TimeGrid.s_curve_random(args.pop("n_steps"), args.pop("t0"), args.pop("t1"), **args)


# -- the random power grid (utils/scalars.py ExpTimer.rand) --------------------------------------
def official_power_random(n_steps: int, t_start: float, t_end: float, exp: float,
                          u: np.ndarray) -> np.ndarray:
    """``ExpTimer(n_steps, t_start, t_end, exp).rand()`` for ``exp <= 1``, written out from its
    definition in float64 with the uniforms ``u`` of its ``torch.rand(n_steps - 1)``."""
    base = np.linspace(t_start**exp, t_end**exp, n_steps)  # n_steps points, not n_steps + 1
    mids = u * (base[1:] - base[:-1]) + base[:-1]
    return np.concatenate([base[:1], mids, base[-1:]]) ** (1.0 / exp)


@pytest.mark.parametrize("n, t0, t1, p", [(30, 1e-3, 0.1, 0.5), (5, 1e-3, 0.05, 0.9),
                                          (2, 0.0, 1.0, 0.5), (75, 1e-4, 0.1, 1.0)])
def test_power_random_is_the_official_formula(n, t0, t1, p):
    u = torch.rand(n - 1, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    g = TimeGrid.power_random(n, t0, t1, p, uniforms=u, dtype=torch.float64)
    assert g.n_steps == n and g.t0 == t0 and g.t1 == t1  # exact end points
    np.testing.assert_allclose(g.ts.numpy(), official_power_random(n, t0, t1, p, u.numpy()),
                               rtol=1e-12, atol=0)


def test_power_random_law():
    """t_i^p ~ U[r_{i-1}, r_i] on the N-point base r: the support, and the mean
    E[t_i] = p/(p+1) (r_i^{(p+1)/p} - r_{i-1}^{(p+1)/p}) / (r_i - r_{i-1}) against 4000 draws."""
    n, t0, t1, p, draws = 10, 1e-3, 0.1, 0.5, 4000
    gen = torch.Generator().manual_seed(0)
    ts = torch.stack([TimeGrid.power_random(n, t0, t1, p, generator=gen,
                                            dtype=torch.float64).ts for _ in range(draws)])
    r = torch.linspace(t0**p, t1**p, n, dtype=torch.float64)  # the base, in t^p
    lo, hi = r[:-1] ** (1 / p), r[1:] ** (1 / p)
    inner = ts[:, 1:-1]
    assert bool(((inner >= lo) & (inner < hi)).all())  # one time in each gap of the base
    assert bool((ts[:, 0] == t0).all() and (ts[:, -1] == t1).all())
    q = (p + 1) / p
    mean = p / (p + 1) * (r[1:] ** q - r[:-1] ** q) / (r[1:] - r[:-1])
    stderr = inner.std(0) / draws**0.5
    assert bool(((inner.mean(0) - mean).abs() < 4 * stderr).all())
    # not the jitter of the fixed grid: its interior means are the fixed times
    fixed = TimeGrid.power(n, t0, t1, p, dtype=torch.float64).ts[1:-1]
    assert bool(((mean - fixed).abs() > 10 * stderr).any())


def test_power_random_arguments():
    with pytest.raises(ValueError, match="n_steps must be >= 2 for the random power grid"):
        TimeGrid.power_random(1, 0.0, 1.0, 0.5)
    with pytest.raises(ValueError, match="exponent must be > 0"):
        TimeGrid.power_random(5, 0.0, 1.0, 0.0)
    with pytest.raises(ValueError, match=r"uniforms must have shape \(4,\)"):
        TimeGrid.power_random(5, 0.0, 1.0, 0.5, uniforms=torch.zeros(3))
    with pytest.raises(ValueError, match="either generator or uniforms"):
        TimeGrid.power_random(5, 0.0, 1.0, 0.5, uniforms=torch.zeros(4),
                              generator=torch.Generator())
    u = torch.full((4,), 0.5, dtype=torch.float64)
    torch.testing.assert_close(TimeGrid.uniform_random(5, 0.0, 1.0, uniforms=u,
                                                       dtype=torch.float64).ts,
                               TimeGrid.power_random(5, 0.0, 1.0, 1.0, uniforms=u,
                                                     dtype=torch.float64).ts)

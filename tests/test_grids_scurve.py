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

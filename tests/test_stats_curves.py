"""Budget curves: log-parameter interpolation that never extrapolates, equal-budget differences
checked by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import holm_by_definition  # tests/ is on sys.path (no __init__.py)
from scipy.stats import ttest_rel

from loraplace.stats.curves import (
    COMPARED,
    EXTRAPOLATION,
    chord_excess,
    comparison_budgets,
    equal_budget_difference,
    interpolate_log,
)


def test_interpolate_log_by_hand():
    # log(1000) is halfway between log(100) and log(10000).
    assert interpolate_log([10000, 100], [0.8, 1.0], 1000) == pytest.approx(0.9)
    assert interpolate_log([100, 1000, 10000], [1.0, 0.7, 0.6], 100) == pytest.approx(1.0)
    # log(316.23) = (log 100 + log 1000) / 2
    assert interpolate_log([100, 1000], [1.0, 0.7], math.sqrt(1e5)) == pytest.approx(0.85)
    assert interpolate_log([100, 1000], [1.0, 0.7], 99) is None  # never extrapolate
    assert interpolate_log([100, 1000], [1.0, 0.7], 1001) is None
    assert interpolate_log([], [], 5) is None
    with pytest.raises(ValueError):
        interpolate_log([100, 100], [1.0, 0.9], 100)


def test_chord_excess_is_the_largest_gap_between_the_chord_and_the_quadratic():
    # v = x² in x = log(params): the chord between x = 0 and 1 lies 1/4 above the midpoint.
    e = math.e
    assert chord_excess([1, e, e**2], [0.0, 1.0, 4.0]) == pytest.approx(0.25)
    # Found by brute force: the chord's largest excess over the quadratic on a fine grid.
    x = np.log([2, 8, 32, 128])
    v = np.array([0.80, 0.76, 0.75, 0.749])
    worst = 0.0
    for i in range(len(x) - 2):
        quadratic = np.polyfit(x[i : i + 3], v[i : i + 3], 2)
        for j in (i, i + 1):
            grid = np.linspace(x[j], x[j + 1], 2001)
            chord = np.interp(grid, x, v)
            gap = max(chord - np.polyval(quadratic, grid), key=abs)
            worst = max(worst, gap, key=abs)
    assert chord_excess([2, 8, 32, 128], v) == pytest.approx(worst, rel=1e-4)
    assert chord_excess([32, 2, 8], [0.75, 0.80, 0.76]) == pytest.approx(
        chord_excess([2, 8, 32], [0.80, 0.76, 0.75])
    )
    # A curve that bends the other way gives a negative gap; a straight one none.
    assert chord_excess([2, 8, 32], [0.80, 0.79, 0.70]) < 0
    assert chord_excess([2, 8, 32], [3.0, 2.0, 1.0]) == pytest.approx(0.0, abs=1e-12)
    assert chord_excess([2, 8], [0.8, 0.7]) is None


CURVE_A = {100: {0: 1.00, 1: 1.02, 2: 1.01}, 10000: {0: 0.80, 1: 0.84, 2: 0.83}}
CURVE_B = {1000: {0: 0.95, 1: 0.93, 2: 0.94, 3: 0.9}, 100000: {0: 0.70, 1: 0.71, 2: 0.69}}


def test_comparison_budgets():
    assert comparison_budgets(CURVE_A, CURVE_B) == [1000, 10000]
    assert comparison_budgets(CURVE_A, {}) == []


def test_equal_budget_difference_by_hand():
    out = equal_budget_difference(CURVE_A, CURVE_B, [50, 1000, 10000, 200000])
    assert [o.status for o in out] == [EXTRAPOLATION, COMPARED, COMPARED, EXTRAPOLATION]
    assert out[0].mean is None and out[0].p is None
    # At 1000 (halfway in log between 100 and 10000) curve a is the midpoint of its two points;
    # b is measured there. Seed 3 lacks points on b and a: only seeds 0-2 are shared.
    mid_a = [(1.00 + 0.80) / 2, (1.02 + 0.84) / 2, (1.01 + 0.83) / 2]
    # At 10000, b is 1/2 of the way from 1000 to 100000 in log: the mean of its two points.
    at_b = [(0.95 + 0.70) / 2, (0.93 + 0.71) / 2, (0.94 + 0.69) / 2]
    cases = [(mid_a, [0.95, 0.93, 0.94]), ([0.80, 0.84, 0.83], at_b)]
    ps = []
    for o, (a, b) in zip(out[1:3], cases):
        r = ttest_rel(a, b)
        ps.append(r.pvalue)
        assert o.n == 3
        assert o.mean == pytest.approx(np.mean(a) - np.mean(b))
        assert o.p == pytest.approx(r.pvalue, rel=1e-9)
        assert (o.t_low, o.t_high) == tuple(pytest.approx(x) for x in r.confidence_interval())
        d = np.subtract(a, b)
        # With 3 seeds each extreme resample (one seed drawn 3 times) has probability 1/27 > 2.5%,
        # so the 95% percentile interval is exactly [min, max] of the per-seed differences.
        assert (o.boot_low, o.boot_high) == (pytest.approx(d.min()), pytest.approx(d.max()))
    assert [o.p_holm for o in out[1:3]] == pytest.approx(holm_by_definition(ps))
    # Two shared seeds: a p-value to show, but no test to adjust (MIN_SEEDS is 3).
    two = {p: {s: v for s, v in seeds.items() if s < 2} for p, seeds in CURVE_A.items()}
    out = equal_budget_difference(two, CURVE_B, [1000, 10000])
    assert all(o.n == 2 and o.p is not None and o.p_holm is None for o in out)

"""Core statistics on hand-made numbers with answers worked out independently of loraplace.

Summaries, Welch, paired t, Holm, TOST, the minimal detectable difference and the Pareto front,
checked against scipy or a hand computation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import holm_rejects
from scipy.stats import t as student_t
from scipy.stats import ttest_1samp, ttest_ind, ttest_rel

from loraplace.stats.tests import (
    ci95,
    family_size,
    finite,
    holm,
    mean,
    min_detectable_difference,
    paired_difference,
    pareto_front,
    std,
    tost_paired,
    welch_p_value,
)


def _welch_by_formula(a: list[float], b: list[float]) -> float:
    """Welch's t-test written out: t = Δmean / se, Welch–Satterthwaite degrees of freedom."""
    na, nb = len(a), len(b)
    ma, mb = sum(a) / na, sum(b) / nb
    va = sum((x - ma) ** 2 for x in a) / (na - 1)
    vb = sum((x - mb) ** 2 for x in b) / (nb - 1)
    se2 = va / na + vb / nb
    t = (ma - mb) / math.sqrt(se2)
    df = se2**2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return 2 * student_t.sf(abs(t), df)


def test_mean_std_ci_of_one_two_three():
    # mean 2, sample variance ((1)^2 + 0 + 1^2) / 2 = 1, std 1; t_{0.975, 2} = 4.3027 (tables).
    assert mean([1.0, 2.0, 3.0]) == pytest.approx(2.0)
    assert std([1.0, 2.0, 3.0]) == pytest.approx(1.0)
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(4.3027 / math.sqrt(3), rel=1e-4)
    assert ci95([1.0, 2.0, 3.0]) == pytest.approx(student_t.ppf(0.975, 2) / math.sqrt(3), rel=1e-12)


def test_ci_of_two_values():
    # [2, 4]: std = sqrt(2), t_{0.975, 1} = 12.706 (tables), n = 2.
    assert ci95([2.0, 4.0]) == pytest.approx(12.706 * math.sqrt(2) / math.sqrt(2), rel=1e-4)


@pytest.mark.parametrize("values", [[], [1.5], [None, 2.0], [float("nan"), 3.0]])
def test_undefined_spread_is_none(values):
    assert std(values) is None
    assert ci95(values) is None


def test_missing_and_nonfinite_values_are_dropped():
    assert finite([1, None, float("nan"), float("inf"), 2.5]) == [1.0, 2.5]
    assert mean([None, 4.0, float("nan"), 6.0]) == pytest.approx(5.0)
    assert mean([]) is None
    assert std([1.0, None, 3.0]) == pytest.approx(math.sqrt(2))


@pytest.mark.parametrize(
    "a, b",
    [
        ([1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0, 10.0]),
        ([1.10, 1.12, 1.09], [1.20, 1.25, 1.18]),
        ([0.5, 0.5, 0.5], [0.4, 0.6, 0.9]),  # one side constant: t is still defined
    ],
)
def test_welch_matches_the_formula(a, b):
    assert welch_p_value(a, b) == pytest.approx(_welch_by_formula(a, b), rel=1e-9)
    assert welch_p_value(b, a) == pytest.approx(welch_p_value(a, b), rel=1e-12)


def test_welch_two_constant_samples_are_undefined():
    # t = 0/0 whether the constants agree or not: neither "no difference" nor "certain".
    assert welch_p_value([1.0, 1.0, 1.0], [1.0, 1.0]) is None
    assert welch_p_value([0.1 + 0.2, 0.3], [0.3, 0.3]) is None
    assert welch_p_value([1.0, 1.0], [2.0, 2.0, 2.0]) is None


def test_welch_matches_scipy():
    a, b = [1.31, 1.28, 1.35, 1.30], [1.25, 1.27, 1.22]
    assert welch_p_value(a, b) == pytest.approx(ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)


@pytest.mark.parametrize("a, b", [([1.0], [1.0, 2.0]), ([1.0, 2.0], []), ([1.0, None], [1.0, 2.0])])
def test_welch_needs_two_values_each(a, b):
    assert welch_p_value(a, b) is None


def test_welch_is_never_nan():
    p = welch_p_value([1.0, 2.0, 3.0], [1.0, 2.0, 3.0])
    assert p == pytest.approx(1.0)


def test_pareto_front_of_a_small_set():
    points = [
        (100, 1.0),  # front
        (50, 1.2),  # front: fewest params
        (200, 0.9),  # front: lowest loss
        (150, 1.1),  # dominated by (100, 1.0)
        (50, 1.3),  # dominated by (50, 1.2): equal params, higher loss
        (100, 1.0),  # duplicate of the first: neither dominates the other
        (80, None),  # no loss: never on the front
    ]
    assert pareto_front(points) == [True, True, True, False, False, True, False]


def test_pareto_front_edge_cases():
    assert pareto_front([]) == []
    assert pareto_front([(10, 2.0)]) == [True]
    assert pareto_front([(10, float("nan")), (20, 1.0)]) == [False, True]


def test_pareto_tolerance_treats_near_equal_costs_as_one_budget():
    points = [
        (1000, 1.00),  # 0.6% cheaper than the next, higher loss
        (1006, 0.99),
        (500, 1.10),  # half the cost: its own budget
        (2000, 0.99),  # same loss as (1006, 0.99) at twice the cost
    ]
    # No tolerance: being 0.6% cheaper is enough to stay on the front.
    assert pareto_front(points) == [True, True, True, False]
    # 5%: 1006 <= 1000 * 1.05 with lower loss dominates; 1006 * 1.05 < 2000 with equal loss too.
    assert pareto_front(points, rel_tol=0.05) == [False, True, True, False]
    # The tolerance is inclusive: 1050 = 1000 * 1.05 is the same budget, 1051 is not.
    assert pareto_front([(1000, 1.0), (1050, 0.99)], rel_tol=0.05) == [False, True]
    assert pareto_front([(1000, 1.0), (1051, 0.99)], rel_tol=0.05) == [True, True]
    # Equal losses at one budget: neither dominates.
    assert pareto_front([(1000, 1.0), (1006, 1.0)], rel_tol=0.05) == [True, True]
    with pytest.raises(ValueError, match="rel_tol"):
        pareto_front(points, rel_tol=-0.1)


# --- Paired tests against scipy ------------------------------------------------------------------

A4 = {0: 1.10, 1: 1.12, 2: 1.09, 3: 1.15}
B4 = {3: 1.15, 1: 1.14, 0: 1.13, 2: 1.12}  # other insertion order: values pair by seed


def test_paired_difference_matches_ttest_rel():
    r = ttest_rel([A4[s] for s in range(4)], [B4[s] for s in range(4)])
    ci = r.confidence_interval(0.95)
    got = paired_difference(A4, B4)
    assert (got.n, got.seeds, got.df) == (4, (0, 1, 2, 3), 3)
    assert got.mean == pytest.approx(-0.02)
    assert got.p == pytest.approx(r.pvalue, rel=1e-9)
    assert (got.ci_low, got.ci_high) == (
        pytest.approx(ci.low, rel=1e-9),
        pytest.approx(ci.high, rel=1e-9),
    )
    ci90 = r.confidence_interval(0.90)
    got90 = paired_difference(A4, B4, conf=0.90)
    assert (got90.ci_low, got90.ci_high) == (pytest.approx(ci90.low), pytest.approx(ci90.high))


def test_paired_difference_uses_common_finite_seeds_only():
    a = {0: 1.0, 1: 1.2, 2: None, 3: 1.1, 7: 0.9}
    b = {0: 1.1, 1: 1.25, 2: 1.0, 3: 1.3, 5: 1.0}
    got = paired_difference(a, b)
    assert got.seeds == (0, 1, 3)
    assert got.p == pytest.approx(ttest_rel([1.0, 1.2, 1.1], [1.1, 1.25, 1.3]).pvalue, rel=1e-9)


def test_paired_difference_refuses_lists():
    with pytest.raises(TypeError, match="mapping"):
        paired_difference([1.0, 2.0], [1.0, 2.0])  # type: ignore[arg-type]


def test_paired_difference_undefined_cases():
    one = paired_difference({0: 1.0}, {0: 1.5})
    assert (one.n, one.mean, one.sd, one.p, one.ci_low, one.df) == (1, -0.5, None, None, None, None)
    none = paired_difference({0: 1.0}, {1: 1.5})
    assert (none.n, none.mean, none.p) == (0, None, None)
    # Identical differences (0.1 + 0.2 vs 0.3 differs in the last bit): p undefined, not 0.
    const = paired_difference({0: 0.1 + 0.2, 1: 1.3, 2: 2.3}, {0: 0.2, 1: 1.2, 2: 2.2})
    assert (const.n, const.sd, const.p, const.ci_low, const.ci_high) == (3, 0.0, None, None, None)
    same = paired_difference({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0})
    assert same.p is None and same.mean == 0.0


# --- Holm ----------------------------------------------------------------------------------------


def test_holm_by_hand():
    # Sorted: 0.005·4 = 0.02, 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 = 0.04 -> running max 0.06.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # None is not a test: the family is 3, so 0.0497 becomes 0.0497·3 = 0.1491.
    assert holm([0.0497, None, 0.2, 0.5]) == [
        pytest.approx(0.1491),
        None,
        pytest.approx(0.4),
        pytest.approx(0.5),
    ]
    assert family_size([0.0497, None, 0.2, 0.5]) == 3
    assert holm([0.6, 0.9]) == [pytest.approx(1.0), pytest.approx(1.0)]  # capped at 1
    assert holm([]) == [] and family_size([None]) == 0
    with pytest.raises(ValueError, match="outside"):
        holm([0.5, 1.5])


def test_holm_adjusted_p_is_the_smallest_level_that_rejects():
    rng = np.random.default_rng(3)
    for _ in range(200):
        ps = list(rng.uniform(0, 0.2, size=rng.integers(1, 7)))
        adj = holm(ps)
        assert all(a >= p for a, p in zip(adj, ps))
        for alpha in (0.01, 0.05, 0.1):
            assert {i for i, a in enumerate(adj) if a <= alpha} == holm_rejects(ps, alpha)


# --- TOST, MDD, Wilson, McNemar, Kendall ---------------------------------------------------------


@pytest.mark.parametrize("margin", [0.01, 0.03, 0.05])
def test_tost_matches_two_one_sided_ttests(margin):
    d = [A4[s] - B4[s] for s in range(4)]
    lower = ttest_1samp(d, -margin, alternative="greater").pvalue
    upper = ttest_1samp(d, margin, alternative="less").pvalue
    got = tost_paired(A4, B4, margin)
    assert got.p == pytest.approx(max(lower, upper), rel=1e-9)
    half = student_t.ppf(0.95, 3) * np.std(d, ddof=1) / 2
    assert (got.ci_low, got.ci_high) == (pytest.approx(-0.02 - half), pytest.approx(-0.02 + half))
    # Equivalence at 5% if and only if the 90% interval lies inside (-margin, margin).
    assert (got.p < 0.05) == (-margin < got.ci_low and got.ci_high < margin)


def test_tost_rejects_bad_margin_and_undefined_cases():
    with pytest.raises(ValueError, match="margin"):
        tost_paired(A4, B4, 0.0)
    assert tost_paired({0: 1.0}, {0: 1.0}, 0.1).p is None
    assert tost_paired({0: 1.0, 1: 2.0}, {0: 1.0, 1: 2.0}, 0.1).p is None


def test_min_detectable_difference_three_seeds():
    # (t_{0.975,2} + t_{0.8,2}) · 0.006 / sqrt(3) = (4.3027 + 1.0607) · 0.006 / 1.7321 = 0.01858
    assert min_detectable_difference(0.006, 3) == pytest.approx(0.01858, abs=1e-5)
    assert min_detectable_difference(0.006, 1) is None

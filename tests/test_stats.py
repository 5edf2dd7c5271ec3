"""Statistics on hand-made numbers with answers worked out independently of loraplace.stats."""

from __future__ import annotations

import math

import pytest
from scipy.stats import t as student_t

from loraplace.stats import ci95, finite, mean, pareto_front, std, summarize_sample, welch_p_value


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
    s = summarize_sample([1.0, None, 3.0])
    assert (s.n, s.mean, s.std) == (2, pytest.approx(2.0), pytest.approx(math.sqrt(2)))


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


def test_welch_zero_variance_cases():
    assert welch_p_value([1.0, 1.0, 1.0], [1.0, 1.0]) == 1.0
    assert welch_p_value([0.1 + 0.2, 0.3], [0.3, 0.3]) == 1.0
    assert welch_p_value([1.0, 1.0], [2.0, 2.0, 2.0]) == 0.0


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

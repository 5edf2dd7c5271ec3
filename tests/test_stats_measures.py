"""Accuracy intervals, McNemar, Kendall's tau-b, speedup ratios and the eval-example bootstrap,
against scipy or a hand computation."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest
from helpers import example_runs
from scipy.stats import binomtest, kendalltau
from scipy.stats import t as student_t

from loraplace.stats.measures import (
    bootstrap_paired_examples,
    example_array,
    jaccard,
    kendall_tau,
    mcnemar_exact,
    ranking_stability,
    ratio_interval,
    wilson_interval,
)
from loraplace.stats.verdicts import EXPLORATORY, FASTER, SLOWER, UNRESOLVED, speedup_claim


@pytest.mark.parametrize("k, n", [(7, 10), (0, 12), (12, 12), (50, 128)])
def test_wilson_interval(k, n):
    z = NormalDist().inv_cdf(0.975)
    p = k / n
    center = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    low, high = wilson_interval(k, n)
    assert (low, high) == (pytest.approx(center - half, abs=1e-12), pytest.approx(center + half))
    ref = binomtest(k, n).proportion_ci(0.95, method="wilson")
    assert (low, high) == (pytest.approx(ref.low, abs=1e-12), pytest.approx(ref.high))


def test_wilson_edge_cases():
    assert wilson_interval(0, 0) is None
    with pytest.raises(ValueError):
        wilson_interval(5, 3)


@pytest.mark.parametrize("b, c", [(2, 9), (9, 2), (5, 5), (0, 6), (1, 0), (30, 45)])
def test_mcnemar_exact_matches_binomtest(b, c):
    assert mcnemar_exact(b, c) == pytest.approx(binomtest(b, b + c, 0.5).pvalue, rel=1e-9)


def test_mcnemar_without_discordant_pairs_is_undefined():
    assert mcnemar_exact(0, 0) is None


@pytest.mark.parametrize(
    "x, y",
    [
        ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5]),
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1]),
        ([1, 2, 2, 3, 4], [1, 3, 2, 2, 5]),  # ties on both sides: tau-b differs from tau-a
        ([0.9, 1.0, 1.0, 1.2, 0.8, 1.1], [2.0, 2.0, 1.5, 3.0, 1.0, 2.5]),
    ],
)
def test_kendall_tau_b_matches_scipy(x, y):
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, rel=1e-12)


def test_kendall_known_orders_and_undefined():
    assert kendall_tau([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert kendall_tau([1, 2, 3], [5, 5, 5]) is None
    assert kendall_tau([1, None, 3], [1, 2, 3]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1])


def test_ranking_stability():
    early = {"all": 1.30, "attn": 1.25, "mlp": 1.28, "last": None}
    late = {"all": 1.10, "attn": 1.12, "mlp": 1.15, "last": 1.0}
    r = ranking_stability(early, late)
    assert (r.n, r.order_a, r.order_b, r.same_best) == (
        3,
        ("attn", "mlp", "all"),
        ("all", "attn", "mlp"),
        False,
    )
    # pairs (attn, mlp) concordant, (attn, all) and (mlp, all) discordant: (1 - 2) / 3.
    assert r.tau == pytest.approx(-1 / 3)


# --- Speedups and the eval-example bootstrap -----------------------------------------------------


def test_ratio_interval_on_log_scale():
    ref_time = {0: 10.0, 1: 11.0, 2: 12.0, 3: 50.0}
    time = {0: 5.0, 1: 6.0, 2: 5.5, 4: 1.0}
    logs = [math.log(10 / 5), math.log(11 / 6), math.log(12 / 5.5)]
    half = student_t.ppf(0.975, 2) * np.std(logs, ddof=1) / math.sqrt(3)
    r = ratio_interval(ref_time, time)
    assert r.n == 3
    assert r.geomean == pytest.approx((2 * 11 / 6 * 12 / 5.5) ** (1 / 3))
    assert (r.ci_low, r.ci_high) == (
        pytest.approx(math.exp(np.mean(logs) - half)),
        pytest.approx(math.exp(np.mean(logs) + half)),
    )
    assert speedup_claim(r) == FASTER
    assert speedup_claim(ratio_interval(time, ref_time)) == SLOWER
    noisy = ratio_interval({0: 10.0, 1: 10.0, 2: 10.0}, {0: 8.0, 1: 12.0, 2: 9.0})
    assert noisy.ci_low < 1 < noisy.ci_high and speedup_claim(noisy) == UNRESOLVED
    assert speedup_claim(ratio_interval({0: 2.0, 1: 2.1}, {0: 1.0, 1: 1.0})) == EXPLORATORY


def test_bootstrap_estimate_and_exact_shift():
    a = example_runs(0)
    got = bootstrap_paired_examples(a, a)
    assert (got.estimate, got.low, got.high) == (0.0, 0.0, 0.0)
    # b loses exactly 0.1 nats more per token on every example: every resample differs by -0.1.
    b = {s: np.column_stack([x[:, 0], x[:, 1] + 0.1 * x[:, 0]]) for s, x in a.items()}
    got = bootstrap_paired_examples(a, b)
    assert (got.estimate, got.low, got.high) == (
        pytest.approx(-0.1),
        pytest.approx(-0.1),
        pytest.approx(-0.1),
    )
    expected = np.mean([a[s][:, 1].sum() / a[s][:, 0].sum() for s in a]) - np.mean(
        [b[s][:, 1].sum() / b[s][:, 0].sum() for s in b]
    )
    assert got.estimate == pytest.approx(expected)


def test_bootstrap_agrees_with_a_plain_loop():
    a, b = example_runs(1), example_runs(2)
    got = bootstrap_paired_examples(a, b, n_boot=2000, seed=0)
    # The textbook loop, with its own generator: draw indices, recompute, take percentiles.
    rng = np.random.default_rng(123)
    sa, sb = np.stack(list(a.values())), np.stack(list(b.values()))  # (seeds, examples, 2)
    stats = []
    for _ in range(2000):
        i = rng.integers(0, 128, 128)
        ra = sa[:, i, 1].sum(axis=1) / sa[:, i, 0].sum(axis=1)
        rb = sb[:, i, 1].sum(axis=1) / sb[:, i, 0].sum(axis=1)
        stats.append(np.mean(ra - rb))
    low, high = np.percentile(stats, [2.5, 97.5])
    width = high - low
    assert got.low == pytest.approx(low, abs=0.1 * width)
    assert got.high == pytest.approx(high, abs=0.1 * width)
    assert bootstrap_paired_examples(a, b, seed=0) == got  # seeded: reproducible


def test_bootstrap_refuses_mismatched_examples():
    a, b = example_runs(0), example_runs(1, n_examples=100)
    with pytest.raises(ValueError, match="different examples"):
        bootstrap_paired_examples(a, b)
    assert bootstrap_paired_examples(a, {9: b[0]}) is None


def test_example_array_sorts_by_index():
    records = [
        {"example": 1, "tokens": 4, "loss_sum": 8.0},
        {"example": 0, "tokens": 3, "loss_sum": 3.5},
    ]
    assert example_array(records).tolist() == [[3.0, 3.5], [4.0, 8.0]]
    with pytest.raises(ValueError, match="repeat"):
        example_array(records + [{"example": 1, "tokens": 1, "loss_sum": 1.0}])


def test_bootstrap_without_tokens_is_undefined():
    empty = {0: np.zeros((4, 2))}
    assert bootstrap_paired_examples(empty, empty) is None


def test_jaccard_is_shared_over_either():
    assert jaccard({(0, "q"), (1, "k")}, [(0, "q"), (2, "v"), (0, "q")]) == pytest.approx(1 / 3)
    assert jaccard({1}, {1}) == 1.0 and jaccard({1}, {2}) == 0.0
    assert jaccard([], set()) is None

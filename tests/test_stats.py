"""Statistics on hand-made numbers with answers worked out independently of loraplace.stats."""

from __future__ import annotations

import math
import time
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import binomtest, kendalltau, ttest_1samp, ttest_ind, ttest_rel
from scipy.stats import t as student_t

from loraplace.stats import (
    BETTER,
    CLEAR,
    COMPARED,
    EQUIVALENT,
    EXPLORATORY,
    EXTRAPOLATION,
    FASTER,
    REFERENCE,
    SLOWER,
    SUGGESTIVE,
    SUPPORTED,
    UNRESOLVED,
    WORSE,
    Verdict,
    best_vs_others,
    bootstrap_paired_examples,
    ci95,
    compare_pairs,
    compare_to_reference,
    comparison_budgets,
    equal_budget_difference,
    example_array,
    family_size,
    finite,
    holm,
    interpolate_log,
    kendall_tau,
    mcnemar_exact,
    mean,
    min_detectable_difference,
    paired_difference,
    pairwise,
    pareto_front,
    ranking_stability,
    ratio_interval,
    speedup_claim,
    std,
    summarize_sample,
    tost_paired,
    verdict,
    welch_p_value,
    wilson_interval,
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


def _holm_rejects(pvalues: list[float], alpha: float) -> set[int]:
    """Holm's step-down procedure as published: reject in order while p_(j) <= alpha/(m-j+1)."""
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    rejected: set[int] = set()
    for j, i in enumerate(order):
        if pvalues[i] > alpha / (len(pvalues) - j):
            break
        rejected.add(i)
    return rejected


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
            assert {i for i, a in enumerate(adj) if a <= alpha} == _holm_rejects(ps, alpha)


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


def _runs(seed: int, n_seeds: int = 3, n_examples: int = 128) -> dict[int, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        s: np.column_stack(
            [rng.integers(5, 60, n_examples), rng.gamma(2.0, 10.0, n_examples)]
        ).astype(float)
        for s in range(n_seeds)
    }


def test_bootstrap_estimate_and_exact_shift():
    a = _runs(0)
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


def test_bootstrap_agrees_with_a_plain_loop_and_is_fast():
    a, b = _runs(1), _runs(2)
    start = time.perf_counter()
    got = bootstrap_paired_examples(a, b, n_boot=2000, seed=0)
    assert time.perf_counter() - start < 1.0
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
    a, b = _runs(0), _runs(1, n_examples=100)
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


# --- Verdicts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n, mean_diff, p_holm, tost_holm, expected",
    [
        (2, -0.5, 0.001, 0.001, (EXPLORATORY, None)),  # too few seeds: no claim at all
        (3, -0.05, 0.009, None, (CLEAR, BETTER)),
        (3, 0.05, 0.01, None, (SUPPORTED, WORSE)),  # thresholds are strict
        (5, -0.05, 0.049, 0.001, (SUPPORTED, BETTER)),  # supported outranks equivalent
        (5, -0.01, 0.07, 0.02, (EQUIVALENT, None)),  # equivalent outranks suggestive
        (5, -0.01, 0.07, 0.05, (SUGGESTIVE, BETTER)),
        (5, 0.01, 0.10, None, (UNRESOLVED, None)),
        (5, 0.0, None, None, (UNRESOLVED, None)),  # no test (undefined p): no claim
    ],
)
def test_verdict_ladder(n, mean_diff, p_holm, tost_holm, expected):
    v = verdict(n, mean_diff, p_holm, tost_holm)
    assert (v.label, v.direction) == expected


def test_verdict_of_the_reference():
    assert verdict(5, None, None, is_reference=True) == Verdict(REFERENCE, None)


def _losses() -> dict[str, dict[int, float]]:
    ref = {0: 1.00, 1: 1.10, 2: 1.05, 3: 1.02}
    return {
        "ref": ref,
        # paired differences -0.030, -0.040, -0.010, -0.030: raw p about 0.028
        "a": {0: 0.97, 1: 1.06, 2: 1.04, 3: 0.99},
        "b": {s: v + (0.01, -0.02, 0.03, -0.01)[s] for s, v in ref.items()},
        "c": {s: v + (0.02, -0.01, 0.005, -0.02)[s] for s, v in ref.items()},
        "two": {0: 0.5, 1: 0.6},  # two seeds: exploratory
    }


def test_compare_to_reference_holm_over_the_tests_run():
    losses = _losses()
    got = compare_to_reference(losses, "ref", margin=0.05)
    assert list(got) == ["ref", "a", "b", "c", "two"]
    raw = {
        s: ttest_rel([losses[s][i] for i in range(4)], [losses["ref"][i] for i in range(4)]).pvalue
        for s in ("a", "b", "c")
    }
    assert raw["a"] < 0.05  # significant alone ...
    adjusted = _holm_by_definition([raw["a"], raw["b"], raw["c"]])
    for s, adj in zip(("a", "b", "c"), adjusted):
        assert got[s].p == pytest.approx(raw[s], rel=1e-9)
        assert got[s].p_holm == pytest.approx(adj, rel=1e-9)
        assert got[s].family_size == 3  # three tests run; the two-seed strategy is not one
    assert got["a"].p_holm > 0.05 and got["a"].verdict != SUPPORTED  # ... not after Holm
    assert (got["two"].verdict, got["two"].direction, got["two"].p) == (EXPLORATORY, None, None)
    assert got["two"].n == 2 and got["two"].mean == pytest.approx(-0.5)
    assert got["ref"].verdict == REFERENCE and got["ref"].n == 4
    assert got["a"].welch_p == pytest.approx(
        ttest_ind(list(losses["a"].values()), list(losses["ref"].values()), equal_var=False).pvalue
    )
    # Equivalence, Holm-adjusted over the same three tests.
    tost = [tost_paired(losses[s], losses["ref"], 0.05).p for s in ("a", "b", "c")]
    for s, adj in zip(("a", "b", "c"), _holm_by_definition(tost)):
        assert got[s].tost_p_holm == pytest.approx(adj, rel=1e-9)
        assert got[s].tost_family_size == 3


def _holm_by_definition(ps: list[float]) -> list[float]:
    """Smallest alpha on a fine grid at which Holm's step-down procedure rejects each test."""
    # The rejections change only at alpha = p_j · k; nudge up past rounding. Never rejected: 1.
    grid = np.concatenate([np.asarray(ps) * k for k in range(1, len(ps) + 1)]) * (1 + 1e-12)
    grid = np.unique(grid[grid < 1])
    return [
        min((a for a in grid if i in _holm_rejects(ps, a)), default=1.0) for i in range(len(ps))
    ]


def test_p_just_below_005_among_three_tests_is_not_supported():
    adj = holm([0.0497, 0.30, 0.60])
    assert adj[0] == pytest.approx(0.1491)
    assert verdict(3, -0.02, adj[0]).label == UNRESOLVED
    assert verdict(3, -0.02, holm([0.0497])[0]).label == SUPPORTED  # alone it would be


def test_compare_with_example_bootstrap():
    losses = {"ref": {0: 1.0, 1: 1.1, 2: 1.05}, "x": {0: 0.99, 1: 1.08, 2: 1.04}}
    a, b = _runs(5), _runs(6)
    got = compare_to_reference(losses, "ref", 0.05, examples={"x": a, "ref": b})
    direct = bootstrap_paired_examples(a, b)
    assert (got["x"].boot_low, got["x"].boot_high) == (direct.low, direct.high)
    assert got["ref"].boot_low is None


def test_compare_refuses_unknown_strategies_and_bad_margin():
    with pytest.raises(ValueError, match="reference 'nope'"):
        compare_to_reference(_losses(), "nope", 0.05)
    with pytest.raises(ValueError, match="unknown"):
        compare_pairs(_losses(), [("a", "zzz")], 0.05)
    with pytest.raises(ValueError, match="margin"):
        compare_to_reference(_losses(), "ref", 0.0)


def test_pairwise_family_is_all_tested_pairs():
    got = pairwise(_losses(), margin=0.05)
    assert len(got) == 10  # 5 strategies
    tested = [c for c in got if c.p is not None]
    assert len(tested) == 6  # the 4 strategies with 4 seeds; pairs with "two" are exploratory
    assert all(c.family_size == 6 for c in got)
    by_pair = {(c.strategy, c.reference): c for c in got}
    assert by_pair[("ref", "a")].mean == pytest.approx(0.0275)  # a - ref = -0.0275


def test_reversed_pairs_are_one_test_with_flipped_signs():
    ab, ba = compare_pairs(_losses(), [("a", "ref"), ("ref", "a")], 0.05)
    assert ab.family_size == 1 and ab.p == ba.p and ab.verdict == ba.verdict
    assert (ba.mean, ba.ci_low, ba.ci_high) == (-ab.mean, -ab.ci_high, -ab.ci_low)


def test_best_vs_others_joins_the_reference_family():
    losses = _losses()
    losses["best"] = {s: v - 0.2 - 0.01 * s for s, v in losses["ref"].items()}
    del losses["two"]
    got = best_vs_others(losses, 0.05, reference="ref")
    assert got.best == "best"
    # Reference tests: a, b, c, best vs ref (4); best vs a, b, c (3); best vs ref counted once.
    assert got.family_size == 7
    assert all(c.family_size == 7 for c in [*got.against.values(), *got.vs_reference.values()])
    assert got.lowest and all(c.direction == BETTER for c in got.against.values())
    assert got.vs_reference["best"] == got.against["ref"]
    assert got.vs_reference["ref"].verdict == REFERENCE
    alone = best_vs_others(losses, 0.05)
    assert alone.family_size == 4 and alone.vs_reference == {}


def test_best_is_not_lowest_with_an_exploratory_rival():
    got = best_vs_others(_losses(), 0.05)
    assert got.best == "two" and not got.lowest
    assert {c.verdict for c in got.against.values()} == {EXPLORATORY}


# --- Budget curves -------------------------------------------------------------------------------


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
    assert [o.p_holm for o in out[1:3]] == pytest.approx(_holm_by_definition(ps))


def test_bootstrap_without_tokens_is_undefined():
    empty = {0: np.zeros((4, 2))}
    assert bootstrap_paired_examples(empty, empty) is None

"""The verdict ladder and the comparison families: Holm over exactly the tests run."""

from __future__ import annotations

import pytest
from helpers import example_runs, holm_by_definition  # tests/ is on sys.path (no __init__.py)
from scipy.stats import ttest_ind, ttest_rel

from loraplace.stats.measures import bootstrap_paired_examples
from loraplace.stats.tests import holm, tost_paired
from loraplace.stats.verdicts import (
    BETTER,
    CLEAR,
    EQUIVALENT,
    EXPLORATORY,
    REFERENCE,
    SUGGESTIVE,
    SUPPORTED,
    UNRESOLVED,
    WORSE,
    Verdict,
    best_vs_others,
    compare_pairs,
    compare_to_reference,
    pairwise,
    verdict,
)


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
    adjusted = holm_by_definition([raw["a"], raw["b"], raw["c"]])
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
    for s, adj in zip(("a", "b", "c"), holm_by_definition(tost)):
        assert got[s].tost_p_holm == pytest.approx(adj, rel=1e-9)
        assert got[s].tost_family_size == 3


def test_p_just_below_005_among_three_tests_is_not_supported():
    adj = holm([0.0497, 0.30, 0.60])
    assert adj[0] == pytest.approx(0.1491)
    assert verdict(3, -0.02, adj[0]).label == UNRESOLVED
    assert verdict(3, -0.02, holm([0.0497])[0]).label == SUPPORTED  # alone it would be


def test_compare_with_example_bootstrap():
    losses = {"ref": {0: 1.0, 1: 1.1, 2: 1.05}, "x": {0: 0.99, 1: 1.08, 2: 1.04}}
    a, b = example_runs(5), example_runs(6)
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


def test_one_reference_per_rank_is_one_family():
    # A rank sweep: each placement is compared with the reference placement at its own rank,
    # and every comparison of the report is one Holm family.
    base = _losses()
    losses = {"ref r2": base["ref"], "a r2": base["a"], "ref r4": base["b"], "c r4": base["c"]}
    refs = {"ref r2": "ref r2", "a r2": "ref r2", "ref r4": "ref r4", "c r4": "ref r4"}
    got = compare_to_reference(losses, refs, 0.05)
    seeds = range(4)
    raw_a = ttest_rel([base["a"][s] for s in seeds], [base["ref"][s] for s in seeds]).pvalue
    raw_c = ttest_rel([base["c"][s] for s in seeds], [base["b"][s] for s in seeds]).pvalue
    assert (got["a r2"].p, got["c r4"].p) == (pytest.approx(raw_a), pytest.approx(raw_c))
    assert [got["a r2"].p_holm, got["c r4"].p_holm] == pytest.approx(
        holm_by_definition([raw_a, raw_c])
    )
    assert got["c r4"].reference == "ref r4" and got["c r4"].family_size == 2
    assert got["ref r2"].verdict == got["ref r4"].verdict == REFERENCE
    with pytest.raises(ValueError, match="reference"):
        compare_to_reference(losses, {"a r2": "ref r2"}, 0.05)
    # With the "lowest" finding: best vs the 3 others, plus the 2 reference tests, one shared
    # ("a r2" is the best and "ref r2" its reference): 4 tests.
    best = best_vs_others(losses, 0.05, reference=refs)
    assert best.best == "a r2" and best.family_size == 4
    assert best.vs_reference["a r2"] == best.against["ref r2"]
    assert best.vs_reference["ref r4"].verdict == REFERENCE

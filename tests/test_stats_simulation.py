"""Seeded simulations of whole studies: error rates, coverage and power of the verdict rules.

Each simulated study draws eval losses for a reference and three other strategies over a few
seeds: ``loss = 1 + block[seed] + effect[strategy] + noise``, where the block is shared by all
strategies of one seed (same batches, same order) and the noise is independent. Rates are
checked against their nominal value plus three binomial standard errors of the Monte-Carlo
estimate, ``3 · sqrt(q (1 - q) / N)`` (0.0146 for q = 0.05 and 0.020 for q = 0.10 at N = 2,000).
"""

from __future__ import annotations

import math

import numpy as np

from loraplace.stats.tests import paired_difference, tost_paired
from loraplace.stats.verdicts import (
    BETTER,
    CLEAR,
    EQUIVALENT,
    SUGGESTIVE,
    SUPPORTED,
    compare_to_reference,
)

N_STUDIES = 2000
BLOCK_SD = 0.03  # seed-to-seed variation shared by all strategies (large, as in real studies)
NOISE_SD = 0.006  # per-run noise; the paired differences have sd NOISE_SD * sqrt(2)
NAMES = ("ref", "a", "b", "c")


def _mc_bound(q: float, n: int = N_STUDIES) -> float:
    return q + 3 * math.sqrt(q * (1 - q) / n)


def _studies(seed: int, effects: tuple[float, ...], n_seeds: int) -> np.ndarray:
    """Losses of ``N_STUDIES`` studies: shape (studies, seeds, strategies)."""
    rng = np.random.default_rng(seed)
    block = rng.normal(0.0, BLOCK_SD, size=(N_STUDIES, n_seeds, 1))
    noise = rng.normal(0.0, NOISE_SD, size=(N_STUDIES, n_seeds, len(effects)))
    return 1.0 + block + np.asarray(effects) + noise


def _verdicts(losses: np.ndarray, margin: float) -> list[dict[str, tuple[str, str | None]]]:
    out = []
    for study in losses:
        by_name = {
            name: {s: float(study[s, k]) for s in range(study.shape[0])}
            for k, name in enumerate(NAMES)
        }
        got = compare_to_reference(by_name, "ref", margin)
        out.append({s: (c.verdict, c.direction) for s, c in got.items() if s != "ref"})
    return out


def test_null_family_wise_error_rates():
    # No strategy differs from the reference; 3 tests per study, Holm-adjusted.
    verdicts = _verdicts(_studies(1, (0.0, 0.0, 0.0, 0.0), n_seeds=5), margin=0.002)
    labels = [{v for v, _ in study.values()} for study in verdicts]
    any_supported = np.mean([bool(s & {SUPPORTED, CLEAR}) for s in labels])
    any_suggestive = np.mean([bool(s & {SUGGESTIVE, SUPPORTED, CLEAR}) for s in labels])
    assert any_supported <= _mc_bound(0.05)
    assert any_suggestive <= _mc_bound(0.10)


def test_paired_interval_coverage():
    true_difference = 0.01
    for n_seeds in (3, 5):
        losses = _studies(2, (0.0, true_difference), n_seeds=n_seeds)
        covered = []
        for study in losses:
            p = paired_difference(
                {s: study[s, 1] for s in range(n_seeds)}, {s: study[s, 0] for s in range(n_seeds)}
            )
            covered.append(p.ci_low <= true_difference <= p.ci_high)
        assert abs(np.mean(covered) - 0.95) <= 0.015


def test_power_for_three_standard_deviations_of_the_differences():
    # Only "a" is better, by 3 sd of the paired differences; it must survive Holm over 3 tests.
    effect = -3 * NOISE_SD * math.sqrt(2)
    verdicts = _verdicts(_studies(3, (0.0, effect, 0.0, 0.0), n_seeds=5), margin=0.002)
    detected = [study["a"] in {(SUPPORTED, BETTER), (CLEAR, BETTER)} for study in verdicts]
    assert np.mean(detected) >= 0.80


def test_tost_at_the_margin_claims_equivalence_at_most_alpha():
    # A true difference exactly at the margin is the boundary of "not equivalent".
    margin = 0.01
    losses = _studies(4, (0.0, margin), n_seeds=5)
    equivalent = []
    for study in losses:
        t = tost_paired(
            {s: study[s, 1] for s in range(5)}, {s: study[s, 0] for s in range(5)}, margin
        )
        equivalent.append(t.p < 0.05)
    assert np.mean(equivalent) <= _mc_bound(0.05)


def test_equivalence_is_reached_when_strategies_are_alike():
    # The other side of TOST: with no difference and a margin of 3 sd, equivalence is found.
    verdicts = _verdicts(_studies(5, (0.0, 0.0, 0.0, 0.0), n_seeds=5), margin=0.025)
    share = np.mean([all(v == EQUIVALENT for v, _ in study.values()) for study in verdicts])
    assert share >= 0.80

"""Budget curves: eval loss against trainable parameters, compared at equal budgets.

A placement swept over ranks gives one point per rank. Curves are interpolated linearly in
``log(params)`` and never extrapolated; two placements are compared only at budgets inside both
curves' measured ranges, paired by seed. The method and its weaknesses (a 3-seed bootstrap has
10 distinct resamples) are in ``docs/STATISTICS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from loraplace.stats.tests import Paired, SeedValues, check_conf, holm, is_ok, paired_difference
from loraplace.stats.verdicts import MIN_SEEDS

__all__ = [
    "COMPARED",
    "EXTRAPOLATION",
    "BudgetDifference",
    "Curve",
    "chord_excess",
    "comparison_budgets",
    "equal_budget_difference",
    "interpolate_log",
]

COMPARED = "compared"
"""A budget inside both curves' measured ranges."""
EXTRAPOLATION = "extrapolation"
"""A budget outside a curve's measured range: not compared."""


# --- Budget curves: loss against trainable parameters ---------------------------------------------


def interpolate_log(params: Sequence[float], values: Sequence[float], at: float) -> float | None:
    """Linear interpolation in ``log(params)``; never extrapolates.

    Args:
        params: Positive parameter counts of the measured points (any order, no duplicates).
        values: The value at each point.
        at: Parameter count to read the curve at.

    Returns:
        The interpolated value, or ``None`` when ``at`` lies outside ``[min(params),
        max(params)]`` or no point is given.

    Raises:
        ValueError: On non-positive or repeated parameter counts, or mismatched lengths.
    """
    if len(params) != len(values):
        raise ValueError(f"params and values differ in length: {len(params)} vs {len(values)}")
    if any(not (p > 0) for p in params) or len(set(params)) != len(params):
        raise ValueError(f"parameter counts must be positive and distinct, got {list(params)}")
    if not params or not (min(params) <= at <= max(params)):
        return None
    order = np.argsort(params)
    x = np.log(np.asarray(params, dtype=float)[order])
    return float(np.interp(math.log(at), x, np.asarray(values, dtype=float)[order]))


Curve = Mapping[float, SeedValues]
"""A budget curve: ``{trainable params: {seed: eval loss}}``, one point per rank."""


def chord_excess(params: Sequence[float], values: Sequence[float]) -> float | None:
    """How far linear interpolation in ``log(params)`` may stray from a curve that bends: the
    largest gap between the straight line joining two neighbouring points and the quadratic
    through them and their neighbour, over every interval (positive where the line lies above,
    as on a curve that flattens; the sign of the largest gap is kept).

    The quadratic through three points has second divided difference ``c``; over an interval of
    width ``h`` in log parameters its chord lies at most ``c · h² / 4`` above it. An interval
    between two triples takes the larger of its two gauges.

    Args:
        params: Positive, distinct parameter counts.
        values: The value at each point (e.g. mean eval loss).

    Returns:
        The gap, or ``None`` with fewer than three points.
    """
    if len(params) != len(values):
        raise ValueError(f"params and values differ in length: {len(params)} vs {len(values)}")
    if len(params) < 3:
        return None
    order = np.argsort(params)
    x = np.log(np.asarray(params, dtype=float)[order])
    v = np.asarray(values, dtype=float)[order]
    gaps = []
    for i in range(len(x) - 2):
        slope_left = (v[i + 1] - v[i]) / (x[i + 1] - x[i])
        slope_right = (v[i + 2] - v[i + 1]) / (x[i + 2] - x[i + 1])
        c = (slope_right - slope_left) / (x[i + 2] - x[i])
        gaps += [c * (x[j + 1] - x[j]) ** 2 / 4 for j in (i, i + 1)]
    return float(max(gaps, key=abs))


def comparison_budgets(curve_a: Curve, curve_b: Curve) -> list[float]:
    """Each curve's own measured budgets that fall inside the other curve's range, sorted.

    Args:
        curve_a: First curve.
        curve_b: Second curve.

    Returns:
        Budgets at which one curve is measured and the other needs no extrapolation.
    """

    def inside(p: float, curve: Curve) -> bool:
        return bool(curve) and min(curve) <= p <= max(curve)

    budgets = {p for p in curve_a if inside(p, curve_b)} | {
        p for p in curve_b if inside(p, curve_a)
    }
    return sorted(budgets)


@dataclass(frozen=True)
class BudgetDifference:
    """Difference of two interpolated curves at one budget (curve a minus curve b)."""

    budget: float
    status: str
    """:data:`COMPARED`, or :data:`EXTRAPOLATION` when outside either curve's range."""
    n: int
    """Seeds measured at every point of both curves."""
    mean: float | None
    """Difference of the interpolated mean losses."""
    boot_low: float | None
    """Lower end of the seed bootstrap interval; ``None`` for ``n < 2``."""
    boot_high: float | None
    t_low: float | None
    """Lower end of the paired t interval of the per-seed interpolated differences."""
    t_high: float | None
    p: float | None
    """Paired t-test p on the per-seed interpolated differences."""
    p_holm: float | None
    """Holm-adjusted over the budgets compared in one call; ``None`` with fewer than
    ``MIN_SEEDS`` seeds (no test is made)."""


def _seed_curve(curve: Curve, seeds: Sequence[int]) -> tuple[list[float], np.ndarray]:
    params = sorted(curve)
    return params, np.array([[float(curve[p][s]) for s in seeds] for p in params])


def equal_budget_difference(
    curve_a: Curve,
    curve_b: Curve,
    budgets: Sequence[float],
    n_boot: int = 2000,
    seed: int = 0,
    conf: float = 0.95,
) -> list[BudgetDifference]:
    """Compares two budget curves at equal trainable parameters.

    Each seed's curve is interpolated linearly in ``log(params)`` (:func:`interpolate_log`);
    the per-seed differences at a budget are paired because seeds are shared blocks. The
    interval resamples seeds with replacement (the same seeds for both curves); the p-value is
    the paired t-test on the per-seed differences, since with 3 seeds the seed bootstrap has
    only 10 distinct resamples and is too narrow to test with (``docs/STATISTICS.md``).

    Args:
        curve_a: ``{params: {seed: loss}}`` of the first placement.
        curve_b: The same for the second placement.
        budgets: Parameter counts to compare at (see :func:`comparison_budgets`).
        n_boot: Bootstrap resamples.
        seed: Bootstrap generator seed.
        conf: Confidence level.

    Returns:
        One :class:`BudgetDifference` per budget, in order; budgets outside either curve's range
        are :data:`EXTRAPOLATION` and not compared.
    """
    check_conf(conf)

    def complete(curve: Curve) -> set[int]:
        sets = [{s for s, v in pt.items() if is_ok(v)} for pt in curve.values()]
        return set.intersection(*sets) if sets else set()

    seeds = sorted(complete(curve_a) & complete(curve_b))
    pa, la = _seed_curve(curve_a, seeds)
    pb, lb = _seed_curve(curve_b, seeds)
    rng = np.random.default_rng(seed)

    def inside(budget: float, params: list[float]) -> bool:
        return bool(params) and min(params) <= budget <= max(params)

    tail = 100 * (1 - conf) / 2
    found: list[tuple[Paired, np.ndarray] | None] = []
    for budget in budgets:
        if not (inside(budget, pa) and inside(budget, pb)):
            found.append(None)
            continue
        at_a = np.array([interpolate_log(pa, la[:, j], budget) for j in range(len(seeds))])
        at_b = np.array([interpolate_log(pb, lb[:, j], budget) for j in range(len(seeds))])
        pd = paired_difference(dict(zip(seeds, at_a)), dict(zip(seeds, at_b)), conf)
        found.append((pd, at_a - at_b))
    # A test needs MIN_SEEDS seeds, as everywhere in the report: fewer make no test to adjust.
    ps_holm = holm([f[0].p if f and f[0].n >= MIN_SEEDS else None for f in found])
    out = []
    for budget, f, p_holm in zip(budgets, found, ps_holm):
        if f is None:
            out.append(BudgetDifference(budget, EXTRAPOLATION, len(seeds), *([None] * 7)))
            continue
        pd, d = f
        low = high = None
        if pd.n >= 2:
            # Paired resampling: one draw of seeds serves both curves (seeds are shared blocks).
            w = rng.multinomial(pd.n, np.full(pd.n, 1.0 / pd.n), size=n_boot)
            low, high = (float(v) for v in np.percentile(w @ d / pd.n, [tail, 100 - tail]))
        out.append(
            BudgetDifference(
                budget, COMPARED, pd.n, pd.mean, low, high, pd.ci_low, pd.ci_high, pd.p, p_holm
            )
        )
    return out

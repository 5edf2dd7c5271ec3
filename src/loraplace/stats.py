"""Small, pure statistics for placement studies: seed summaries, Welch's t-test, Pareto fronts.

Every function takes plain sequences of numbers and returns plain Python values. Missing
values (``None``) and non-finite values (NaN, inf) are dropped before computing, and a
statistic that is undefined for the sample size is ``None`` rather than NaN, so callers can
write it as an empty cell.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _sp

__all__ = [
    "SampleSummary",
    "finite",
    "mean",
    "std",
    "ci95",
    "summarize_sample",
    "welch_p_value",
    "pareto_front",
]

Number = float | int | None


@dataclass(frozen=True)
class SampleSummary:
    """Mean, spread and confidence interval of one metric over seeds."""

    n: int
    """Number of finite values the summary was computed from."""
    mean: float | None
    """Arithmetic mean; ``None`` when ``n == 0``."""
    std: float | None
    """Sample standard deviation (``ddof=1``); ``None`` when ``n < 2``."""
    ci95: float | None
    """Half-width of the two-sided 95% t confidence interval of the mean; ``None`` when ``n < 2``."""


def finite(values: Sequence[Number]) -> list[float]:
    """Returns the finite values of ``values`` as floats, dropping ``None``, NaN and inf."""
    return [float(v) for v in values if v is not None and math.isfinite(float(v))]


def mean(values: Sequence[Number]) -> float | None:
    """Arithmetic mean of the finite values, or ``None`` when there are none."""
    xs = finite(values)
    return float(np.mean(xs)) if xs else None


def std(values: Sequence[Number]) -> float | None:
    """Sample standard deviation (``ddof=1``) of the finite values; ``None`` for fewer than two."""
    xs = finite(values)
    return float(np.std(xs, ddof=1)) if len(xs) >= 2 else None


def ci95(values: Sequence[Number]) -> float | None:
    """Half-width of the 95% confidence interval of the mean, from Student's t distribution.

    ``t.ppf(0.975, n - 1) * std / sqrt(n)``: the interval ``mean ± ci95`` covers the true mean
    in 95% of repetitions if the values are i.i.d. normal.

    Args:
        values: One metric over seeds.

    Returns:
        The half-width, or ``None`` for fewer than two finite values.
    """
    xs = finite(values)
    if len(xs) < 2:
        return None
    n = len(xs)
    return float(_sp.t.ppf(0.975, n - 1) * np.std(xs, ddof=1) / math.sqrt(n))


def summarize_sample(values: Sequence[Number]) -> SampleSummary:
    """Computes :class:`SampleSummary` (n, mean, std, 95% CI) of the finite values."""
    return SampleSummary(
        n=len(finite(values)), mean=mean(values), std=std(values), ci95=ci95(values)
    )


def _is_constant(xs: list[float]) -> bool:
    # Relative tolerance: [0.1 + 0.2, 0.3] should count as constant, not as a tiny variance.
    return max(xs) - min(xs) <= 1e-12 * max(1.0, max(abs(x) for x in xs))


def welch_p_value(a: Sequence[Number], b: Sequence[Number]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test between two samples.

    Welch, B. L. (1947), "The generalization of Student's problem when several different
    population variances are involved", Biometrika 34.

    Zero-variance cases, where the t statistic is undefined, are decided directly: two constant
    samples with the same value give ``1.0`` (no evidence of a difference) and two constant
    samples with different values give ``0.0``. A NaN is never returned.

    Args:
        a: First sample (e.g. eval loss of one strategy over seeds).
        b: Second sample.

    Returns:
        The p-value in ``[0, 1]``, or ``None`` when either sample has fewer than two finite values.
    """
    xa, xb = finite(a), finite(b)
    if len(xa) < 2 or len(xb) < 2:
        return None
    if _is_constant(xa) and _is_constant(xb):
        return 1.0 if math.isclose(xa[0], xb[0], rel_tol=1e-12, abs_tol=1e-12) else 0.0
    with warnings.catch_warnings():  # near-constant samples: scipy warns, the result is still fine
        warnings.simplefilter("ignore", RuntimeWarning)
        p = float(_sp.ttest_ind(xa, xb, equal_var=False).pvalue)
    return None if math.isnan(p) else min(1.0, max(0.0, p))


def pareto_front(points: Sequence[tuple[Number, Number]]) -> list[bool]:
    """Marks the points on the non-dominated front when minimising both coordinates.

    A point is dominated when another point is ``<=`` on both coordinates and ``<`` on at least
    one. Identical points do not dominate each other, so duplicates share the front. A point with
    a missing or non-finite coordinate is never on the front and never dominates.

    Args:
        points: ``(cost, loss)`` pairs, e.g. ``(trainable_params, eval_loss_mean)``.

    Returns:
        One flag per point, in input order: ``True`` when the point is non-dominated.
    """
    valid = [len(finite(p)) == 2 for p in points]
    flags = []
    for i, (x, y) in enumerate(points):
        if not valid[i]:
            flags.append(False)
            continue
        dominated = any(
            valid[j] and ox <= x and oy <= y and (ox < x or oy < y)
            for j, (ox, oy) in enumerate(points)
            if j != i
        )
        flags.append(not dominated)
    return flags

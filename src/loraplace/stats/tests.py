"""Core statistics for placement studies: summaries, Welch, paired t, Holm, TOST, Pareto.

Every function takes plain numbers (or ``{seed: value}`` mappings) and returns plain Python
values. Missing values (``None``) and non-finite values (NaN, inf) are dropped before computing,
and a statistic that is undefined is ``None``, never NaN, so callers can write it as an empty
cell. The formulas, thresholds and their sources are in ``docs/STATISTICS.md``.

A seed is a block: within one seed every strategy trains on the same batches in the same order,
so strategies are compared by *paired* tests over their common seeds. The statistics are split
by concern: this module (summaries and the tests themselves), :mod:`loraplace.measures`
(accuracy, the eval-example bootstrap, speedup ratios, rankings), :mod:`loraplace.verdicts` (the
named verdicts and the comparison families the report makes) and :mod:`loraplace.curves`
(budget curves).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

__all__ = [
    "Equivalence",
    "Number",
    "Paired",
    "SeedValues",
    "ci95",
    "family_size",
    "finite",
    "holm",
    "mean",
    "min_detectable_difference",
    "paired_difference",
    "pareto_front",
    "std",
    "tost_paired",
    "welch_p_value",
]

Number = float | int | None
SeedValues = Mapping[int, Number]
"""One metric of one strategy, by seed: ``{seed: value}``."""


# --- Sample summaries and the unpaired test ------------------------------------------------------


def is_ok(v: Number) -> bool:
    return v is not None and math.isfinite(float(v))


def finite(values: Sequence[Number]) -> list[float]:
    """Returns the finite values of ``values`` as floats, dropping ``None``, NaN and inf."""
    return [float(v) for v in values if is_ok(v)]


def mean(values: Sequence[Number]) -> float | None:
    """Arithmetic mean of the finite values, or ``None`` when there are none."""
    xs = finite(values)
    return float(np.mean(xs)) if xs else None


def std(values: Sequence[Number]) -> float | None:
    """Sample standard deviation (``ddof=1``) of the finite values; ``None`` for fewer than two."""
    xs = finite(values)
    return float(np.std(xs, ddof=1)) if len(xs) >= 2 else None


def _t_quantile(q: float, df: float) -> float:
    return float(special.stdtrit(df, q))


def _t_two_sided_p(t: float, df: float) -> float:
    return min(1.0, 2.0 * float(special.stdtr(df, -abs(t))))


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
    return _t_quantile(0.975, n - 1) * float(np.std(xs, ddof=1)) / math.sqrt(n)


def _mean_sd(xs: Sequence[float]) -> tuple[float, float]:
    # Plain floats: for a handful of seeds numpy's per-call overhead dominates.
    n = len(xs)
    m = math.fsum(xs) / n
    return m, math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (n - 1))


def _is_constant(xs: Sequence[float], scale: float = 1.0) -> bool:
    # Relative to the magnitude of the inputs: [0.1 + 0.2, 0.3] is constant, not a tiny variance.
    return max(xs) - min(xs) <= 1e-12 * max(1.0, scale, max(abs(x) for x in xs))


def welch_p_value(a: Sequence[Number], b: Sequence[Number]) -> float | None:
    """Two-sided p-value of Welch's unequal-variance t-test between two samples.

    Welch, B. L. (1947), "The generalization of Student's problem when several different
    population variances are involved", Biometrika 34. Unpaired, so it ignores the seed blocks:
    a secondary figure, the verdicts use :func:`paired_difference`.

    Args:
        a: First sample (e.g. eval loss of one strategy over seeds).
        b: Second sample.

    Returns:
        The p-value in ``[0, 1]``; ``None`` when either sample has fewer than two finite values,
        or when both are constant (the t statistic is 0/0: undefined, neither 0 nor 1).
    """
    xa, xb = finite(a), finite(b)
    if len(xa) < 2 or len(xb) < 2 or (_is_constant(xa) and _is_constant(xb)):
        return None
    (ma, sa), (mb, sb) = _mean_sd(xa), _mean_sd(xb)
    va, vb = sa * sa / len(xa), sb * sb / len(xb)
    se2 = va + vb
    df = se2**2 / (va**2 / (len(xa) - 1) + vb**2 / (len(xb) - 1))
    return _t_two_sided_p((ma - mb) / math.sqrt(se2), df)


# --- Paired tests over seeds ---------------------------------------------------------------------


@dataclass(frozen=True)
class Paired:
    """Paired comparison of two strategies over their common seeds (differences ``a - b``)."""

    n: int
    """Number of common seeds with a finite value on both sides."""
    seeds: tuple[int, ...]
    """The common seeds, sorted."""
    mean: float | None
    """Mean difference ``a - b``; ``None`` when ``n == 0``."""
    sd: float | None
    """Sample standard deviation of the differences (``ddof=1``); ``None`` when ``n < 2``."""
    df: int | None
    """Degrees of freedom ``n - 1``; ``None`` when ``n < 2``."""
    ci_low: float | None
    """Lower end of the t confidence interval of the mean difference; ``None`` when undefined."""
    ci_high: float | None
    """Upper end of the t confidence interval; ``None`` when undefined."""
    p: float | None
    """Two-sided paired t-test p-value; ``None`` when ``n < 2`` or all differences are equal."""
    conf: float
    """Confidence level of the interval."""


def check_conf(conf: float) -> None:
    if not 0.0 < conf < 1.0:
        raise ValueError(f"conf must be in (0, 1), got {conf!r}")


def _aligned(a: SeedValues, b: SeedValues) -> tuple[tuple[int, ...], list[float], list[float]]:
    """The common seeds with finite values on both sides, and the two aligned value lists."""
    for name, x in (("a", a), ("b", b)):
        if not isinstance(x, Mapping):
            raise TypeError(
                f"paired statistics take {{seed: value}} mappings so that values pair by seed; "
                f"{name} is a {type(x).__name__}"
            )
    seeds = tuple(sorted(s for s in a.keys() & b.keys() if is_ok(a[s]) and is_ok(b[s])))
    return seeds, [float(a[s]) for s in seeds], [float(b[s]) for s in seeds]


def _differences(a: SeedValues, b: SeedValues) -> tuple[tuple[int, ...], list[float], bool]:
    seeds, xa, xb = _aligned(a, b)
    d = [x - y for x, y in zip(xa, xb)]
    scale = max(map(abs, xa + xb), default=1.0)
    return seeds, d, len(d) >= 2 and _is_constant(d, scale)


def paired_difference(a: SeedValues, b: SeedValues, conf: float = 0.95) -> Paired:
    """Paired t statistics of ``a - b`` over the seeds both strategies finished.

    The differences ``d_s = a_s - b_s`` remove the seed's shared effect (its batches and
    initialisation). ``t = mean(d) / (sd(d) / sqrt(n))`` on ``n - 1`` degrees of freedom, the
    interval is ``mean(d) ± t_{(1+conf)/2, n-1} · sd(d) / sqrt(n)``.

    Args:
        a: ``{seed: value}`` of the first strategy (e.g. eval loss).
        b: ``{seed: value}`` of the second; only seeds present and finite in both are used.
        conf: Confidence level of the interval.

    Returns:
        A :class:`Paired`. With all differences equal the test is undefined: ``p`` and the
        interval are ``None`` (not 0), ``sd`` is 0.

    Raises:
        TypeError: When ``a`` or ``b`` is not a mapping (a list would pair values by position).
        ValueError: When ``conf`` is not in (0, 1).
    """
    check_conf(conf)
    seeds, d, constant = _differences(a, b)
    n = len(d)
    if n < 2:
        return Paired(n, seeds, d[0] if d else None, None, None, None, None, None, conf)
    m, sd = _mean_sd(d)
    if constant:
        return Paired(n, seeds, m, 0.0, n - 1, None, None, None, conf)
    se = sd / math.sqrt(n)
    half = _t_quantile((1 + conf) / 2, n - 1) * se
    p = _t_two_sided_p(m / se, n - 1)
    return Paired(n, seeds, m, sd, n - 1, m - half, m + half, p, conf)


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm–Bonferroni step-down adjusted p-values.

    Holm, S. (1979), "A simple sequentially rejective multiple test procedure", Scand. J.
    Statist. 6:65–70. With the ``m`` defined p-values sorted ``p_(1) <= ... <= p_(m)``, the
    adjusted value of ``p_(i)`` is ``max_{j <= i} min(1, (m - j + 1) · p_(j))``. Rejecting every
    adjusted p below alpha keeps the family-wise error rate at most alpha.

    Args:
        pvalues: One p-value per test; ``None`` (or NaN) marks a test that was not run.

    Returns:
        Adjusted p-values in input order; ``None`` entries stay ``None`` and do not count in the
        family size (see :func:`family_size`).

    Raises:
        ValueError: When a p-value is outside [0, 1].
    """
    idx = [i for i, p in enumerate(pvalues) if is_ok(p)]
    for i in idx:
        if not 0.0 <= pvalues[i] <= 1.0:
            raise ValueError(f"p-value {pvalues[i]!r} at position {i} is outside [0, 1]")
    m = len(idx)
    out: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: pvalues[i])):
        running = max(running, min(1.0, (m - rank) * float(pvalues[i])))
        out[i] = running
    return out


def family_size(pvalues: Sequence[float | None]) -> int:
    """Number of tests :func:`holm` adjusts over: the defined (non-``None``, finite) p-values."""
    return sum(1 for p in pvalues if is_ok(p))


@dataclass(frozen=True)
class Equivalence:
    """Paired two one-sided tests (TOST) for ``|mean(a - b)| < margin``."""

    n: int
    """Number of common seeds."""
    mean: float | None
    """Mean difference ``a - b``."""
    margin: float
    """Declared equivalence margin, in the metric's units."""
    alpha: float
    """Level of each one-sided test."""
    p: float | None
    """TOST p-value, the larger of the two one-sided p-values; ``None`` when undefined."""
    ci_low: float | None
    """Lower end of the ``1 - 2·alpha`` t interval of the mean difference."""
    ci_high: float | None
    """Upper end of that interval."""


def tost_paired(a: SeedValues, b: SeedValues, margin: float, alpha: float = 0.05) -> Equivalence:
    """Paired TOST equivalence test within ``±margin``.

    Schuirmann, D. J. (1987), "A comparison of the two one-sided tests procedure and the power
    approach for assessing the equivalence of average bioavailability", J. Pharmacokin.
    Biopharm. 15:657–680. ``H0: mean <= -margin`` is tested by ``t_L = (mean + margin) / se``
    and ``H0: mean >= margin`` by ``t_U = (mean - margin) / se``; the TOST p is the larger of
    the two one-sided p-values. Equivalence at level alpha holds (``p < alpha``) if and only if
    the ``1 - 2·alpha`` t interval lies inside ``(-margin, margin)``.

    Args:
        a: ``{seed: value}`` of the first strategy.
        b: ``{seed: value}`` of the second.
        margin: Positive equivalence margin, declared before looking at the data.
        alpha: Level of each one-sided test.

    Returns:
        An :class:`Equivalence`; ``p`` and the interval are ``None`` for fewer than two seeds or
        all differences equal.

    Raises:
        ValueError: When ``margin <= 0`` or ``alpha`` is not in (0, 0.5).
        TypeError: When ``a`` or ``b`` is not a mapping.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive number, got {margin!r}")
    if not 0.0 < alpha < 0.5:
        raise ValueError(f"alpha must be in (0, 0.5), got {alpha!r}")
    _, d, constant = _differences(a, b)
    n = len(d)
    if n < 2 or constant:
        return Equivalence(n, math.fsum(d) / n if n else None, margin, alpha, None, None, None)
    m, sd = _mean_sd(d)
    se = sd / math.sqrt(n)
    p_lower = float(special.stdtr(n - 1, -(m + margin) / se))
    p_upper = float(special.stdtr(n - 1, (m - margin) / se))
    half = _t_quantile(1 - alpha, n - 1) * se
    return Equivalence(n, m, margin, alpha, max(p_lower, p_upper), m - half, m + half)


def min_detectable_difference(
    sd: float, n: int, alpha: float = 0.05, power: float = 0.8
) -> float | None:
    """Smallest true paired difference a two-sided paired t-test detects with the given power.

    The usual approximation ``(t_{1-alpha/2, n-1} + t_{power, n-1}) · sd / sqrt(n)``, where
    ``sd`` is the standard deviation of the per-seed differences.

    Args:
        sd: Standard deviation of the paired differences.
        n: Number of seeds.
        alpha: Two-sided level (after any multiplicity correction the report applies).
        power: Wanted probability of detecting the difference.

    Returns:
        The difference, in the metric's units; ``None`` for ``n < 2``.
    """
    if n < 2:
        return None
    df = n - 1
    return (_t_quantile(1 - alpha / 2, df) + _t_quantile(power, df)) * sd / math.sqrt(n)


# --- Pareto front ---------------------------------------------------------------------------------


def pareto_front(points: Sequence[tuple[Number, Number]], rel_tol: float = 0.0) -> list[bool]:
    """Marks the points on the non-dominated front when minimising (cost, loss).

    Costs within ``rel_tol`` of each other count as the same budget. Point ``j`` dominates point
    ``i`` when ``cost_j <= cost_i · (1 + rel_tol)`` and ``loss_j < loss_i``, or when
    ``cost_j · (1 + rel_tol) < cost_i`` and ``loss_j <= loss_i``. With ``rel_tol = 0`` this is
    the usual rule (``<=`` on both, ``<`` on one). Identical points do not dominate each other.
    Domination never runs both ways, so a non-empty set always has a front.

    Args:
        points: ``(cost, loss)`` pairs, e.g. ``(trainable_params, eval_loss_mean)``; a point
            with a missing or non-finite coordinate is never on the front and never dominates.
        rel_tol: Relative cost tolerance, e.g. 0.05: a 0.6% cheaper point with higher loss is
            not on the front.

    Returns:
        One flag per point, in input order: ``True`` when the point is non-dominated.

    Raises:
        ValueError: When ``rel_tol`` is negative.
    """
    if not rel_tol >= 0:
        raise ValueError(f"rel_tol must be >= 0, got {rel_tol!r}")
    valid = [len(finite(p)) == 2 for p in points]
    k = 1.0 + rel_tol

    def dominates(j: int, i: int) -> bool:
        (cj, lj), (ci, li) = points[j], points[i]
        return (cj <= ci * k and lj < li) or (cj * k < ci and lj <= li)

    return [
        valid[i] and not any(valid[j] and j != i and dominates(j, i) for j in range(len(points)))
        for i in range(len(points))
    ]

"""Pure statistics for placement studies: paired tests over seeds, multiplicity, verdicts, curves.

Every function takes plain numbers (or ``{seed: value}`` mappings) and returns plain Python
values. Missing values (``None``) and non-finite values (NaN, inf) are dropped before computing,
and a statistic that is undefined is ``None``, never NaN, so callers can write it as an empty
cell. The formulas, thresholds and their sources are in ``docs/STATISTICS.md``.

A seed is a block: within one seed every strategy trains on the same batches in the same order,
so strategies are compared by *paired* tests over their common seeds. The report turns the
numbers into sentences only through the named verdicts defined here (:func:`verdict`).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import special

__all__ = [
    "BETTER",
    "CLEAR",
    "CLEAR_P",
    "COMPARED",
    "EQUIVALENCE_ALPHA",
    "EQUIVALENT",
    "EXPLORATORY",
    "EXTRAPOLATION",
    "FASTER",
    "MIN_SEEDS",
    "REFERENCE",
    "SLOWER",
    "SUGGESTIVE",
    "SUGGESTIVE_P",
    "SUPPORTED",
    "SUPPORTED_P",
    "UNRESOLVED",
    "WORSE",
    "BestFinding",
    "Bootstrap",
    "BudgetDifference",
    "Comparison",
    "Equivalence",
    "Paired",
    "Ratio",
    "RankStability",
    "SampleSummary",
    "Verdict",
    "best_vs_others",
    "bootstrap_paired_examples",
    "ci95",
    "compare_pairs",
    "compare_to_reference",
    "comparison_budgets",
    "equal_budget_difference",
    "example_array",
    "family_size",
    "finite",
    "holm",
    "interpolate_log",
    "kendall_tau",
    "mcnemar_exact",
    "mean",
    "min_detectable_difference",
    "paired_difference",
    "pairwise",
    "pareto_front",
    "ranking_stability",
    "ratio_interval",
    "speedup_claim",
    "std",
    "summarize_sample",
    "tost_paired",
    "verdict",
    "welch_p_value",
    "wilson_interval",
]

Number = float | int | None
SeedValues = Mapping[int, Number]
"""One metric of one strategy, by seed: ``{seed: value}``."""

# --- Verdicts: the only words the report may use for a comparison -------------------------------

REFERENCE = "reference"
"""The strategy every other one is compared with."""
EXPLORATORY = "exploratory"
"""Fewer than :data:`MIN_SEEDS` paired seeds: numbers are shown, no test is run, no claim made."""
CLEAR = "clear"
"""Holm-adjusted paired p below :data:`CLEAR_P`."""
SUPPORTED = "supported"
"""Holm-adjusted paired p below :data:`SUPPORTED_P`."""
EQUIVALENT = "equivalent"
"""Not clear/supported, and TOST within the declared margin (Holm-adjusted) below
:data:`EQUIVALENCE_ALPHA`."""
SUGGESTIVE = "suggestive"
"""Holm-adjusted paired p below :data:`SUGGESTIVE_P`, and not equivalent."""
UNRESOLVED = "unresolved"
"""None of the above: the data neither separate the strategies nor show them equivalent."""

CLEAR_P = 0.01
SUPPORTED_P = 0.05
SUGGESTIVE_P = 0.10
EQUIVALENCE_ALPHA = 0.05
MIN_SEEDS = 3
"""Fewest paired seeds for a test to be run and a directional claim to be made."""

BETTER = "better"
"""Lower eval loss than the comparison strategy."""
WORSE = "worse"
"""Higher eval loss than the comparison strategy."""
_DIRECTIONAL = (CLEAR, SUPPORTED, SUGGESTIVE)

FASTER = "faster"
SLOWER = "slower"

COMPARED = "compared"
"""A budget inside both curves' measured ranges."""
EXTRAPOLATION = "extrapolation"
"""A budget outside a curve's measured range: not compared."""


# --- Sample summaries and the unpaired test ------------------------------------------------------


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
    """Half-width of the two-sided 95% t confidence interval of the mean; ``None`` for ``n < 2``."""


def _ok(v: Number) -> bool:
    return v is not None and math.isfinite(float(v))


def finite(values: Sequence[Number]) -> list[float]:
    """Returns the finite values of ``values`` as floats, dropping ``None``, NaN and inf."""
    return [float(v) for v in values if _ok(v)]


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


def summarize_sample(values: Sequence[Number]) -> SampleSummary:
    """Computes :class:`SampleSummary` (n, mean, std, 95% CI) of the finite values."""
    return SampleSummary(
        n=len(finite(values)), mean=mean(values), std=std(values), ci95=ci95(values)
    )


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


def _check_conf(conf: float) -> None:
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
    seeds = tuple(sorted(s for s in a.keys() & b.keys() if _ok(a[s]) and _ok(b[s])))
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
    _check_conf(conf)
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
    idx = [i for i, p in enumerate(pvalues) if _ok(p)]
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
    return sum(1 for p in pvalues if _ok(p))


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


# --- Accuracies -----------------------------------------------------------------------------------


def wilson_interval(k: int, n: int, conf: float = 0.95) -> tuple[float, float] | None:
    """Wilson score interval for a proportion (e.g. an accuracy of ``k`` correct out of ``n``).

    Wilson, E. B. (1927), "Probable inference, the law of succession, and statistical
    inference", JASA 22:209–212. With ``p = k/n`` and ``z`` the normal quantile:
    ``(p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)``.

    Args:
        k: Number of successes.
        n: Number of trials.
        conf: Confidence level.

    Returns:
        ``(low, high)`` inside [0, 1], or ``None`` when ``n == 0``.

    Raises:
        ValueError: When not ``0 <= k <= n``, or ``conf`` not in (0, 1).
    """
    _check_conf(conf)
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k!r}, n={n!r}")
    if n == 0:
        return None
    z = float(special.ndtri((1 + conf) / 2))
    p, z2 = k / n, z * z
    center = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, center - half), min(1.0, center + half)


def mcnemar_exact(b: int, c: int) -> float | None:
    """Exact two-sided McNemar p-value from the discordant counts of two paired classifiers.

    McNemar, Q. (1947), "Note on the sampling error of the difference between correlated
    proportions or percentages", Psychometrika 12:153–157. Under H0 the ``b`` examples only the
    first got right and the ``c`` only the second got right split as Binomial(b + c, 1/2);
    ``p = min(1, 2 · P(X <= min(b, c)))``.

    Args:
        b: Examples the first classifier got right and the second wrong.
        c: Examples the second got right and the first wrong.

    Returns:
        The p-value, or ``None`` without discordant examples (no information).

    Raises:
        ValueError: When a count is negative.
    """
    if b < 0 or c < 0:
        raise ValueError(f"counts must be non-negative, got b={b!r}, c={c!r}")
    n = b + c
    if n == 0:
        return None
    return min(1.0, 2.0 * float(special.bdtr(min(b, c), n, 0.5)))


# --- Resampling eval examples --------------------------------------------------------------------


@dataclass(frozen=True)
class Bootstrap:
    """A percentile bootstrap interval."""

    estimate: float
    """The statistic on the original data."""
    low: float
    """Lower percentile of the resampled statistic."""
    high: float
    """Upper percentile of the resampled statistic."""
    n_boot: int
    """Number of resamples."""
    conf: float
    """Confidence level."""


def example_array(records: Sequence[Mapping[str, float]]) -> np.ndarray:
    """Per-example eval records ``{"example", "tokens", "loss_sum"}`` as an ``(E, 2)`` array.

    Args:
        records: One record per eval example, as a run writes them.

    Returns:
        Rows ``(tokens, loss_sum)`` sorted by example index.

    Raises:
        ValueError: When an example index repeats.
    """
    rows = sorted((int(r["example"]), float(r["tokens"]), float(r["loss_sum"])) for r in records)
    idx = [r[0] for r in rows]
    if len(set(idx)) != len(idx):
        raise ValueError("per-example records repeat an example index")
    return np.array([r[1:] for r in rows], dtype=float).reshape(len(rows), 2)


def _stack(runs: Mapping[int, np.ndarray], seeds: Sequence[int], side: str) -> np.ndarray:
    arrays = [np.asarray(runs[s], dtype=float) for s in seeds]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1 or arrays[0].ndim != 2 or arrays[0].shape[1] != 2:
        raise ValueError(
            f"{side}: every seed needs an (examples, 2) array of (tokens, loss_sum) over the "
            f"same eval examples; got shapes {sorted(shapes)}"
        )
    out = np.stack(arrays)  # (seeds, examples, 2)
    if np.any(out[..., 0] < 0) or not np.all(np.isfinite(out)):
        raise ValueError(f"{side}: token counts must be >= 0 and all values finite")
    return out


def bootstrap_paired_examples(
    a_runs: Mapping[int, np.ndarray],
    b_runs: Mapping[int, np.ndarray],
    n_boot: int = 2000,
    seed: int = 0,
    conf: float = 0.95,
) -> Bootstrap | None:
    """Percentile bootstrap over eval examples of the mean-over-seeds eval-loss difference.

    Efron, B. & Tibshirani, R. J. (1993), "An Introduction to the Bootstrap", Chapman & Hall.
    Each resample draws example indices with replacement, the same indices for every seed and
    both strategies (paired); its statistic is the mean over seeds of
    ``sum(loss_a)/sum(tokens_a) - sum(loss_b)/sum(tokens_b)``. This measures how much the
    difference depends on the particular eval set, not on the seeds.

    Args:
        a_runs: ``{seed: (E, 2) array of (tokens, loss_sum)}`` of the first strategy.
        b_runs: The same for the second strategy, over the same eval examples in the same order.
        n_boot: Number of resamples.
        seed: Seed of the resampling generator.
        conf: Confidence level.

    Returns:
        The :class:`Bootstrap` over the common seeds, or ``None`` without a common seed, without
        examples, or when a run's examples hold no tokens.

    Raises:
        ValueError: When the arrays disagree in shape or hold negative token counts.
    """
    _check_conf(conf)
    seeds = sorted(a_runs.keys() & b_runs.keys())
    if not seeds:
        return None
    a, b = _stack(a_runs, seeds, "a_runs"), _stack(b_runs, seeds, "b_runs")
    if a.shape != b.shape:
        raise ValueError(f"a_runs and b_runs cover different examples: {a.shape} vs {b.shape}")
    e = a.shape[1]
    if e == 0:
        return None
    # Sampling E indices with replacement is a multinomial draw of per-example counts.
    w = np.random.default_rng(seed).multinomial(e, np.full(e, 1.0 / e), size=n_boot)

    def diff(weights: np.ndarray) -> np.ndarray:  # weights (B, E) -> (B,)
        with np.errstate(invalid="ignore", divide="ignore"):
            ra = (weights @ a[..., 1].T) / (weights @ a[..., 0].T)
            rb = (weights @ b[..., 1].T) / (weights @ b[..., 0].T)
        return (ra - rb).mean(axis=1)

    estimate = float(diff(np.ones((1, e)))[0])
    boot = diff(w.astype(float))
    boot = boot[np.isfinite(boot)]  # a resample whose examples hold no tokens has no loss
    if not math.isfinite(estimate) or boot.size == 0:
        return None
    tail = 100 * (1 - conf) / 2
    low, high = np.percentile(boot, [tail, 100 - tail])
    return Bootstrap(estimate, float(low), float(high), n_boot, conf)


# --- Speedups and rankings -----------------------------------------------------------------------


@dataclass(frozen=True)
class Ratio:
    """Geometric mean of per-seed ratios with a t interval on their logarithms."""

    n: int
    """Number of seeds with a positive, finite numerator and denominator."""
    geomean: float | None
    """``exp(mean(log ratio))``; ``None`` when ``n == 0``."""
    ci_low: float | None
    """Lower end of ``exp(mean ± t · sd / sqrt(n))``; ``None`` for ``n < 2`` or equal ratios."""
    ci_high: float | None
    """Upper end of that interval."""
    conf: float
    """Confidence level."""


def ratio_interval(per_seed_num: SeedValues, per_seed_den: SeedValues, conf: float = 0.95) -> Ratio:
    """Per-seed ratio ``num / den`` (e.g. reference time / strategy time): geometric mean and CI.

    A speedup is a ratio, so it is averaged on the log scale, where ``r`` and ``1/r`` are
    symmetric; the t interval of the mean log ratio is exponentiated back.

    Args:
        per_seed_num: ``{seed: numerator}``.
        per_seed_den: ``{seed: denominator}``; seeds where either value is not positive and
            finite are dropped.
        conf: Confidence level.

    Returns:
        A :class:`Ratio`.

    Raises:
        TypeError: When an argument is not a mapping.
    """
    if not isinstance(per_seed_num, Mapping) or not isinstance(per_seed_den, Mapping):
        raise TypeError("ratio_interval takes {seed: value} mappings, so that ratios pair by seed")
    pos_num = {s: v for s, v in per_seed_num.items() if _ok(v) and v > 0}
    pos_den = {s: v for s, v in per_seed_den.items() if _ok(v) and v > 0}
    logs = {s: math.log(v) for s, v in pos_num.items()}
    p = paired_difference(logs, {s: math.log(v) for s, v in pos_den.items()}, conf)
    exp = lambda x: None if x is None else math.exp(x)  # noqa: E731
    return Ratio(p.n, exp(p.mean), exp(p.ci_low), exp(p.ci_high), conf)


def speedup_claim(ratio: Ratio) -> str:
    """What may be said of a speedup ratio (``> 1`` means faster than the comparison).

    Args:
        ratio: From :func:`ratio_interval` with the reference time as numerator.

    Returns:
        :data:`FASTER` when the interval lies above 1, :data:`SLOWER` when below 1,
        :data:`EXPLORATORY` with fewer than :data:`MIN_SEEDS` seeds, else :data:`UNRESOLVED`.
    """
    if ratio.n < MIN_SEEDS:
        return EXPLORATORY
    if ratio.ci_low is not None and ratio.ci_low > 1.0:
        return FASTER
    if ratio.ci_high is not None and ratio.ci_high < 1.0:
        return SLOWER
    return UNRESOLVED


def kendall_tau(x: Sequence[Number], y: Sequence[Number]) -> float | None:
    """Kendall's tau-b rank correlation, which corrects for ties.

    Kendall, M. G. (1938), "A new measure of rank correlation", Biometrika 30:81–93; tau-b from
    Kendall (1945), "The treatment of ties in ranking problems", Biometrika 33:239–251.
    ``tau_b = (P - Q) / sqrt((n0 - n1)(n0 - n2))`` with ``P``/``Q`` the concordant/discordant
    pairs, ``n0 = n(n-1)/2`` and ``n1``/``n2`` the pairs tied in ``x``/``y``.

    Args:
        x: First score vector.
        y: Second, same length; positions where either value is missing are dropped.

    Returns:
        tau-b in [-1, 1], or ``None`` for fewer than two positions or a constant vector.

    Raises:
        ValueError: When the lengths differ.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    pts = [(float(u), float(v)) for u, v in zip(x, y) if _ok(u) and _ok(v)]
    n = len(pts)
    concordant = discordant = tied_x = tied_y = 0
    for (x1, y1), (x2, y2) in itertools.combinations(pts, 2):
        s = ((x1 > x2) - (x1 < x2)) * ((y1 > y2) - (y1 < y2))
        concordant += s > 0
        discordant += s < 0
        tied_x += x1 == x2
        tied_y += y1 == y2
    n0 = n * (n - 1) // 2
    denom = (n0 - tied_x) * (n0 - tied_y)
    return None if denom == 0 else float((concordant - discordant) / math.sqrt(denom))


@dataclass(frozen=True)
class RankStability:
    """How the ranking of strategies by a score (lower is better) changes between two reads."""

    n: int
    """Strategies scored in both."""
    tau: float | None
    """Kendall tau-b between the two score vectors."""
    order_a: tuple[str, ...]
    """Strategies from best to worst in the first read."""
    order_b: tuple[str, ...]
    """The same in the second read."""
    same_best: bool
    """Whether both reads put the same strategy first."""


def ranking_stability(
    scores_a: Mapping[str, Number], scores_b: Mapping[str, Number]
) -> RankStability:
    """Compares two rankings of strategies, e.g. eval loss at two checkpoints.

    Args:
        scores_a: ``{strategy: score}`` at the first read (lower is better).
        scores_b: ``{strategy: score}`` at the second read.

    Returns:
        A :class:`RankStability` over the strategies scored in both.
    """
    names = [k for k in scores_a if k in scores_b and _ok(scores_a[k]) and _ok(scores_b[k])]
    order_a = tuple(sorted(names, key=lambda k: float(scores_a[k])))
    order_b = tuple(sorted(names, key=lambda k: float(scores_b[k])))
    tau = kendall_tau([scores_a[k] for k in names], [scores_b[k] for k in names])
    same = bool(names) and order_a[0] == order_b[0]
    return RankStability(len(names), tau, order_a, order_b, same)


# --- Verdicts and the comparisons the report makes ----------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The named rule a comparison falls under, and its direction when it has one."""

    label: str
    """One of :data:`REFERENCE`, :data:`EXPLORATORY`, :data:`CLEAR`, :data:`SUPPORTED`,
    :data:`EQUIVALENT`, :data:`SUGGESTIVE`, :data:`UNRESOLVED`."""
    direction: str | None
    """:data:`BETTER` or :data:`WORSE` for clear/supported/suggestive; otherwise ``None``."""


def verdict(
    n: int,
    mean_difference: float | None,
    p_holm: float | None,
    tost_p_holm: float | None = None,
    is_reference: bool = False,
) -> Verdict:
    """Applies the verdict ladder to one comparison (differences are strategy minus comparison).

    Precedence, first match wins: reference; exploratory (``n < MIN_SEEDS``); clear
    (``p_holm < 0.01``); supported (``< 0.05``); equivalent (``tost_p_holm < 0.05``);
    suggestive (``p_holm < 0.10``); unresolved. Equivalence outranks suggestive because it is
    established at the 5% level while suggestive is not; ``docs/STATISTICS.md`` gives the rules.

    Args:
        n: Paired seeds.
        mean_difference: Mean of strategy minus comparison (lower loss is better).
        p_holm: Holm-adjusted paired t p-value, ``None`` when no test was run.
        tost_p_holm: Holm-adjusted TOST p-value, ``None`` when no equivalence test was run.
        is_reference: Whether this is the reference strategy itself.

    Returns:
        The :class:`Verdict`.
    """
    if is_reference:
        return Verdict(REFERENCE, None)
    if n < MIN_SEEDS:
        return Verdict(EXPLORATORY, None)
    label = UNRESOLVED
    if p_holm is not None and p_holm < CLEAR_P:
        label = CLEAR
    elif p_holm is not None and p_holm < SUPPORTED_P:
        label = SUPPORTED
    elif tost_p_holm is not None and tost_p_holm < EQUIVALENCE_ALPHA:
        label = EQUIVALENT
    elif p_holm is not None and p_holm < SUGGESTIVE_P:
        label = SUGGESTIVE
    if label not in _DIRECTIONAL or not mean_difference:
        return Verdict(label, None)
    return Verdict(label, BETTER if mean_difference < 0 else WORSE)


@dataclass(frozen=True)
class Comparison:
    """One paired comparison of ``strategy`` against ``reference`` (differences ``s - ref``)."""

    strategy: str
    """The strategy compared."""
    reference: str
    """What it is compared with (the reference, or another strategy in pairwise tables)."""
    n: int
    """Paired seeds (for the reference itself: its finished seeds)."""
    mean: float | None
    """Mean paired difference of eval loss, strategy minus reference."""
    sd: float | None
    """Standard deviation of the per-seed differences."""
    ci_low: float | None
    """Lower end of the paired t interval (``conf``)."""
    ci_high: float | None
    """Upper end of the paired t interval."""
    conf: float
    """Confidence level of the intervals."""
    p: float | None
    """Raw two-sided paired t p-value; ``None`` when no test was run (exploratory, undefined)."""
    p_holm: float | None
    """Holm-adjusted ``p`` over the family of :attr:`family_size` tests."""
    family_size: int
    """Number of paired t-tests adjusted together."""
    margin: float
    """Declared equivalence margin."""
    tost_p: float | None
    """Raw paired TOST p-value."""
    tost_p_holm: float | None
    """Holm-adjusted TOST p over the :attr:`tost_family_size` equivalence tests."""
    tost_family_size: int
    """Number of equivalence tests adjusted together."""
    verdict: str
    """The named rule that applies (see :func:`verdict`)."""
    direction: str | None
    """:data:`BETTER` or :data:`WORSE` for a directional verdict, else ``None``."""
    boot_low: float | None
    """Lower end of the eval-example bootstrap interval, when per-example losses were given."""
    boot_high: float | None
    """Upper end of that interval."""
    welch_p: float | None
    """Unpaired Welch p over all finished seeds of each side (secondary, not used by verdicts)."""


def _flip(c: Comparison) -> Comparison:
    neg = lambda x: None if x is None else -x  # noqa: E731
    direction = {BETTER: WORSE, WORSE: BETTER}.get(c.direction or "")
    return replace(
        c,
        strategy=c.reference,
        reference=c.strategy,
        mean=neg(c.mean),
        ci_low=neg(c.ci_high),
        ci_high=neg(c.ci_low),
        boot_low=neg(c.boot_high),
        boot_high=neg(c.boot_low),
        direction=direction,
    )


def compare_pairs(
    losses: Mapping[str, SeedValues],
    pairs: Sequence[tuple[str, str]],
    margin: float,
    examples: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    conf: float = 0.95,
) -> list[Comparison]:
    """Runs one family of paired comparisons and applies the verdicts.

    Each unordered pair is tested once (``(a, b)`` and ``(b, a)`` are one test). A pair with at
    least :data:`MIN_SEEDS` common seeds and a defined p-value joins the family; Holm adjusts
    over exactly those tests, and separately over the TOST equivalence tests.

    Args:
        losses: ``{strategy: {seed: eval loss}}``.
        pairs: ``(strategy, comparison)`` pairs, in the order the results are wanted.
        margin: Positive equivalence margin in nats of eval loss.
        examples: Optional ``{strategy: {seed: (E, 2) array}}`` of per-example
            ``(tokens, loss_sum)`` for :func:`bootstrap_paired_examples`.
        n_boot: Bootstrap resamples.
        seed: Bootstrap generator seed.
        conf: Confidence level of the intervals.

    Returns:
        One :class:`Comparison` per requested pair, in order.

    Raises:
        ValueError: When a pair names an unknown strategy or a strategy twice.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive number of nats, got {margin!r}")
    tests: dict[frozenset[str], tuple[str, str]] = {}
    for a, b in pairs:
        missing = [s for s in (a, b) if s not in losses]
        if missing or a == b:
            raise ValueError(
                f"cannot compare {a!r} with {b!r}: "
                + (f"unknown {missing}; known: {sorted(losses)}" if missing else "same strategy")
            )
        tests.setdefault(frozenset((a, b)), (a, b))
    runs = list(tests.values())
    paired = [paired_difference(losses[a], losses[b], conf) for a, b in runs]
    tosts = [tost_paired(losses[a], losses[b], margin, EQUIVALENCE_ALPHA) for a, b in runs]
    in_family = [pd.n >= MIN_SEEDS for pd in paired]
    ps = [pd.p if ok else None for pd, ok in zip(paired, in_family)]
    tps = [t.p if ok else None for t, ok in zip(tosts, in_family)]
    ps_holm, tps_holm = holm(ps), holm(tps)
    sizes = {"family_size": family_size(ps), "tost_family_size": family_size(tps)}
    result: dict[tuple[str, str], Comparison] = {}
    for i, (a, b) in enumerate(runs):
        pd = paired[i]
        boot = None
        if examples is not None and a in examples and b in examples:
            seeds = set(pd.seeds)
            ea = {s: v for s, v in examples[a].items() if s in seeds}
            eb = {s: v for s, v in examples[b].items() if s in seeds}
            boot = bootstrap_paired_examples(ea, eb, n_boot, seed, conf)
        v = verdict(pd.n, pd.mean, ps_holm[i], tps_holm[i])
        result[(a, b)] = Comparison(
            strategy=a,
            reference=b,
            n=pd.n,
            mean=pd.mean,
            sd=pd.sd,
            ci_low=pd.ci_low,
            ci_high=pd.ci_high,
            conf=conf,
            p=ps[i],
            p_holm=ps_holm[i],
            margin=margin,
            tost_p=tps[i],
            tost_p_holm=tps_holm[i],
            verdict=v.label,
            direction=v.direction,
            boot_low=boot.low if boot else None,
            boot_high=boot.high if boot else None,
            welch_p=welch_p_value(list(losses[a].values()), list(losses[b].values())),
            **sizes,
        )
    return [result[(a, b)] if (a, b) in result else _flip(result[(b, a)]) for a, b in pairs]


def _reference_entry(
    losses: Mapping[str, SeedValues], reference: str, margin: float, others: list[Comparison]
) -> Comparison:
    none = dict.fromkeys(
        ("mean", "sd", "ci_low", "ci_high", "p", "p_holm", "tost_p", "tost_p_holm", "direction",
         "boot_low", "boot_high", "welch_p"),
    )  # fmt: skip
    return Comparison(
        strategy=reference,
        reference=reference,
        n=len(finite(list(losses[reference].values()))),
        conf=others[0].conf if others else 0.95,
        family_size=others[0].family_size if others else 0,
        margin=margin,
        tost_family_size=others[0].tost_family_size if others else 0,
        verdict=REFERENCE,
        **none,
    )


def compare_to_reference(
    losses: Mapping[str, SeedValues],
    reference: str,
    margin: float,
    examples: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Comparison]:
    """Every strategy against the reference, Holm-adjusted over the tests run.

    Args:
        losses: ``{strategy: {seed: eval loss}}``, including the reference.
        reference: Name of the reference strategy.
        margin: Positive equivalence margin in nats of eval loss, declared in advance.
        examples: Optional per-example losses (see :func:`compare_pairs`).
        n_boot: Bootstrap resamples.
        seed: Bootstrap generator seed.

    Returns:
        ``{strategy: Comparison}`` in the order of ``losses``; the reference maps to an entry
        with verdict :data:`REFERENCE`.

    Raises:
        ValueError: When ``reference`` is not in ``losses``.
    """
    if reference not in losses:
        raise ValueError(f"reference {reference!r} not in strategies {sorted(losses)}")
    pairs = [(s, reference) for s in losses if s != reference]
    others = compare_pairs(losses, pairs, margin, examples, n_boot, seed)
    found = dict(zip(pairs, others))
    return {
        s: _reference_entry(losses, s, margin, others) if s == reference else found[(s, reference)]
        for s in losses
    }


def pairwise(
    losses: Mapping[str, SeedValues], margin: float, conf: float = 0.95
) -> list[Comparison]:
    """All unordered pairs of strategies (in ``losses`` order), Holm-adjusted over all pairs.

    Args:
        losses: ``{strategy: {seed: eval loss}}``.
        margin: Positive equivalence margin.
        conf: Confidence level of the intervals.

    Returns:
        One :class:`Comparison` per pair ``(a, b)`` with ``a`` before ``b``; differences ``a - b``.
    """
    pairs = list(itertools.combinations(list(losses), 2))
    return compare_pairs(losses, pairs, margin, conf=conf)


@dataclass(frozen=True)
class BestFinding:
    """The strategy with the lowest mean eval loss and the tests behind calling it lowest."""

    best: str | None
    """Strategy with the lowest mean eval loss over its finished seeds; ``None`` without any."""
    against: dict[str, Comparison]
    """``{other: Comparison of best against other}`` (differences best minus other)."""
    vs_reference: dict[str, Comparison]
    """Every strategy against the reference, adjusted in the same family; empty without one."""
    family_size: int
    """Number of paired t-tests Holm-adjusted together: "Holm over N tests"."""
    lowest: bool
    """Whether the data support "lowest": best is better than every other, clear or supported."""


def best_vs_others(
    losses: Mapping[str, SeedValues],
    margin: float,
    reference: str | None = None,
    examples: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> BestFinding:
    """Tests the lowest-mean strategy against every other, jointly with the reference tests.

    The best strategy is chosen from the data, so its tests join the same Holm family as the
    reference comparisons when both findings are reported (a test shared by both is counted
    once). "Lowest" is said only when every test of best against another strategy is clear or
    supported in its favour.

    Args:
        losses: ``{strategy: {seed: eval loss}}``.
        margin: Positive equivalence margin.
        reference: When given, the reference comparisons are made in the same family.
        examples: Optional per-example losses (see :func:`compare_pairs`).
        n_boot: Bootstrap resamples.
        seed: Bootstrap generator seed.

    Returns:
        A :class:`BestFinding`; use its ``vs_reference`` instead of
        :func:`compare_to_reference` when the report makes both findings.
    """
    means = {s: mean(list(v.values())) for s, v in losses.items()}
    scored = [s for s in losses if means[s] is not None]
    best = min(scored, key=lambda s: means[s]) if scored else None
    best_pairs = [(best, s) for s in losses if s != best] if best else []
    ref_pairs = [(s, reference) for s in losses if s != reference] if reference else []
    found = compare_pairs(losses, best_pairs + ref_pairs, margin, examples, n_boot, seed)
    against = {b: c for (_, b), c in zip(best_pairs, found)}
    vs_ref = {a: c for (a, _), c in zip(ref_pairs, found[len(best_pairs) :])}
    if reference:
        ref_entry = _reference_entry(losses, reference, margin, found)
        vs_ref = {s: vs_ref.get(s, ref_entry) for s in losses}
    lowest = bool(against) and all(
        c.verdict in (CLEAR, SUPPORTED) and c.direction == BETTER for c in against.values()
    )
    return BestFinding(best, against, vs_ref, found[0].family_size if found else 0, lowest)


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
    """Holm-adjusted over the budgets compared in one call."""


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
    _check_conf(conf)

    def complete(curve: Curve) -> set[int]:
        sets = [{s for s, v in pt.items() if _ok(v)} for pt in curve.values()]
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
    ps_holm = holm([f[0].p if f else None for f in found])
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

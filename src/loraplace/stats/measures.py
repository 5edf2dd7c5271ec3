"""Measures beside the eval-loss tests: accuracy, the eval-example bootstrap, speedups, rankings.

Wilson intervals and exact McNemar tests for accuracies, a paired percentile bootstrap over
eval examples, per-seed ratios on the log scale for speedups, and Kendall's tau-b for how
rankings change. Plain numbers in, plain values out; undefined is ``None``, never NaN. The
formulas and sources are in ``docs/STATISTICS.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from loraplace.stats.tests import Number, SeedValues, check_conf, is_ok, paired_difference

__all__ = [
    "Bootstrap",
    "RankStability",
    "Ratio",
    "bootstrap_paired_examples",
    "example_array",
    "jaccard",
    "kendall_tau",
    "mcnemar_exact",
    "ranking_stability",
    "ratio_interval",
    "wilson_interval",
]


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
    check_conf(conf)
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
    check_conf(conf)
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
    pos_num = {s: v for s, v in per_seed_num.items() if is_ok(v) and v > 0}
    pos_den = {s: v for s, v in per_seed_den.items() if is_ok(v) and v > 0}
    logs = {s: math.log(v) for s, v in pos_num.items()}
    p = paired_difference(logs, {s: math.log(v) for s, v in pos_den.items()}, conf)
    exp = lambda x: None if x is None else math.exp(x)  # noqa: E731
    return Ratio(p.n, exp(p.mean), exp(p.ci_low), exp(p.ci_high), conf)


def jaccard(a: Iterable, b: Iterable) -> float | None:
    """Jaccard index ``|a ∩ b| / |a ∪ b|`` of two sets (``None`` when both are empty).

    Jaccard, P. (1912), "The distribution of the flora in the alpine zone", New Phytologist
    11:37–50.
    """
    a, b = set(a), set(b)
    return len(a & b) / len(a | b) if a | b else None


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
    pts = [(float(u), float(v)) for u, v in zip(x, y) if is_ok(u) and is_ok(v)]
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
    names = [k for k in scores_a if k in scores_b and is_ok(scores_a[k]) and is_ok(scores_b[k])]
    order_a = tuple(sorted(names, key=lambda k: float(scores_a[k])))
    order_b = tuple(sorted(names, key=lambda k: float(scores_b[k])))
    tau = kendall_tau([scores_a[k] for k in names], [scores_b[k] for k in names])
    same = bool(names) and order_a[0] == order_b[0]
    return RankStability(len(names), tau, order_a, order_b, same)

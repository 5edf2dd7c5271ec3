"""Verdicts: the only words the report may use for a comparison, and the families it tests.

A comparison falls under exactly one named rule (:func:`verdict`), applied to a paired test
Holm-adjusted over the family of tests the report actually makes (:func:`compare_pairs`,
:func:`compare_to_reference`, :func:`pairwise`, :func:`best_vs_others`). The rules, their
precedence and their measured error rates are in ``docs/STATISTICS.md``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from loraplace.stats.measures import Ratio, bootstrap_paired_examples
from loraplace.stats.tests import (
    SeedValues,
    family_size,
    finite,
    holm,
    is_ok,
    mean,
    paired_difference,
    tost_paired,
    welch_p_value,
)

__all__ = [
    "BETTER",
    "CLEAR",
    "CLEAR_P",
    "EQUIVALENCE_ALPHA",
    "EQUIVALENT",
    "EXPLORATORY",
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
    "Comparison",
    "References",
    "Verdict",
    "best_vs_others",
    "compare_pairs",
    "compare_to_reference",
    "pairwise",
    "planned_comparisons",
    "speedup_claim",
    "verdict",
]

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
    terms: tuple[tuple[str, str], ...] = ()
    """A planned comparison's differences (:func:`planned_comparisons`): ``((A, B),)``, or
    ``((A, B), (C, D))`` for a difference of differences; empty for any other comparison."""


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
    tosts = [tost_paired(losses[a], losses[b], margin, EQUIVALENCE_ALPHA).p for a, b in runs]
    family = _Family.of(paired, tosts)
    result: dict[tuple[str, str], Comparison] = {}
    for i, (a, b) in enumerate(runs):
        pd = paired[i]
        boot = None
        if examples is not None and a in examples and b in examples:
            seeds = set(pd.seeds)
            ea = {s: v for s, v in examples[a].items() if s in seeds}
            eb = {s: v for s, v in examples[b].items() if s in seeds}
            boot = bootstrap_paired_examples(ea, eb, n_boot, seed, conf)
        result[(a, b)] = family.comparison(
            i,
            a,
            b,
            pd,
            pd.mean,
            conf=conf,
            margin=margin,
            boot_low=boot.low if boot else None,
            boot_high=boot.high if boot else None,
            welch_p=welch_p_value(list(losses[a].values()), list(losses[b].values())),
        )
    return [result[(a, b)] if (a, b) in result else _flip(result[(b, a)]) for a, b in pairs]


@dataclass(frozen=True)
class _Family:
    """A family of paired t-tests and one of TOSTs, each Holm-adjusted together; a test on
    fewer than :data:`MIN_SEEDS` seeds stays out of both (its p is ``None``)."""

    p: list[float | None]
    p_holm: list[float | None]
    tost_p: list[float | None]
    tost_p_holm: list[float | None]

    @classmethod
    def of(cls, paired: Sequence, tosts: Sequence[float | None]) -> _Family:
        """The family of ``paired`` differences and their TOST p-values (``None``: no TOST)."""
        in_family = [pd.n >= MIN_SEEDS for pd in paired]
        ps = [pd.p if ok else None for pd, ok in zip(paired, in_family)]
        tps = [t if ok else None for t, ok in zip(tosts, in_family)]
        return cls(ps, holm(ps), tps, holm(tps))

    def comparison(
        self, i: int, strategy: str, reference: str, pd, signed, *, conf, margin, **extra
    ) -> Comparison:
        """Test ``i`` as a :class:`Comparison`, its verdict on ``signed`` (the difference with
        the sign where positive is worse)."""
        v = verdict(pd.n, signed, self.p_holm[i], self.tost_p_holm[i])
        return Comparison(
            strategy=strategy,
            reference=reference,
            n=pd.n,
            mean=pd.mean,
            sd=pd.sd,
            ci_low=pd.ci_low,
            ci_high=pd.ci_high,
            conf=conf,
            p=self.p[i],
            p_holm=self.p_holm[i],
            family_size=family_size(self.p),
            margin=margin,
            tost_p=self.tost_p[i],
            tost_p_holm=self.tost_p_holm[i],
            tost_family_size=family_size(self.tost_p),
            verdict=v.label,
            direction=v.direction,
            **extra,
        )


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


References = str | Mapping[str, str]
"""One reference for every strategy, or ``{strategy: its reference}`` (e.g. per sweep rank)."""


def _reference_pairs(
    losses: Mapping[str, SeedValues], reference: References
) -> tuple[list[tuple[str, str]], set[str]]:
    """The ``(strategy, reference)`` pairs to test, and the names that are references."""
    refs = {s: reference for s in losses} if isinstance(reference, str) else dict(reference)
    missing = [s for s in losses if s not in refs] + [r for r in refs.values() if r not in losses]
    if missing:
        raise ValueError(f"reference {missing[0]!r} not in strategies {sorted(losses)}")
    pairs = [(s, refs[s]) for s in losses if refs[s] != s]
    return pairs, {refs[s] for s in losses}


def compare_to_reference(
    losses: Mapping[str, SeedValues],
    reference: References,
    margin: float,
    examples: Mapping[str, Mapping[int, np.ndarray]] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Comparison]:
    """Every strategy against its reference, Holm-adjusted over the tests run.

    Args:
        losses: ``{strategy: {seed: eval loss}}``, including the reference(s).
        reference: Name of the reference strategy, or ``{strategy: reference}`` with an entry
            for every strategy (a reference maps to itself), e.g. the reference placement at
            each rank of a sweep. All comparisons form one Holm family.
        margin: Positive equivalence margin in nats of eval loss, declared in advance.
        examples: Optional per-example losses (see :func:`compare_pairs`).
        n_boot: Bootstrap resamples.
        seed: Bootstrap generator seed.

    Returns:
        ``{strategy: Comparison}`` in the order of ``losses``; a reference maps to an entry
        with verdict :data:`REFERENCE`.

    Raises:
        ValueError: When a reference is not in ``losses`` or a strategy has no reference.
    """
    pairs, refs = _reference_pairs(losses, reference)
    others = compare_pairs(losses, pairs, margin, examples, n_boot, seed)
    found = {a: c for (a, _), c in zip(pairs, others)}
    return {
        s: _reference_entry(losses, s, margin, others) if s in refs and s not in found else found[s]
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
    reference: References | None = None,
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
        reference: When given (a name, or ``{strategy: reference}`` as in
            :func:`compare_to_reference`), the reference comparisons are made in the same
            family.
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
    ref_pairs, refs = _reference_pairs(losses, reference) if reference else ([], set())
    found = compare_pairs(losses, best_pairs + ref_pairs, margin, examples, n_boot, seed)
    against = {b: c for (_, b), c in zip(best_pairs, found)}
    vs_ref = {a: c for (a, _), c in zip(ref_pairs, found[len(best_pairs) :])}
    if reference:
        vs_ref = {
            s: vs_ref[s] if s in vs_ref else _reference_entry(losses, s, margin, found)
            for s in losses
        }
    lowest = bool(against) and all(
        c.verdict in (CLEAR, SUPPORTED) and c.direction == BETTER for c in against.values()
    )
    return BestFinding(best, against, vs_ref, found[0].family_size if found else 0, lowest)


Planned = Sequence[tuple[str, str]]
"""A planned comparison as differences: ``[(A, B)]`` (A − B) or ``[(A, B), (C, D)]``
((A − B) − (C − D), per seed)."""


def _seed_differences(values: Mapping[str, SeedValues], a: str, b: str) -> dict[int, float]:
    """``{seed: a − b}`` over the seeds where both are finite."""
    x, y = values[a], values[b]
    return {s: float(x[s]) - float(y[s]) for s in x if s in y and is_ok(x[s]) and is_ok(y[s])}


def planned_comparisons(
    values: Mapping[str, SeedValues],
    planned: Sequence[Planned],
    margin: float,
    *,
    equivalence: Sequence[bool] | None = None,
    higher_is_better: bool = False,
    conf: float = 0.95,
) -> list[Comparison]:
    """A planned family, fixed in advance: paired t-tests Holm-adjusted together, and TOSTs of
    the simple differences Holm-adjusted together.

    ``[(A, B)]`` is the paired t of ``A − B`` over the seeds both finished, and a TOST within
    ``±margin``. ``[(A, B), (C, D)]`` is the paired t of the per-seed difference of differences
    ``(A_s − B_s) − (C_s − D_s)`` over the seeds all four finished, with no TOST (nor a simple
    difference marked so in ``equivalence``). Either joins
    its family with at least :data:`MIN_SEEDS` seeds and a defined p; the verdict ladder
    applies as in :func:`compare_pairs`.

    Args:
        values: ``{strategy: {seed: value}}`` (eval loss, or accuracy as a fraction).
        planned: The planned comparisons, in the order the results are wanted.
        margin: Positive equivalence margin, in the unit of ``values``.
        equivalence: Per planned comparison, whether a simple difference gets a TOST
            (default: every simple difference; a difference of differences never does).
        higher_is_better: ``True`` for accuracy: a positive difference is :data:`BETTER`.
        conf: Confidence level of the intervals.

    Returns:
        One :class:`Comparison` per planned comparison: ``strategy`` and ``reference`` are
        ``A`` and ``B``, or ``"A − B"`` and ``"C − D"``; ``terms`` holds the differences.

    Raises:
        ValueError: When a comparison names an unknown strategy or is not one or two pairs.
    """
    if not (margin > 0 and math.isfinite(margin)):
        raise ValueError(f"margin must be a positive number, got {margin!r}")
    runs = []
    wanted = list(equivalence) if equivalence is not None else [True] * len(planned)
    for pairs, tost_wanted in zip(planned, wanted, strict=True):
        pairs = tuple((str(a), str(b)) for a, b in pairs)
        missing = [s for pair in pairs for s in pair if s not in values]
        if missing or len(pairs) not in (1, 2):
            raise ValueError(
                f"cannot test {pairs!r}: "
                + (f"unknown {missing}; known: {sorted(values)}" if missing else "not 1 or 2 pairs")
            )
        if len(pairs) == 1:
            ((a, b),) = pairs
            x, y = values[a], values[b]
        else:
            x, y = (_seed_differences(values, *pair) for pair in pairs)
        tost = tost_paired(x, y, margin, EQUIVALENCE_ALPHA).p if len(pairs) == 1 else None
        if not tost_wanted:
            tost = None
        runs.append((pairs, paired_difference(x, y, conf), tost))
    family = _Family.of([pd for _, pd, _ in runs], [t for _, _, t in runs])
    out = []
    for i, (pairs, pd, _) in enumerate(runs):
        signed = -pd.mean if higher_is_better and pd.mean is not None else pd.mean
        names = [f"{a} − {b}" for a, b in pairs] if len(pairs) == 2 else list(pairs[0])
        out.append(
            family.comparison(
                i,
                *names,
                pd,
                signed,
                conf=conf,
                margin=margin,
                boot_low=None,
                boot_high=None,
                welch_p=None,
                terms=pairs,
            )
        )
    return out

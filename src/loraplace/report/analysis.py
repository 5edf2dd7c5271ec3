"""The numbers behind the report: one summary row per condition and its tests.

Every comparison is paired by seed (all strategies of a seed train on the same batches) and
made against the reference strategy at the same rank. The tests the findings use (the
reference comparisons, plus best-vs-others when the "lowest" finding is made) are one Holm
family; the verdicts come only from :mod:`loraplace.verdicts`. Definitions of every column are
in docs/STATISTICS.md ("The report's columns"). Beside the tests, the report checks that the
paired runs of each comparison were made on the same machine, with the same library versions
and precision (:data:`ENVIRONMENT`).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any

from loraplace.report.load import Condition, Study, first, num
from loraplace.settings import planned_pairs, planned_tost
from loraplace.stats.measures import Ratio, mcnemar_exact, ratio_interval, wilson_interval
from loraplace.stats.tests import (
    ci95,
    family_size,
    holm,
    mean,
    paired_difference,
    pareto_front,
    std,
)
from loraplace.stats.verdicts import (
    MIN_SEEDS,
    BestFinding,
    Comparison,
    best_vs_others,
    compare_pairs,
    compare_to_reference,
    planned_comparisons,
    speedup_claim,
    verdict,
)
from loraplace.studies.status import machine

__all__ = [
    "DEFAULT_PRECISION",
    "ENVIRONMENT",
    "LIBRARIES",
    "PARETO_TOLERANCE",
    "REQUIRED_COLUMNS",
    "SUMMARY_COLUMNS",
    "AccuracyTest",
    "Analysis",
    "EnvironmentMismatch",
    "Environments",
    "Speedup",
    "all_pairs",
    "analyse",
    "environment",
    "environments",
    "family_pairs",
]

#: Trainable-parameter counts within 5% of each other count as one budget on the Pareto front.
PARETO_TOLERANCE = 0.05

#: What a run's numbers depend on besides its config, seed and learning rate, as its record
#: states it: the machine (``hardware.platform`` and the processor or GPU), the torch,
#: transformers and peft versions, and the numeric precision. The paired runs of a comparison
#: should agree on every one; where they do not, the difference mixes placement with them.
LIBRARIES: tuple[str, ...] = ("torch", "transformers", "peft")
ENVIRONMENT: tuple[str, ...] = ("machine", *LIBRARIES, "precision")
#: The precision of a record that states none (written before precision was a setting).
DEFAULT_PRECISION = "fp32"

REQUIRED_COLUMNS: tuple[str, ...] = (
    "strategy",
    "n",
    "eval_loss_mean",
    "eval_loss_std",
    "eval_loss_ci95",
    "perplexity",
    "accuracy_mean",
    "trainable_params",
    "trainable_pct",
    "param_reduction_pct",
    "train_time_s_mean",
    "speedup_vs_reference",
    "p_value_vs_reference",
    "pareto",
)
SUMMARY_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + (
    "rank",
    "spec",
    "learning_rate",
    "n_failed",
    "seeds",
    "delta_vs_reference",
    "delta_ci95_low",
    "delta_ci95_high",
    "delta_boot95_low",
    "delta_boot95_high",
    "p_paired_vs_reference",
    "p_holm_vs_reference",
    "holm_family_size",
    "p_tost_holm_vs_reference",
    "verdict",
    "direction",
    "base_eval_loss",
    "accuracy_std",
    "accuracy_examples",
    "accuracy_ci95_low",
    "accuracy_ci95_high",
    "p_mcnemar_vs_reference",
    "train_time_s_std",
    "speedup_ci95_low",
    "speedup_ci95_high",
    "speedup_claim",
    "tokens_per_s_mean",
    "probe_time_s",
    "peak_memory_mb_max",
    "total_params",
    "ranks",
    "trainable_params_min",
    "trainable_params_max",
)


@dataclass(frozen=True)
class AccuracyTest:
    """Accuracy of one condition with its Wilson interval, and its tests against the reference:
    the paired t over seeds (the verdict, as for eval loss) and exact McNemar over problems."""

    correct: int
    """Problems answered correctly, summed over finished seeds."""
    attempted: int
    """Problems attempted, summed over finished seeds."""
    low: float | None
    """Wilson 95% interval of ``correct / attempted``."""
    high: float | None
    n: int
    """Seeds paired with the reference (both scored the same problems)."""
    b: int
    """Problem-seed pairs this condition got right and the reference wrong."""
    c: int
    """Problem-seed pairs the reference got right and this condition wrong."""
    p: float | None
    """Exact McNemar p on ``b`` and ``c``; ``None`` without discordant pairs or a reference."""
    p_holm: float | None
    """The paired t's ``p_t``, Holm-adjusted over the accuracy tests with at least
    ``MIN_SEEDS`` paired seeds."""
    family_size: int
    verdict: str | None
    """The verdict ladder on ``p_holm`` (``better`` means higher accuracy)."""
    direction: str | None
    diff: float | None = None
    """Mean over paired seeds of this condition's accuracy minus the reference's."""
    diff_low: float | None = None
    """Paired t 95% interval of ``diff``."""
    diff_high: float | None = None
    p_t: float | None = None
    """Paired t p of the per-seed accuracies against the reference."""


@dataclass(frozen=True)
class Speedup:
    """Training speed against the reference: per-seed time ratios on the log scale."""

    ratio: Ratio
    """Reference time / condition time: above 1 is faster."""
    claim: str
    """``faster``, ``slower``, ``unresolved`` or ``exploratory`` (:func:`speedup_claim`)."""


@dataclass(frozen=True)
class EnvironmentMismatch:
    """A compared pair of conditions whose runs of a paired seed differ in :data:`ENVIRONMENT`."""

    strategy: str
    """One condition's label (the compared one)."""
    reference: str
    """The other condition's label (what it is compared with)."""
    fields: tuple[str, ...]
    """The :data:`ENVIRONMENT` fields that differ, in that order."""
    seeds: tuple[int, ...]
    """The paired seeds whose two runs differ."""
    n: int
    """The paired seeds (finished by both)."""


@dataclass(frozen=True)
class Environments:
    """What the finished final runs were made with, and the comparisons it splits."""

    values: dict[str, dict[str, dict[str, int]]]
    """``{field: {value: {condition label: finished final runs}}}`` for each
    :data:`ENVIRONMENT` field with more than one value in the study, values in run order."""
    mismatches: list[EnvironmentMismatch]
    """The compared pairs (reference comparisons, lowest-vs-others, all pairs) whose paired
    runs differ, in that order."""


def environment(record: dict[str, Any]) -> dict[str, str | None]:
    """A run record's :data:`ENVIRONMENT`; ``None`` where the record does not say."""
    versions = record.get("versions") or {}
    found = {
        "machine": machine(record),
        **{k: (str(versions[k]) if versions.get(k) is not None else None) for k in LIBRARIES},
        "precision": str(record.get("precision") or DEFAULT_PRECISION),
    }
    return {k: found[k] for k in ENVIRONMENT}


def environments(study: Study, pairs: list[tuple[str, str]]) -> Environments:
    """Which of the compared ``pairs`` of condition labels ran under different conditions.

    A pair is split when, for some seed both finished, its two runs differ in a field of
    :data:`ENVIRONMENT` that both records state. A seed whose runs share a machine keeps it out
    of that seed's paired difference, so only the runs compared with each other count.

    Args:
        study: The loaded study.
        pairs: ``(label, label)`` pairs in the order the report shows them; a pair given twice
            (in either order) is counted once.

    Returns:
        The :class:`Environments`.
    """
    runs = {
        c.label: {r["seed"]: environment(r) for r in study.runs(c, "finished")}
        for c in study.conditions
    }
    values: dict[str, dict[str, dict[str, int]]] = {}
    for label, by_seed in runs.items():
        for env in by_seed.values():
            for key, value in env.items():
                if value is not None:
                    counts = values.setdefault(key, {}).setdefault(value, {})
                    counts[label] = counts.get(label, 0) + 1
    mismatches, seen = [], set()
    for a, b in pairs:
        if frozenset((a, b)) in seen or a not in runs or b not in runs:
            continue
        seen.add(frozenset((a, b)))
        differ, seeds, paired = set(), [], sorted(set(runs[a]) & set(runs[b]))
        for seed in paired:
            x, y = runs[a][seed], runs[b][seed]
            here = {k for k in ENVIRONMENT if None not in (x[k], y[k]) and x[k] != y[k]}
            if here:
                differ |= here
                seeds.append(seed)
        if differ:
            fields = tuple(k for k in ENVIRONMENT if k in differ)
            mismatches.append(EnvironmentMismatch(a, b, fields, tuple(seeds), len(paired)))
    return Environments({k: v for k, v in values.items() if len(v) > 1}, mismatches)


@dataclass
class Analysis:
    """Every number the report shows, computed once from a :class:`Study`."""

    rows: list[dict[str, Any]]
    """One summary row per condition (:data:`SUMMARY_COLUMNS`), in study order."""
    comparisons: dict[str, Comparison]
    """``{condition label: Comparison}`` against the reference at its rank."""
    family_size: int
    """Paired t-tests Holm-adjusted together for the findings."""
    best: BestFinding | None
    """The "lowest mean eval loss" finding and its tests, when it is made."""
    pairwise: list[Comparison]
    """Every pair of conditions, Holm-adjusted over all pairs (its own family)."""
    accuracy: dict[str, AccuracyTest]
    speedups: dict[str, Speedup]
    environments: Environments
    """The machines, versions and precisions of the runs, and the comparisons they split."""
    planned: list[Comparison] = field(default_factory=list)
    """``report.comparisons`` on eval loss, in its order: the findings' families (t-tests
    Holm-adjusted together, TOSTs together); empty when the study plans none."""
    planned_accuracy: list[Comparison] = field(default_factory=list)
    """The same comparisons on the seeds' accuracies (differences as fractions, TOST within
    ``report.accuracy_margin`` points), when the study scores accuracy."""


def _losses_and_refs(study: Study) -> tuple[dict[str, dict[int, float]], dict[str, str]]:
    losses, refs = {}, {}
    for cond in study.conditions:
        ref = study.reference_of(cond)
        if ref is not None:
            losses[cond.label] = study.losses(cond)
            refs[cond.label] = ref.label
    return losses, refs


def family_pairs(study: Study) -> list[tuple[str, str]]:
    """The condition pairs of the all-pairs family, as ``(label, label)`` in table order.

    Every pair of conditions; in a rank sweep, only the pairs that share a rank or a
    placement: a pair that differs in both holds neither budget nor rank equal (the
    equal-budget tables compare placements). Same rank first (placement against placement),
    then each placement over its ranks.
    """
    if not study.sweep:
        return [(a.label, b.label) for a, b in itertools.combinations(study.conditions, 2)]
    kept = [
        (a, b)
        for a, b in itertools.combinations(study.conditions, 2)
        if a.rank == b.rank or a.name == b.name
    ]
    names = list(dict.fromkeys(c.name for c in study.conditions))

    def order(pair: tuple[Condition, Condition]) -> tuple[int, int]:
        a, b = pair
        return (0, 0) if a.rank == b.rank else (1, names.index(a.name))

    kept.sort(key=order)
    return [(a.label, b.label) for a, b in kept]


def all_pairs(study: Study, losses: dict[str, dict[int, float]]) -> list[Comparison]:
    """The all-pairs family (:func:`family_pairs`) on ``{label: {seed: eval loss}}``: paired
    t over the common seeds, Holm over the family, verdicts as in the all-pairs table."""
    return compare_pairs(losses, family_pairs(study), study.margin)


def _compare(
    study: Study,
) -> tuple[dict[str, Comparison], int, BestFinding | None]:
    losses, refs = _losses_and_refs(study)
    if not losses:
        return {}, 0, None
    examples = study.example_arrays() or None
    with_data = [label for label, values in losses.items() if values]
    if not study.sweep and study.lowest_asked and not study.planned and len(with_data) >= 2:
        # Over ranks the lowest loss is mostly the largest rank: the sweep's question is the
        # equal-budget comparison instead, so "lowest" is a finding only without a sweep.
        best = best_vs_others(losses, study.margin, refs, examples)
        return best.vs_reference, best.family_size, best
    found = compare_to_reference(losses, refs, study.margin, examples)
    size = max((c.family_size for c in found.values()), default=0)
    return found, size, None


def _planned(study: Study) -> tuple[list[Comparison], list[Comparison]]:
    """``report.comparisons`` on eval loss and, where runs were scored, on accuracy."""
    if not study.planned:
        return [], []
    planned = [planned_pairs(entry) for entry in study.planned]
    conditions = {c.name: c for c in study.conditions if c.rank is None}
    if any(name not in conditions for pairs in planned for pair in pairs for name in pair):
        return [], []  # a study.yaml validated elsewhere names them all; a bare runs/ has none
    losses = {name: study.losses(c) for name, c in conditions.items()}
    tosts = [planned_tost(entry) for entry in study.planned]
    loss = planned_comparisons(losses, planned, study.margin, equivalence=tosts)
    scores = {name: _seed_accuracies(study.runs(c)) for name, c in conditions.items()}
    if not any(scores.values()):
        return loss, []
    margin = study.report_settings.accuracy_margin / 100.0
    return loss, planned_comparisons(
        scores, planned, margin, equivalence=tosts, higher_is_better=True
    )


def _counts(record: dict[str, Any]) -> tuple[int, int] | None:
    correct = record.get("correct")
    if correct:
        return sum(correct), len(correct)
    acc, n = num(record.get("accuracy")), record.get("accuracy_examples")
    if acc is None or not isinstance(n, int) or isinstance(n, bool) or n <= 0:
        return None
    return round(acc * n), n


def _accuracy(study: Study) -> dict[str, AccuracyTest]:
    raw: dict[str, tuple] = {}
    for cond in study.conditions:
        done = study.runs(cond, "finished")
        counts = [c for c in (_counts(r) for r in done) if c is not None]
        if not counts:
            continue
        k, n = sum(c[0] for c in counts), sum(c[1] for c in counts)
        ref = study.reference_of(cond)
        b = c = seeds = 0
        paired = None
        if ref is not None and ref != cond:
            theirs = {r["seed"]: r.get("correct") for r in study.runs(ref, "finished")}
            for r in done:
                other, mine = theirs.get(r["seed"]), r.get("correct")
                if mine and other and len(mine) == len(other):
                    seeds += 1
                    b += sum(1 for x, y in zip(mine, other) if x and not y)
                    c += sum(1 for x, y in zip(mine, other) if y and not x)
            paired = paired_difference(_seed_accuracies(done), _seed_accuracies(study.runs(ref)))
        p = mcnemar_exact(b, c) if seeds else None
        raw[cond.label] = (k, n, seeds, b, c, p, ref == cond, paired)
    # The verdict is the paired t over seeds, as for eval loss; McNemar is reported beside it.
    tested = {
        label: v[7].p if v[7] is not None and v[7].n >= MIN_SEEDS else None
        for label, v in raw.items()
    }
    adjusted = dict(zip(tested, holm(list(tested.values()))))
    size = family_size(list(tested.values()))
    out = {}
    for label, (k, n, seeds, b, c, p, is_ref, paired) in raw.items():
        pairs = paired.n if paired is not None else 0
        # verdict() reads a negative difference as better (lower loss): pass minus the mean
        # accuracy difference, negative when this condition answered more correctly.
        diff = paired.mean if paired is not None else None
        v = (
            verdict(pairs, -diff if diff else diff, adjusted[label], is_reference=is_ref)
            if pairs or is_ref
            else None
        )
        low_high = wilson_interval(k, n) or (None, None)
        out[label] = AccuracyTest(
            k,
            n,
            *low_high,
            seeds,
            b,
            c,
            p,
            adjusted[label],
            size,
            v.label if v else None,
            v.direction if v else None,
            diff=diff,
            diff_low=paired.ci_low if paired is not None else None,
            diff_high=paired.ci_high if paired is not None else None,
            p_t=paired.p if paired is not None else None,
        )
    return out


def _seed_accuracies(records: list[dict[str, Any]]) -> dict[int, float]:
    """Each finished seed's accuracy (from its per-problem outcomes where it has them)."""
    out = {}
    for record in records:
        if record.get("status") != "finished":
            continue
        counts = _counts(record)
        if counts is not None and counts[1]:
            out[record["seed"]] = counts[0] / counts[1]
    return out


def _speedups(study: Study) -> dict[str, Speedup]:
    out = {}
    for cond in study.conditions:
        ref = study.reference_of(cond)
        if ref is None or ref == cond:
            continue
        ratio = ratio_interval(
            study.values(ref, "train_time_s"), study.values(cond, "train_time_s")
        )
        out[cond.label] = Speedup(ratio, speedup_claim(ratio))
    return out


def _row(study: Study, cond: Condition) -> dict[str, Any]:
    done, every = study.runs(cond, "finished"), study.runs(cond)
    loss = list(study.losses(cond).values())
    acc = [r.get("accuracy") for r in done]
    times = [r.get("train_time_s") for r in done]
    # A strategy placed per seed can differ in size from seed to seed (a random draw fills its
    # budget to within 5%): the mean counts, and the range is kept beside it.
    counts = sorted(r["trainable_params"] for r in done if num(r.get("trainable_params")))
    varies = len(set(counts)) > 1
    params = (
        round(sum(counts) / len(counts))
        if varies
        else first(done, "trainable_params") or first(every, "trainable_params")
    )
    ranks = first(done, "ranks") or first(every, "ranks") or {}
    mem = [m for m in (num(r.get("peak_memory_mb")) for r in done) if m is not None]
    loss_mean = mean(loss)
    return {
        "strategy": cond.name,
        "rank": cond.rank,
        "n": len(done),
        "eval_loss_mean": loss_mean,
        "eval_loss_std": std(loss),
        "eval_loss_ci95": ci95(loss),
        "perplexity": math.exp(loss_mean) if loss_mean is not None and loss_mean < 700 else None,
        "accuracy_mean": mean(acc),
        "trainable_params": params,
        "trainable_params_min": counts[0] if counts else None,
        "trainable_params_max": counts[-1] if counts else None,
        "trainable_pct": mean([r.get("trainable_pct") for r in done])
        if varies
        else num(first(done, "trainable_pct") or first(every, "trainable_pct")),
        "train_time_s_mean": mean(times),
        "spec": cond.spec,
        "learning_rate": num(first(done, "learning_rate") or first(every, "learning_rate")),
        "n_failed": sum(1 for r in every if r["status"] != "finished"),
        "seeds": " ".join(str(r["seed"]) for r in done),
        "base_eval_loss": mean([r.get("base_eval_loss") for r in every]),
        "accuracy_std": std(acc),
        "accuracy_examples": first(done, "accuracy_examples") if mean(acc) is not None else None,
        "train_time_s_std": std(times),
        "tokens_per_s_mean": mean([r.get("tokens_per_s") for r in done]),
        # An automatic strategy is charged for resolving its placement (once for all seeds,
        # unless it was resolved per seed): the probe's wall time, beside the training time.
        "probe_time_s": mean(
            [((r.get("auto") or {}).get("probe") or {}).get("time_s") for r in done]
        ),
        "peak_memory_mb_max": max(mem) if mem else None,
        "total_params": first(done, "total_params") or first(every, "total_params"),
        "ranks": " ".join(f"{k}:r{v}" for k, v in ranks.items()),
    }


def _fill(
    row: dict[str, Any],
    ref_row: dict[str, Any] | None,
    comp: Comparison | None,
    acc: AccuracyTest | None,
    speed: Speedup | None,
) -> None:
    """The reference-relative columns of one row, in place."""
    share = (
        row["trainable_params"] / ref_row["trainable_params"]
        if ref_row and row["trainable_params"] and ref_row["trainable_params"]
        else None
    )
    row["param_reduction_pct"] = 100.0 * (1.0 - share) if share is not None else None
    if comp is not None:
        row.update(
            delta_vs_reference=comp.mean,
            delta_ci95_low=comp.ci_low,
            delta_ci95_high=comp.ci_high,
            delta_boot95_low=comp.boot_low,
            delta_boot95_high=comp.boot_high,
            p_paired_vs_reference=comp.p,
            p_holm_vs_reference=comp.p_holm,
            holm_family_size=comp.family_size,
            p_tost_holm_vs_reference=comp.tost_p_holm,
            verdict=comp.verdict,
            direction=comp.direction,
            p_value_vs_reference=comp.welch_p,
        )
    if acc is not None:
        row.update(
            accuracy_ci95_low=acc.low, accuracy_ci95_high=acc.high, p_mcnemar_vs_reference=acc.p
        )
    if speed is not None:
        row.update(
            speedup_vs_reference=speed.ratio.geomean,
            speedup_ci95_low=speed.ratio.ci_low,
            speedup_ci95_high=speed.ratio.ci_high,
            speedup_claim=speed.claim,
        )
    elif ref_row is row:
        row["speedup_vs_reference"] = 1.0 if row["train_time_s_mean"] is not None else None


def analyse(study: Study) -> Analysis:
    """Computes the summary rows and every test the report shows.

    Args:
        study: A loaded study.

    Returns:
        The :class:`Analysis`; ``None`` in a row marks a value that cannot be computed.
    """
    comparisons, size, best = _compare(study)
    accuracy, speedups = _accuracy(study), _speedups(study)
    rows = {cond.label: _row(study, cond) for cond in study.conditions}
    for cond in study.conditions:
        ref = study.reference_of(cond)
        label = cond.label
        _fill(
            rows[label],
            rows.get(ref.label) if ref else None,
            comparisons.get(label),
            accuracy.get(label),
            speedups.get(label),
        )
    flags = pareto_front(
        [(r["trainable_params"], r["eval_loss_mean"]) for r in rows.values()], PARETO_TOLERANCE
    )
    for row, flag in zip(rows.values(), flags):
        row["pareto"] = flag
    losses = {c.label: study.losses(c) for c in study.conditions}
    pairs = all_pairs(study, losses) if len(losses) >= 3 else []
    table = [{col: row.get(col) for col in SUMMARY_COLUMNS} for row in rows.values()]
    compared = [
        (c.strategy, c.reference)
        for c in [*comparisons.values(), *(best.against.values() if best else []), *pairs]
        if c.strategy != c.reference
    ]
    planned, planned_accuracy = _planned(study)
    compared += [(c.strategy, c.reference) for c in planned if len(c.terms) == 1]
    envs = environments(study, compared)
    return Analysis(
        table, comparisons, size, best, pairs, accuracy, speedups, envs, planned, planned_accuracy
    )

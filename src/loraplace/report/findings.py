"""The report's findings: sentences as strong as the evidence and no stronger.

Every sentence about a comparison is chosen by its verdict alone (docs/STATISTICS.md, "Verdicts"):
a direction is written only for ``clear``, ``supported`` and ``suggestive`` (the last hedged),
"matches" only for ``equivalent`` with the margin stated, and an ``exploratory`` comparison
shows its numbers without a direction. The report also states, unasked, what could mislead a
reader: capacity confounded with placement, runs compared across machines, library versions or
precisions, the LoRA scaling convention, a learning rate shared by all strategies or chosen at
the edge of its grid, and examples dropped for length. The
designs beyond one comparison per condition (equal budgets of a rank sweep, the learning-rate
grid, the ranking's stability between checkpoints) follow the same rules.
"""

from __future__ import annotations

from loraplace.report.analysis import (
    ENVIRONMENT,
    LIBRARIES,
    PARETO_TOLERANCE,
    Analysis,
    Environments,
)
from loraplace.report.load import Condition, Study, first
from loraplace.report.render import (
    FAILURES_HEADING,
    code,
    holm_over,
    p_is,
    planned_label,
    sentence,
)
from loraplace.report.sweeps import (
    BudgetAnalysis,
    BudgetRow,
    CheckpointAnalysis,
    OrderChange,
    SelectionTable,
    TrainingBudget,
)
from loraplace.stats.measures import RankStability
from loraplace.stats.tests import min_detectable_difference
from loraplace.stats.verdicts import (
    BETTER,
    CLEAR,
    CLEAR_P,
    EQUIVALENT,
    EXPLORATORY,
    FASTER,
    MIN_SEEDS,
    SLOWER,
    SUGGESTIVE,
    SUGGESTIVE_P,
    SUPPORTED,
    SUPPORTED_P,
    UNRESOLVED,
    Comparison,
)

__all__ = [
    "CAPACITY_TOLERANCE",
    "planned_findings",
    "recommendation",
    "budget_findings",
    "checkpoint_findings",
    "dropped_findings",
    "findings",
    "selection_findings",
    "training_lines",
]


#: Relative difference in trainable parameters above which a comparison mixes placement with
#: capacity.
CAPACITY_TOLERANCE = 0.10


def _names(labels: list[str]) -> str:
    return ", ".join(code(label) for label in labels) if labels else "none"


def _delta(c: Comparison) -> str:
    text = f"Δ {c.mean:+.4f} nats" if c.mean is not None else "Δ undefined"
    if c.ci_low is not None:
        text += f", 95% CI [{c.ci_low:+.4f}, {c.ci_high:+.4f}]"
    return text


def _tested(c: Comparison) -> str:
    return f"{_delta(c)}, p {p_is(c.p)}, Holm p {p_is(c.p_holm)}"


def _pair(c: Comparison) -> str:
    return f"{code(c.strategy)} vs {code(c.reference)}"


def _directional(group: list[Comparison], label: str, rule: str, hedge: str = "") -> str:
    parts = [
        f"{code(c.strategy)} has {'lower' if c.direction == BETTER else 'higher'} eval loss than "
        f"{code(c.reference)} ({_tested(c)})"
        for c in group
    ]
    return f"{label} ({rule}): " + "; ".join(parts) + f".{hedge}"


def _unresolved(c: Comparison) -> str:
    text = f"{_pair(c)} ({_delta(c)}, Holm p {p_is(c.p_holm)}"
    if c.sd == 0:
        return text + "; the per-seed differences are all equal, so the t-test is undefined)"
    mdd = min_detectable_difference(c.sd, c.n, 0.05 / max(1, c.family_size)) if c.sd else None
    if mdd is not None:
        text += f"; differences below about {mdd:.4f} nats would likely go undetected"
    return text + ")"


_SAME_RANK = (
    " At the same rank the placements differ in trainable parameters, so these comparisons mix "
    "where the adapters are with how large they are; the equal-budget comparisons above are "
    "the placement question."
)


def _comparison_findings(study: Study, a: Analysis) -> list[str]:  # noqa: C901 (one sentence per rung of the verdict ladder)
    comps = [c for c in a.comparisons.values() if c.verdict != "reference"]
    if not comps:
        return ["No condition has a reference to be compared with."]
    where = " at the same rank" if study.sweep else ""
    best = a.best is not None and len(a.best.against) > 0
    extra = ", and the lowest-mean condition against every other" if best else ""
    out = []
    if a.family_size:
        out.append(
            f"Comparisons with the reference {code(study.reference)}{where} are paired by seed "
            "(every strategy of a seed trains on the same batches): the mean per-seed difference "
            "in eval loss (strategy − reference; negative is lower loss), its 95% t interval and "
            f"a paired t-test. p-values are Holm-adjusted over the {a.family_size} test(s) these "
            f"findings make (those with at least {MIN_SEEDS} paired seeds against the "
            f"reference{extra}). Equivalence is claimed only within the declared margin of "
            f"±{study.margin:g} nats ({code('report.equivalence_margin')}), by TOST."
            + (_SAME_RANK if study.sweep else "")
        )
    elif any(c.n >= MIN_SEEDS for c in comps):
        # Enough seeds, but every difference is the same in each seed (identical runs, e.g. one
        # placement under two names): no spread, so the t-test is undefined.
        out.append(
            f"No comparison with the reference {code(study.reference)}{where} gives a test: "
            f"those with {MIN_SEEDS} or more paired seeds differ by the same amount in every "
            "seed, so the paired t-test is undefined (their verdict is unresolved), and any "
            "others are exploratory." + (_SAME_RANK if study.sweep else "")
        )
    else:
        out.append(
            f"No comparison with the reference {code(study.reference)}{where} has the "
            f"{MIN_SEEDS} paired seeds a test needs: every comparison below is exploratory, with "
            "its numbers shown and no direction claimed. Run more seeds "
            f"({code('training.seeds')})." + (_SAME_RANK if study.sweep else "")
        )
    by = {v: [c for c in comps if c.verdict == v] for v in (CLEAR, SUPPORTED, SUGGESTIVE)}
    if by[CLEAR]:
        out.append(_directional(by[CLEAR], "Clear", f"Holm-adjusted p < {CLEAR_P:.2f}"))
    if by[SUPPORTED]:
        out.append(_directional(by[SUPPORTED], "Supported", f"Holm-adjusted p < {SUPPORTED_P:.2f}"))
    if by[SUGGESTIVE]:
        out.append(
            _directional(
                by[SUGGESTIVE],
                "Suggestive only",
                f"Holm-adjusted p < {SUGGESTIVE_P:.2f}, short of the {SUPPORTED_P:.2f} standard",
                " More seeds are needed to establish it.",
            )
        )
    equivalent = [c for c in comps if c.verdict == EQUIVALENT]
    if equivalent:
        out.append(
            f"Matches the reference within ±{study.margin:g} nats (TOST equivalence, "
            f"Holm-adjusted p < {SUPPORTED_P:.2f}): "
            + "; ".join(
                f"{_pair(c)} ({_delta(c)}, TOST Holm p {p_is(c.tost_p_holm)})" for c in equivalent
            )
            + "."
        )
    unresolved = [c for c in comps if c.verdict == UNRESOLVED]
    if unresolved:
        out.append(
            f"Unresolved (no difference shown, and no equivalence within ±{study.margin:g} "
            "nats): " + "; ".join(_unresolved(c) for c in unresolved) + "."
        )
    exploratory = [c for c in comps if c.verdict == EXPLORATORY and c.n > 0]
    unpaired = [c.strategy for c in comps if c.verdict == EXPLORATORY and c.n == 0]
    if unpaired:
        out.append(
            "Not compared yet (no seed finished by both the condition and its reference): "
            f"{_names(unpaired)}."
        )
    if exploratory:
        out.append(
            f"Exploratory (fewer than {MIN_SEEDS} seeds in common with the reference: no test, "
            "no direction claimed): "
            + "; ".join(f"{_pair(c)} ({_delta(c)}, n = {c.n})" for c in exploratory)
            + "."
        )
    return out


# --- Planned comparisons (report.comparisons) and the recommendation ---------------------------


def _scale(accuracy: bool) -> tuple[float, str, str]:
    """Factor, unit and format of a difference: nats of eval loss, or accuracy points."""
    return (100.0, "points", "+.1f") if accuracy else (1.0, "nats", "+.4f")


def _planned_delta(c: Comparison, accuracy: bool) -> str:
    factor, unit, spec = _scale(accuracy)
    if c.mean is None:
        return "Δ undefined"
    text = f"Δ {factor * c.mean:{spec}} {unit}"
    if c.ci_low is not None and c.ci_high is not None:
        text += f", 95% CI [{factor * c.ci_low:{spec}}, {factor * c.ci_high:{spec}}]"
    return text


def _planned_item(c: Comparison, accuracy: bool) -> str:
    text = f"{planned_label(c)}: {_planned_delta(c, accuracy)}"
    if c.verdict == EXPLORATORY:
        return text + f", n = {c.n}"
    text += f", p {p_is(c.p)}, Holm p {p_is(c.p_holm)}"
    if c.tost_p is not None:
        text += f", TOST Holm p {p_is(c.tost_p_holm)}"
    if c.verdict in (CLEAR, SUPPORTED, SUGGESTIVE) and c.direction and c.mean is not None:
        word = "lower" if c.mean < 0 else "higher"
        if len(c.terms) == 2:
            text += f" (the first difference is {word})"
        else:
            measure = "accuracy" if accuracy else "eval loss"
            text += f" ({code(c.strategy)} has {word} {measure} than {code(c.reference)})"
    elif c.verdict == UNRESOLVED and c.sd:
        mdd = min_detectable_difference(c.sd, c.n, 0.05 / max(1, c.family_size))
        if mdd is not None:
            factor, unit, spec = _scale(accuracy)
            text += f"; differences below about {factor * mdd:{spec[1:]}} {unit} would likely go "
            text += "undetected"
    return text


_PLANNED_RUNGS = (
    (CLEAR, f"Clear (Holm-adjusted p < {CLEAR_P:.2f})"),
    (SUPPORTED, f"Supported (Holm-adjusted p < {SUPPORTED_P:.2f})"),
    (EQUIVALENT, "Equivalent (Holm-adjusted TOST p < 0.05, within the margin)"),
    (
        SUGGESTIVE,
        f"Suggestive only (Holm-adjusted p < {SUGGESTIVE_P:.2f}, short of the "
        f"{SUPPORTED_P:.2f} standard; more seeds are needed to establish it)",
    ),
    (UNRESOLVED, "Unresolved (no difference shown, and no equivalence)"),
    (EXPLORATORY, f"Exploratory (fewer than {MIN_SEEDS} paired seeds: no test, no direction)"),
)


def _planned_family(study: Study, comps: list[Comparison], accuracy: bool) -> list[str]:
    if not comps:
        return []
    _, unit, _ = _scale(accuracy)
    measure = "accuracy (each seed's, higher is better)" if accuracy else "eval loss"
    margin = (
        f"±{study.report_settings.accuracy_margin:g} points ({code('report.accuracy_margin')})"
        if accuracy
        else f"±{study.margin:g} nats ({code('report.equivalence_margin')})"
    )
    size, tost_size = comps[0].family_size, comps[0].tost_family_size
    tosts = (
        f"the TOSTs within {margin} over the {tost_size} TOST(s)"
        if tost_size
        else f"the TOSTs within {margin}: none made yet"
    )
    descriptive = (
        f"Descriptive: this study's verdicts are on eval loss ({code('report.verdicts_on')}: "
        "loss), so the tests on accuracy below are reported beside them and decide nothing. "
        if accuracy and study.report_settings.accuracy_descriptive
        else ""
    )
    out = [
        descriptive
        + f"Planned comparisons on {measure} ({code('report.comparisons')}, fixed in advance), "
        "paired by seed: A − B is the mean per-seed difference in " + unit + ", and "
        "(A − B) − (C − D) the mean per-seed difference of differences over the seeds all four "
        "finished, each with its 95% t interval and a paired t-test. "
        + sentence(holm_over(size, "planned t-test(s)"))
        + f"; {tosts}, Holm-adjusted on their own. These are the findings' families: the "
        "comparisons with the reference and the all-pairs table are families of their own."
    ]
    for label, rule in _PLANNED_RUNGS:
        group = [c for c in comps if c.verdict == label]
        if group:
            out.append(f"{rule}: " + "; ".join(_planned_item(c, accuracy) for c in group) + ".")
    return out


def planned_findings(study: Study, a: Analysis) -> list[str]:
    """The planned families' sentences, on eval loss and on accuracy, by verdict."""
    return _planned_family(study, a.planned, False) + _planned_family(
        study, a.planned_accuracy, True
    )


def _against_reference(
    comps: list[Comparison], reference: str
) -> list[tuple[str, int, Comparison]]:
    """``(placement, sign, comparison)`` for each planned simple difference with the reference;
    ``sign`` orients it as placement − reference."""
    out = []
    for c in comps:
        if len(c.terms) != 1:
            continue
        if c.reference == reference and c.strategy != reference:
            out.append((c.strategy, 1, c))
        elif c.strategy == reference and c.reference != reference:
            out.append((c.reference, -1, c))
    return out


def _neg(x: float | None) -> float | None:
    return None if x is None else -x


def on_accuracy(study: Study, a: Analysis) -> bool:
    """Whether the study's verdicts are on accuracy: ``report.verdicts_on``, where ``auto``
    means accuracy when the runs are scored by accuracy and have planned comparisons on it."""
    scored = bool(a.planned_accuracy) and first(study.records, "accuracy_metric") is not None
    return scored and not study.report_settings.accuracy_descriptive


def recommendation(study: Study, a: Analysis) -> str | None:
    """The report's opening line, from the planned comparisons with the reference.

    Among placements with fewer trainable parameters than the reference, the one with the
    fewest whose comparison is ``equivalent`` (its Holm-adjusted TOST passed); else each
    placement shown ``clear`` or ``supported`` worse or better; else unresolved. On accuracy
    when the study's task is scored by accuracy, else on eval loss, unless
    ``report.verdicts_on`` says which (docs/STATISTICS.md).

    Returns:
        Rich text, or ``None`` without planned comparisons or a reference.
    """
    if not study.planned or not study.reference:
        return None
    accuracy = on_accuracy(study, a)
    comps = a.planned_accuracy if accuracy else a.planned
    ref = study.reference
    factor, unit, spec = _scale(accuracy)
    on = "accuracy" if accuracy else "eval loss"
    params = {c.name: r["trainable_params"] for c, r in zip(study.conditions, a.rows)}
    found = _against_reference(comps, ref)
    head = f"Recommendation (the planned comparisons with {code(ref)}, on {on}): "
    smaller = [
        (params[name], name, c)
        for name, _, c in found
        if c.verdict == EQUIVALENT and params.get(name) and params.get(ref)
        and params[name] < params[ref]
    ]  # fmt: skip
    if smaller:
        count, name, c = min(smaller, key=lambda t: t[0])
        margin = (
            f"±{study.report_settings.accuracy_margin:g} accuracy points"
            if accuracy
            else f"±{study.margin:g} nats of eval loss"
        )
        fewer = 100.0 * (1.0 - count / params[ref])
        return (
            f"{head}{code(name)} is equivalent to {code(ref)} within {margin} with "
            f"{fewer:.0f}% fewer trainable parameters ({count:,} vs {params[ref]:,}; TOST "
            f"Holm p {p_is(c.tost_p_holm)})."
        )
    shown = []
    for name, sign, c in found:
        if c.verdict not in (CLEAR, SUPPORTED) or c.mean is None or c.direction is None:
            continue
        better = (c.direction == BETTER) == (sign > 0)
        mean, low, high = c.mean, c.ci_low, c.ci_high
        if mean < 0:  # the size of the difference, its interval turned with it
            mean, low, high = -mean, _neg(high), _neg(low)
        size = f"{factor * mean:{spec[1:]}} {unit}"
        if low is not None and high is not None:
            size += f" [{factor * low:{spec[1:]}}, {factor * high:{spec[1:]}}]"
        shown.append(
            f"{code(name)} is {'better' if better else 'worse'} than {code(ref)} by {size} "
            f"({c.verdict}, Holm p {p_is(c.p_holm)})"
        )
    if shown:
        return (
            f"{head}no placement with fewer parameters is shown equivalent to {code(ref)}; "
            + "; ".join(shown)
            + "."
        )
    why = ""
    if not found:
        why = f" (no planned comparison names {code(ref)})"
    elif all(c.verdict == EXPLORATORY for _, _, c in found):
        why = f" (no planned comparison with it has {MIN_SEEDS} paired seeds yet)"
    return (
        f"{head}unresolved: no placement is shown equivalent to or different from {code(ref)}{why}."
    )


def _lowest(study: Study, a: Analysis) -> list[str]:
    if study.planned:
        return [
            f"The lowest mean eval loss is not tested: the planned comparisons "
            f"({code('report.comparisons')}) are the findings' families."
        ]
    if study.sweep:
        return [
            "The lowest loss over all ranks is not tested (it is mostly the largest rank): the "
            "equal-budget comparison compares placements at the same number of parameters."
        ]
    if not study.lowest_asked:
        if not study.reference or sum(1 for c in study.conditions if study.losses(c)) < 2:
            return []
        return [
            f"The lowest mean eval loss is not tested ({code('report.lowest: false')}): the "
            "findings' Holm family is the comparisons with the reference alone."
        ]
    b = a.best
    if b is None or b.best is None:
        return []
    row = next(r for r, c in zip(a.rows, study.conditions) if c.label == b.best)
    head = f"{code(b.best)} has the lowest mean eval loss ({row['eval_loss_mean']:.4f})"
    if b.lowest:
        return [
            head + ", and is lower than every other condition (each comparison clear or "
            "supported in the same Holm family): it is the lowest."
        ]
    blocking = [k for k, c in b.against.items() if c.verdict not in (CLEAR, SUPPORTED)]
    return [
        head + f", but that is not established: its comparison with {_names(blocking)} is not "
        "clear or supported."
    ]


def _accuracy(study: Study, a: Analysis) -> list[str]:
    if not a.accuracy:
        return []
    per_run = first(study.records, "accuracy_examples")
    out = []
    if isinstance(per_run, int) and per_run > 0:
        how = {"acc": "the choice with the highest log-likelihood"}.get(
            first(study.records, "accuracy_metric"), "exact match"
        )
        out.append(
            f"Accuracy ({how}) is measured on {per_run} problems per run: one problem is "
            f"{100 / per_run:.1f} points. Intervals are Wilson 95% over the problems of all "
            "finished seeds."
        )
    tests = [(k, t) for k, t in a.accuracy.items() if t.verdict not in (None, "reference")]
    if tests:
        size = tests[0][1].family_size
        parts = []
        for label, t in tests:
            text = f"{code(label)}: "
            if t.diff is not None:
                text += f"{100 * t.diff:+.1f} points"
                if t.diff_low is not None and t.diff_high is not None:
                    text += f" [{100 * t.diff_low:+.1f}, {100 * t.diff_high:+.1f}]"
                text += f", paired t Holm p {p_is(t.p_holm)}, "
            text += t.verdict or ""
            if t.direction:
                text += f" ({'higher' if t.direction == BETTER else 'lower'} accuracy)"
            text += f"; {t.b} right only here vs {t.c} in the reference, McNemar p {p_is(t.p)}"
            parts.append(text)
        out.append(
            "Accuracy against the reference, paired by seed: the verdict is the paired t over "
            f"seeds' accuracies ({holm_over(size, 'test(s)')}; fewer than {MIN_SEEDS} seeds is "
            "exploratory), with the exact McNemar test over problems beside it: "
            + "; ".join(parts)
            + "."
        )
    return out


def _speed(study: Study, a: Analysis) -> list[str]:
    if not a.speedups:
        return []
    groups: dict[str, list[str]] = {}
    for label, s in a.speedups.items():
        if s.ratio.geomean is None:
            continue
        text = f"{code(label)} {s.ratio.geomean:.2f}×"
        if s.ratio.ci_low is not None:
            text += f" [{s.ratio.ci_low:.2f}, {s.ratio.ci_high:.2f}]"
        groups.setdefault(s.claim, []).append(text)
    if not groups:
        return []
    words = {
        FASTER: "faster",
        SLOWER: "slower",
        UNRESOLVED: "not resolved (the interval includes 1, or is undefined: equal ratios)",
        EXPLORATORY: f"exploratory (fewer than {MIN_SEEDS} seeds)",
    }
    body = ". ".join(f"{words[k].capitalize()}: {', '.join(v)}" for k, v in groups.items())
    return [
        "Training speed against the reference (per-seed ratios of its train time to the "
        "condition's, geometric mean and 95% interval; a speedup is claimed only when the whole "
        "interval lies above 1). Wall time on a shared machine varies from run to run, so "
        f"tokens per second are shown beside it in the speed table. {body}."
    ]


def _capacity(study: Study, a: Analysis) -> list[str]:
    rows = {c.label: r for c, r in zip(study.conditions, a.rows)}
    flagged = []
    for cond in study.conditions:
        ref = study.reference_of(cond)
        if ref is None or ref == cond:
            continue
        mine, theirs = rows[cond.label], rows[ref.label]
        p, q = mine["trainable_params"], theirs["trainable_params"]
        params_differ = bool(p and q and abs(p / q - 1.0) > CAPACITY_TOLERANCE)
        mine_ranks, their_ranks = _rank_set(study, cond), _rank_set(study, ref)
        ranks_differ = bool(mine_ranks and their_ranks) and mine_ranks != their_ranks
        if (params_differ or ranks_differ) and p and q:
            change = 100 * (p / q - 1)
            text = f"{code(cond.label)} {p:,} trainable parameters vs {q:,} ({change:+.0f}%)"
            if ranks_differ:
                text += f", ranks {_ranks(study, cond)} vs {_ranks(study, ref)}"
            flagged.append(text)
    if not flagged:
        return []
    if study.sweep:
        hint = " The equal-budget comparison separates the two."
    elif matched := _planned_at_equal_budget(study, rows):
        hint = " The planned comparisons also test " + "; ".join(matched) + " at an equal budget."
    elif study.config is not None and study.config.match_params is None:
        hint = (
            f" To compare placements at an equal budget, rerun with "
            f"{code(f'match_params: {study.reference}')} or sweep ranks ({code('ranks')})."
        )
    else:
        hint = ""
    return [
        "Caution: placement is confounded with capacity. Compared with their reference, "
        + "; ".join(flagged)
        + f" (more than {CAPACITY_TOLERANCE:.0%} apart, or other ranks): their loss differences "
        "mix where the adapters are with how large they are." + hint
    ]


def _planned_at_equal_budget(study: Study, rows: dict) -> list[str]:
    """The planned simple comparisons of two strategies, neither the reference, whose
    trainable parameters are within :data:`CAPACITY_TOLERANCE` of each other, as text."""
    found = []
    for entry in study.planned:
        if not isinstance(entry[0], str) or study.reference in entry[:2]:
            continue
        a, b = (rows.get(name) for name in entry[:2])
        p, q = (r["trainable_params"] if r else None for r in (a, b))
        if p and q and abs(p / q - 1.0) <= CAPACITY_TOLERANCE:
            change = f"{100 * (p / q - 1):+.1f}%"
            found.append(f"{code(entry[0])} with {code(entry[1])} ({p:,} vs {q:,}, {change})")
    return found


#: Split comparisons named in the caution; the others are counted.
_SPLIT_SHOWN = 8


def _kind(key: str, plural: bool = False) -> str:
    """An :data:`ENVIRONMENT` field in words: ``machines``, ``torch versions``, ``precisions``."""
    word = key if key in ("machine", "precision") else f"{key} version"
    return word + "s" if plural else word


def _made(key: str) -> str:
    if key == "machine":
        return "on different machines"
    if key == "precision":
        return "at different precisions"
    return f"with different {_kind(key, plural=True)}"


def _listing(words: list[str], last: str) -> str:
    """``a``, ``a or b``, ``a, b or c`` (``last`` joins the last two)."""
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + f" {last} " + words[-1]


def _runs(n: int) -> str:
    return f"{n} run" if n == 1 else f"{n} runs"


def _environment(env: Environments) -> list[str]:
    """A caution naming the comparisons whose paired runs were made on different machines,
    with different library versions or at different precisions (:data:`ENVIRONMENT`)."""
    if not env.mismatches:
        return []
    kinds = [k for k in ENVIRONMENT if any(k in m.fields for m in env.mismatches)]
    parts = []
    for m in env.mismatches[:_SPLIT_SHOWN]:
        notes = [", ".join(m.fields)] if len(kinds) > 1 else []
        if len(m.seeds) < m.n:
            seeds = _listing([str(seed) for seed in m.seeds], "and")
            notes.append(f"seed{'s' if len(m.seeds) > 1 else ''} {seeds} of the {m.n} paired")
        parts.append(
            f"{code(m.strategy)} vs {code(m.reference)}"
            + (f" ({'; '.join(notes)})" if notes else "")
        )
    left = len(env.mismatches) - _SPLIT_SHOWN
    listed = "; ".join(parts) + (f"; and {left} more" if left > 0 else "")
    values = " ".join(
        f"{_kind(k, plural=True).capitalize()} of the finished final runs: "
        + "; ".join(
            f"{code(value)} {_runs(sum(runs.values()))} ({_names(list(runs))})"
            for value, runs in env.values[k].items()
        )
        + "."
        for k in kinds
        if k in env.values
    )
    n = len(env.mismatches)
    return [
        f"Caution: {n} comparison{'s' if n != 1 else ''} pair runs made "
        f"{_listing([_made(k) for k in kinds], 'or')} (paired by seed): {listed}. Each run's "
        f"record states its machine, {_listing(list(LIBRARIES), 'and')} versions and "
        "precision, and a difference in any of them changes the numerics and the speed, so "
        "these comparisons' loss differences and speed ratios mix where the adapters are with "
        f"how the runs were made. {values} To separate the two, rerun the affected conditions "
        "on one machine, with the same versions and precision."
    ]


def _rank_set(study: Study, cond: Condition) -> set[int]:
    return {
        int(r)
        for rec in study.runs(cond)
        for roles in (rec.get("placement") or {}).values()
        for r in roles.values()
    }


def _ranks(study: Study, cond: Condition) -> str:
    return "/".join(f"r{r}" for r in sorted(_rank_set(study, cond))) or "?"


def _scaling(study: Study) -> list[str]:
    if study.config is None:
        return []
    lora = study.config.lora
    rule = "alpha / r" if lora.scaling == "standard" else "alpha / sqrt(r)"
    text = (
        f"LoRA scaling convention: {lora.scaling} ({rule}, alpha = {lora.alpha:g}, with r each "
        "module's own rank)."
    )
    ranks = (
        set().union(*(_rank_set(study, c) for c in study.conditions)) if study.conditions else set()
    )
    if len(ranks) > 1:
        text = (
            "Caution: "
            + text
            + (
                f" Ranks differ between conditions ({', '.join(f'r{r}' for r in sorted(ranks))}), "
                "so the convention matters: a rank change also changes each module's scaling, and "
                "comparisons across ranks hold for this convention only (rank-stabilised "
                "alpha / sqrt(r) keeps update sizes comparable across ranks; Kalajdzievski 2023)."
            )
        )
    return [text]


def training_lines(study: Study, a: Analysis, t: TrainingBudget) -> list[str]:
    """The training budget, stated beside the parameter budget (a report section)."""
    out = []
    if t.steps and t.batch_size:
        out.append(f"{t.steps:,} optimizer steps of {t.batch_size} examples per final run.")
    if t.tokens_mean is not None:
        out.append(f"{t.tokens_mean:,.0f} tokens trained per run (mean over finished runs).")
    if t.epochs is not None:
        out.append(
            f"{t.epochs:.2f} epochs of the training pool ({t.steps * t.batch_size:,} examples "
            f"drawn / {t.train_examples:,} kept after tokenization)."
        )
    params = [r["trainable_params"] for r in a.rows if r["trainable_params"]]
    if params:
        out.append(
            f"Trainable parameters: {min(params):,} to {max(params):,} per condition (summary)."
        )
    sel = study.config.training if study.config else None
    if sel is not None and sel.learning_rates:
        planned = len(study.conditions) * len(sel.learning_rates) * len(sel.selection)
        out.append(
            f"Learning-rate selection: {t.selection_runs} of {planned} runs complete "
            f"({len(study.conditions)} conditions × {len(sel.learning_rates)} learning rates × "
            f"{len(sel.selection)} seed(s)), {t.steps:,} steps each, scored on the validation "
            "split."
        )
    adopted = [r for r in study.records if r.get("adopted_from")]
    if adopted:
        out.append(
            f"{len(adopted)} final run(s) are the selection run of their condition at the chosen "
            "learning rate, adopted rather than trained again (seed "
            f"{', '.join(map(str, sorted({r['seed'] for r in adopted})))}): the same training, "
            "evaluated on the eval split once adopted, with its times measured in selection. "
            "Their rate was chosen on their own validation loss, a mild selection effect that "
            "every condition shares."
        )
    copied = [r for r in study.records + study.selection if r.get("reused_from")]
    if copied:
        sources = sorted({r["reused_from"].rsplit("/", 2)[0] for r in copied})
        out.append(
            f"{len(copied)} runs were copied from another study ({', '.join(sources)}), made "
            "there exactly as here (the config's reuse list, docs/STUDIES.md); their times were "
            "measured there."
        )
    return out


def findings(
    study: Study,
    analysis: Analysis,
    budget: BudgetAnalysis | None,
    selection: SelectionTable | None,
    checkpoints: CheckpointAnalysis | None,
    training: TrainingBudget,
) -> list[str]:
    """Plain-language findings, each derived from the verdicts and numbers the tables show.

    Args:
        study: The loaded study.
        analysis: Its summary rows and tests.
        budget: The equal-budget comparisons (rank sweeps), or ``None``.
        selection: The learning-rate selection table, or ``None``.
        checkpoints: Ranking stability between checkpoints, or ``None``.
        training: The training budget.

    Returns:
        Rich-text sentences (:func:`loraplace.report_render.code` marks names).
    """
    out = list(study.notes)
    out += budget_findings(budget)  # a rank sweep's placement question comes first
    out += planned_findings(study, analysis)
    if study.reference and not study.planned:
        out += _comparison_findings(study, analysis)
    out += _lowest(study, analysis)
    out += _accuracy(study, analysis)
    out += _speed(study, analysis)
    front = [c.label for c, r in zip(study.conditions, analysis.rows) if r["pareto"]]
    out.append(
        f"On the Pareto front of trainable parameters vs mean eval loss (counts within "
        f"{PARETO_TOLERANCE:.0%} are one budget): {_names(front)}. The front is computed on "
        "means; the verdicts, not the front, say whether two conditions differ."
    )
    out += checkpoint_findings(checkpoints)
    out += _capacity(study, analysis) if study.reference else []
    out += _environment(analysis.environments)
    out += _scaling(study)
    out += selection_findings(study, selection)
    out += dropped_findings(training)
    failed = sum(r["n_failed"] for r in analysis.rows)
    if failed or study.incomplete:
        out.append(
            f"{failed} run(s) failed and {len(study.incomplete)} run directory(ies) have no "
            f"readable result; both are excluded from the statistics (see {FAILURES_HEADING})."
        )
    out.append(
        "Perplexity is exp(mean eval loss over seeds), not the mean of per-seed perplexities."
    )
    return out


def selection_findings(study: Study, selection: SelectionTable | None) -> list[str]:
    """How the learning rate was set: one shared rate (a caution), or chosen per condition on
    the validation split, with any choice at the edge of its grid."""
    if study.config is None:
        return []
    if selection is None:
        lr = study.config.training.learning_rate
        return [
            f"Caution: every condition trained at one learning rate ({lr:g}, "
            f"{code('training.learning_rate')}). A placement whose best learning rate differs is "
            f"at a disadvantage; a grid ({code('training.learning_rates')}) selects one per "
            "condition on a validation split."
        ]
    edge = [
        f"{code(r.condition.label)} ({r.chosen:g}, the "
        f"{'smallest' if r.chosen == min(selection.grid) else 'largest'})"
        for r in selection.rows
        if r.at_edge
    ]
    grid = ", ".join(f"{v:g}" for v in selection.grid)
    out = [
        f"Learning rates were selected per condition on the validation split only "
        f"({selection.validation_examples} examples; the eval split is never used for a "
        f"choice), from the grid {grid} on seed(s) "
        f"{', '.join(map(str, selection.seeds))}: the lowest mean validation loss."
    ]
    if edge:
        out.append(
            f"Caution: the chosen learning rate is at the edge of the grid ({grid}) for "
            + ", ".join(edge)
            + ": a better value may lie outside it; extend the grid."
        )
    return out


def dropped_findings(training: TrainingBudget) -> list[str]:
    """A caution for examples dropped for exceeding ``max_length``, with their counts."""
    if not training.dropped:
        return []
    counts = ", ".join(f"{split} {n}" for split, n in training.dropped.items())
    total = sum(training.dropped.values())
    return [
        f"Caution: {total} example(s) were dropped for exceeding {code('max_length')} = "
        f"{training.max_length} tokens ({counts}): those splits are smaller than configured."
    ]


def _at_budget(r: BudgetRow) -> str:
    """One compared budget of a pair: its difference and verdict."""
    text = f"at {r.budget:,.0f} parameters, "
    if r.mean is None:
        return text + "no shared seeds"
    text += f"Δ {r.mean:+.4f} nats"
    if r.verdict == EXPLORATORY:
        return text + f" (exploratory, n = {r.n})"
    if r.direction:
        word = "lower" if r.direction == BETTER else "higher"
        return text + f", Holm p {p_is(r.p_holm)}: {r.verdict}, {word} loss"
    return text + f", Holm p {p_is(r.p_holm)}: {r.verdict}"


def budget_findings(budget: BudgetAnalysis | None) -> list[str]:
    """The equal-budget comparisons of a rank sweep, its interpolation check and the budgets
    left out as extrapolations."""
    if budget is None:
        return []
    compared = [r for r in budget.rows if r.status == "compared"]
    pairs: dict[tuple[str, str], list[str]] = {}
    for r in compared:
        pairs.setdefault((r.strategy, r.reference), []).append(_at_budget(r))
    method = (
        " (each curve interpolated linearly in log parameters between its measured ranks, never "
        f"extrapolated; paired t over seeds, {holm_over(budget.family_size, 'compared budget(s)')})"
    )
    out = []
    for i, ((strategy, reference), parts) in enumerate(pairs.items()):
        out.append(
            f"At equal budgets{method if i == 0 else ''}, {code(strategy)} vs {code(reference)}: "
            + "; ".join(parts)
            + "."
        )
    if compared and budget.chord:
        gauges = ", ".join(f"{code(name)} {gap:+.4f}" for name, gap in budget.chord.items())
        out.append(
            "Interpolation check (docs/STATISTICS.md): a quadratic in log parameters through "
            "neighbouring ranks puts the straight line between two ranks at most this far above "
            f"(+) or below (−) each curve, in nats of mean eval loss: {gauges}. Where a curve "
            "flattens (+), its interpolated loss is overstated, which favours the side measured "
            "at that budget (the table's Measured column); a difference of about that size "
            "rests on the interpolation."
        )
    outside = [r for r in budget.rows if r.status != "compared"]
    if outside:
        listed = ", ".join(
            f"{code(r.strategy)} vs {code(r.reference)} at {r.budget:,.0f}" for r in outside
        )
        out.append(
            f"Not compared, as they would need extrapolation beyond a measured curve: {listed}."
        )
    if budget.skipped:
        out.append("No budget curve: " + "; ".join(budget.skipped) + ".")
    return out


_SWAPS_SHOWN = 6


def _swapped(order_a: tuple[str, ...], means: dict, step: int) -> list[tuple[str, str, float]]:
    """``(x, y, gap)`` for each pair ranked ``y`` before ``x`` earlier and ``x`` before ``y`` at
    ``step``, the largest gaps (mean eval loss of ``y`` minus ``x`` at ``step``) first."""
    out = []
    for i, y in enumerate(order_a):
        for x in order_a[i + 1 :]:
            gap = means[y][step] - means[x][step]
            if gap > 0:
                out.append((x, y, gap))
    return sorted(out, key=lambda t: -t[2])


def checkpoint_findings(checkpoints: CheckpointAnalysis | None) -> list[str]:
    """The ranking's stability between checkpoints, the pairs that changed order and what
    their tests at both checkpoints resolve."""
    if checkpoints is None:
        return []

    def tau(s: RankStability) -> str:
        return "undefined" if s.tau is None else f"{s.tau:+.2f}"

    steps = "; ".join(f"{a:,}→{b:,}: tau {tau(s)}" for a, b, s in checkpoints.pairs)
    a, b, last = checkpoints.pairs[-1]
    if last.same_best:
        change = f"the lowest condition stayed {code(last.order_b[0])}"
    else:
        change = (
            f"the lowest condition changed from {code(last.order_a[0])} to {code(last.order_b[0])}"
        )
    late = (last.tau is not None and last.tau < 1.0) or not last.same_best
    warning = (
        " The ranking changed late: the final order may not hold with more training."
        if late
        else ""
    )
    swapped = _swapped(last.order_a, checkpoints.means, b)
    if swapped:
        shown = "; ".join(
            f"{code(x)} now lower than {code(y)} by {gap:.4f}"
            for x, y, gap in swapped[:_SWAPS_SHOWN]
        )
        more = f"; and {len(swapped) - _SWAPS_SHOWN} more" if len(swapped) > _SWAPS_SHOWN else ""
        warning += (
            f" Pairs whose order changed ({len(swapped)}, step {b:,}'s mean eval-loss gap): "
            f"{shown}{more}."
        )
    warning += _tested_changes(
        [x for x in checkpoints.changes if (x.from_step, x.to_step) == (a, b)]
    )
    return [
        "Ranking stability between eval checkpoints (Kendall's tau-b of the mean eval losses "
        f"of the {last.n} conditions scored at both; 1 = same order): {steps}. Last pair "
        f"(steps {a:,}→{b:,}): tau {tau(last)}, {change}.{warning}"
    ]


def _tested_changes(changes: list[OrderChange]) -> str:
    """What the all-pairs tests say of the pairs that changed order (one checkpoint pair)."""
    if not changes:
        return ""

    def said(c: Comparison) -> str:
        return c.verdict + (f", {c.direction}" if c.direction else "")

    resolved = [x for x in changes if {x.before.verdict, x.after.verdict} & {CLEAR, SUPPORTED}]
    text = (
        f' The report tests {len(changes)} of them at both checkpoints (table "Pairs that '
        f'changed order"): {len(changes) - len(resolved)} had no clear or supported difference '
        "at either checkpoint, so these seeds cannot order them"
    )
    if resolved:
        text += "; with one at either: " + "; ".join(
            f"{code(x.before.strategy)} vs {code(x.before.reference)} ({said(x.before)} at step "
            f"{x.from_step:,}, {said(x.after)} at step {x.to_step:,})"
            for x in resolved
        )
    return text + "."

"""The report's findings for the designs beyond one comparison per condition: equal budgets
of a rank sweep, the learning-rate grid, examples dropped for length, and the ranking's
stability between checkpoints. Each sentence follows the same rules as
:mod:`loraplace.report_findings`, which puts them in order.
"""

from __future__ import annotations

from loraplace.measures import RankStability
from loraplace.report_data import Study
from loraplace.report_render import code, holm_over, p_is
from loraplace.report_sweeps import (
    BudgetAnalysis,
    BudgetRow,
    CheckpointAnalysis,
    OrderChange,
    SelectionTable,
    TrainingBudget,
)
from loraplace.verdicts import BETTER, CLEAR, EXPLORATORY, SUPPORTED, Comparison

__all__ = ["budget_findings", "checkpoint_findings", "dropped_findings", "selection_findings"]


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

"""The report's tables for the study designs beyond one comparison per condition: the
equal-budget comparisons of a rank sweep, learning-rate selection, and eval loss at
checkpoints with the ranking's stability (the numbers come from :mod:`loraplace.report_sweeps`).
"""

from __future__ import annotations

from loraplace.report_data import Study
from loraplace.report_render import (
    DASH,
    Table,
    code,
    fmt,
    holm_over,
    interval,
    p_text,
    sentence,
    signed,
    who,
    who_headers,
)
from loraplace.report_sweeps import BudgetAnalysis, CheckpointAnalysis, SelectionTable

__all__ = [
    "budget_pairs_table",
    "budget_table",
    "checkpoint_tables",
    "selection_table",
]


def budget_table(budget: BudgetAnalysis | None) -> Table | None:
    """Each placement against the reference placement at equal trainable parameters."""
    if budget is None or not budget.rows:
        return None
    note = (
        "Budgets are the measured parameter counts of both curves; the side not measured is "
        "interpolated linearly in log parameters between its ranks. A budget outside either "
        "curve's range is an extrapolation and is not compared. Δ = strategy − reference over "
        "the seeds measured at every rank of both; "
        f"{holm_over(budget.family_size, 'compared budget(s)')}. The seed bootstrap is "
        "descriptive (3 seeds give 10 distinct resamples)."
    )
    return _budget_rows("Equal-budget comparison", budget.rows, ["Strategy", "Reference"], note)


def budget_pairs_table(budget: BudgetAnalysis | None) -> Table | None:
    """The other placements against each other at equal trainable parameters."""
    if budget is None or not budget.pairs:
        return None
    note = (
        "As the equal-budget comparison, for every pair of the placements other than the "
        "reference: Δ = A − B. "
        + sentence(
            holm_over(
                budget.pairs_family_size,
                "compared budget(s) of these pairs",
                ", a family of its own: the findings do not use it",
            )
        )
        + "."
    )
    return _budget_rows("Equal budgets, other pairs", budget.pairs, ["A", "B"], note)


def _budget_rows(title: str, found: list, names: list[str], note: str) -> Table:
    rows = [
        [
            code(r.strategy),
            code(r.reference),
            f"{r.budget:,.0f}",
            r.status,
            code(r.measured) if r.measured != "both" else "both",
            str(r.n),
            signed(r.mean),
            interval(r.t_low, r.t_high, "+.4f"),
            interval(r.boot_low, r.boot_high, "+.4f"),
            p_text(r.p),
            p_text(r.p_holm),
            (r.verdict or DASH) + (f", {r.direction}" if r.direction else ""),
        ]
        for r in found
    ]
    headers = [
        *names,
        "Budget (params)",
        "Status",
        "Measured",
        "n",
        "Δ eval loss",
        "95% t CI",
        "Seed bootstrap",
        "p",
        "Holm p",
        "Verdict",
    ]
    return Table(title, headers, rows, note)


def selection_table(study: Study, table: SelectionTable | None) -> Table | None:
    """Validation loss per condition and learning rate, the chosen one marked."""
    if table is None:
        return None
    rows = []
    for r in table.rows:
        cells = []
        for lr in table.grid:
            if lr not in r.losses:
                cells.append(DASH)
            elif r.losses[lr] is None:
                cells.append("diverged")
            else:
                cells.append(f"{r.losses[lr]:.4f}" + (" (chosen)" if lr == r.chosen else ""))
        chosen = DASH if r.chosen is None else f"{r.chosen:g}" + (" (edge)" if r.at_edge else "")
        rows.append(who(study, r.condition) + cells + [chosen])
    headers = who_headers(study) + [f"lr {lr:g}" for lr in table.grid] + ["Chosen"]
    note = (
        "Mean validation loss over the selection seeds "
        f"({', '.join(map(str, table.seeds))}) on the validation split only "
        f"({table.validation_examples} examples); the eval split is never used for a choice. "
        "diverged = the runs failed; a dash = not yet run. edge = the smallest or largest "
        "learning rate of the grid."
    )
    return Table("Learning-rate selection", headers, rows, note)


def checkpoint_tables(study: Study, cp: CheckpointAnalysis | None) -> list[Table]:
    """Eval loss at each checkpoint, and the ranking's stability between checkpoints."""
    if cp is None:
        return []
    rows = [
        who(study, cond) + [fmt(cp.means[cond.label].get(s), ".4f") for s in cp.steps]
        for cond in study.conditions
        if cond.label in cp.means
    ]
    seeds = "finished seeds" if cp.seeds is None else f"seeds {', '.join(map(str, cp.seeds))}"
    losses = Table(
        "Eval loss at checkpoints",
        who_headers(study) + [f"step {s:,}" for s in cp.steps],
        rows,
        f"Mean eval loss over {seeds}.",
    )
    stability = Table(
        "Ranking stability",
        ["From step", "To step", "Conditions", "Kendall tau-b", "Lowest before", "Lowest after"],
        [
            [
                f"{a:,}",
                f"{b:,}",
                f"{s.n} of {len(study.conditions)}",
                fmt(s.tau, "+.2f"),
                code(s.order_a[0]) if s.order_a else DASH,
                code(s.order_b[0]) if s.order_b else DASH,
            ]
            for a, b, s in cp.pairs
        ],
        "Kendall's tau-b between the conditions' mean eval losses at consecutive checkpoints "
        "(1 = same order, −1 = reversed), over the conditions with an eval loss at both.",
    )
    return [losses, stability] + ([_order_change_table(study, cp)] if cp.changes else [])


def _order_change_table(study: Study, cp: CheckpointAnalysis) -> Table:
    """The family pairs that changed order between checkpoints, tested at both."""

    def verdict(c) -> str:
        return c.verdict + (f", {c.direction}" if c.direction else "")

    rows = [
        [
            f"{x.from_step:,}",
            f"{x.to_step:,}",
            code(x.before.strategy),
            code(x.before.reference),
            str(x.before.n) if x.before.n == x.after.n else f"{x.before.n} → {x.after.n}",
            signed(x.before.mean),
            p_text(x.before.p_holm),
            verdict(x.before),
            signed(x.after.mean),
            p_text(x.after.p_holm),
            verdict(x.after),
        ]
        for x in cp.changes
    ]
    sizes = sorted({c.family_size for x in cp.changes for c in (x.before, x.after)} - {0})
    if len(sizes) > 1:
        holm = f"Holm over the pairs tested at that checkpoint ({sizes[0]} to {sizes[-1]})"
    else:
        holm = holm_over(sizes[0] if sizes else 0, "pair(s)", " at each checkpoint")
    which = (
        "Each pair of conditions that share a rank or a placement (the pairs the all-pairs "
        "table compares)"
        if study.sweep
        else "Each pair of conditions"
    )
    note = (
        f"{which} whose order of mean eval loss changed between consecutive checkpoints, "
        "tested at each checkpoint: Δ = mean per-seed difference A − B in eval loss over the "
        f"pair's common seeds (n; before → after where it differs), paired t; {holm}; the "
        "verdict rules of docs/STATISTICS.md. A pair with no clear or supported difference at "
        "either checkpoint is one these seeds cannot order: its change of order is not "
        "evidence that the ranking moved."
    )
    headers = [
        "From step",
        "To step",
        "A",
        "B",
        "n",
        "Δ before",
        "Holm p before",
        "Verdict before",
        "Δ after",
        "Holm p after",
        "Verdict after",
    ]
    return Table("Pairs that changed order", headers, rows, note)

"""The report's tables as rich text, one builder per table, shared by every rendering.

Each builder turns computed values into a :class:`~loraplace.report.render.Table`; Markdown,
HTML and LaTeX then differ only in escaping and layout. Strategy names are code spans. The
tables of rank sweeps, learning-rate grids and checkpoints take their numbers from
:mod:`loraplace.report.sweeps`.
"""

from __future__ import annotations

import json
from typing import Any

from loraplace import store
from loraplace.report.analysis import Analysis
from loraplace.report.load import Study, num, placement_spread, read_importance
from loraplace.report.render import (
    DASH,
    Table,
    code,
    fmt,
    holm_over,
    interval,
    p_text,
    planned_label,
    pm,
    sentence,
    signed,
    span,
    who,
    who_headers,
)
from loraplace.report.sweeps import BudgetAnalysis, CheckpointAnalysis, SelectionTable
from loraplace.settings import T_ONLY
from loraplace.stats.verdicts import EQUIVALENCE_ALPHA, Comparison

__all__ = [
    "accuracy_table",
    "budget_pairs_table",
    "budget_table",
    "checkpoint_tables",
    "comparison_table",
    "failures",
    "pairwise_table",
    "placement_seeds_table",
    "planned_table",
    "provenance",
    "run_table",
    "selection_table",
    "speed_table",
    "summary_table",
    "tex_tables",
]


def _acc(row: dict[str, Any]) -> str:
    acc = row["accuracy_mean"]
    if acc is None:
        return DASH
    text = f"{100 * acc:.1f}%"
    if row["accuracy_ci95_low"] is not None:
        text += f" [{100 * row['accuracy_ci95_low']:.1f}, {100 * row['accuracy_ci95_high']:.1f}]"
    return text


def summary_table(study: Study, a: Analysis) -> Table:
    """Costs and quality per condition."""
    accuracy = any(r["accuracy_mean"] is not None for r in a.rows)
    headers = who_headers(study) + [
        "Spec",
        "n",
        "Trainable params",
        "% of model",
        "Reduction",
        "Eval loss ± 95% CI",
        "Perplexity",
        *(["Accuracy [95% CI]"] if accuracy else []),
        "Verdict vs ref (same rank)" if study.sweep else "Verdict vs ref",
        "Pareto",
    ]
    rows = []
    for cond, r in zip(study.conditions, a.rows):
        rows.append(
            who(study, cond)
            + [
                code(cond.spec),
                str(r["n"]),
                _params(r),
                fmt(r["trainable_pct"], ".3f", "%"),
                fmt(r["param_reduction_pct"], ".1f", "%"),
                pm(r["eval_loss_mean"], r["eval_loss_ci95"], ".4f"),
                fmt(r["perplexity"], ".3f"),
                *([_acc(r)] if accuracy else []),
                *(
                    [DASH, DASH]  # nothing finished yet: nothing to compare or place
                    if not r["n"]
                    else [
                        (r["verdict"] or DASH) + (f", {r['direction']}" if r["direction"] else ""),
                        "yes" if r["pareto"] else "no",
                    ]
                ),
            ]
        )
    note = (
        "n = finished seeds. Eval loss = mean ± 95% t half-width over seeds; perplexity = "
        "exp(mean eval loss). % of model = trainable / (base + adapter). Reduction = 1 − "
        "trainable / the reference's trainable (at the same rank). Accuracy interval: Wilson "
        "95% over all problems of all finished seeds. Verdict: see the comparison table"
        + (
            " (a family of its own: the findings and the recommendation read the planned "
            "comparisons). "
            if study.planned
            else ". "
        )
        + "Pareto: non-dominated in (trainable params, mean eval loss), counts within 5% being "
        "one budget."
        + (
            " A range of trainable params: the strategy placed its adapters per seed and the "
            "seeds' counts differ; their mean counts for % of model, the reduction and the Pareto "
            "front."
            if any(_params(r) != fmt(r["trainable_params"], ",") for r in a.rows)
            else ""
        )
    )
    return Table("Summary", headers, rows, note)


def comparison_table(study: Study, a: Analysis) -> Table:
    """Each condition against the reference at its rank, paired by seed."""
    headers = who_headers(study) + [
        "Reference",
        "n",
        "Δ eval loss",
        "95% CI (seeds)",
        "95% CI (eval examples)",
        "p (paired)",
        "Holm p",
        "TOST Holm p",
        "Verdict",
        "Welch p",
    ]
    rows = []
    for cond in study.conditions:
        c = a.comparisons.get(cond.label)
        if c is None:
            continue
        if c.verdict == "reference":
            rows.append(
                who(study, cond) + [code(c.reference), str(c.n)] + [DASH] * 6 + ["reference", DASH]
            )
            continue
        rows.append(
            who(study, cond)
            + [
                code(c.reference),
                str(c.n),
                signed(c.mean),
                interval(c.ci_low, c.ci_high, "+.4f"),
                interval(c.boot_low, c.boot_high, "+.4f"),
                p_text(c.p),
                p_text(c.p_holm),
                p_text(c.tost_p_holm),
                (c.verdict + (f", {c.direction}" if c.direction else "")) if c.n else DASH,
                p_text(c.welch_p),
            ]
        )
    note = (
        "Δ = mean over the seeds both finished of (strategy − reference) eval loss, in nats; "
        "negative is lower loss. 95% CI (seeds): paired t interval. 95% CI (eval examples): "
        "paired percentile bootstrap over eval examples (how much Δ depends on the particular "
        "eval set; not used by the verdicts). Holm p: "
        + (
            holm_over(0, "")
            if not a.family_size
            else f"adjusted over this table's {a.family_size} test(s), at the same rank (the "
            "equal-budget comparisons and all pairs are families of their own)"
            if study.sweep
            else f"adjusted over this table's {a.family_size} test(s), a family of its own "
            "(the findings use the planned comparisons)"
            if study.planned
            else f"adjusted over the {a.family_size} test(s) the findings make"
        )
        + ". TOST: equivalence within "
        f"±{study.margin:g} nats. Welch p: unpaired, secondary, not used by the verdicts. A "
        "dash is a test not made (fewer than 3 paired seeds) or undefined (equal differences)."
    )
    return Table("Comparison with the reference", headers, rows, note)


def planned_table(study: Study, comps: list[Comparison], accuracy: bool) -> Table | None:
    """The planned comparisons (``report.comparisons``) on eval loss or on accuracy."""
    if not comps:
        return None
    factor, spec = (100.0, "+.1f") if accuracy else (1.0, "+.4f")

    def scaled(x: float | None) -> float | None:
        return None if x is None else factor * x

    rows = [
        [
            planned_label(c),
            str(c.n),
            fmt(scaled(c.mean), spec),
            interval(scaled(c.ci_low), scaled(c.ci_high), spec),
            p_text(c.p),
            p_text(c.p_holm),
            p_text(c.tost_p),
            p_text(c.tost_p_holm),
            (c.verdict + (f", {c.direction}" if c.direction else "")) if c.n else DASH,
        ]
        for c in comps
    ]
    unit = "accuracy points (better = higher)" if accuracy else "nats of eval loss (better = lower)"
    margin = (
        f"±{study.report_settings.accuracy_margin:g} points"
        if accuracy
        else f"±{study.margin:g} nats"
    )
    size, tost_size = comps[0].family_size, comps[0].tost_family_size
    note = (
        f"Δ in {unit}: A − B is the mean per-seed difference over the seeds both finished; "
        "(A − B) − (C − D) the mean per-seed difference of differences over the seeds all four "
        f"finished; paired t 95% interval. Holm p: {holm_over(size, 'planned t-test(s)')}. "
        f"TOST: equivalence within {margin} (not for a difference of differences or a "
        f"{T_ONLY} pair), Holm over the "
        f"{tost_size} TOST(s); equivalent below {EQUIVALENCE_ALPHA:g} and only without a clear "
        "or supported difference. A dash is a test not made (fewer than 3 paired seeds) or "
        "undefined (equal differences)."
    )
    headers = ["Comparison", "n", "Δ", "95% CI", "p (paired)", "Holm p", "TOST p", "TOST Holm p",
               "Verdict"]  # fmt: skip
    title = "Planned comparisons" + (": accuracy" if accuracy else "")
    if accuracy and study.report_settings.accuracy_descriptive:
        title += " (descriptive: the verdicts are on eval loss)"
    return Table(title, headers, rows, note)


def accuracy_table(study: Study, a: Analysis) -> Table | None:
    """Accuracy with Wilson intervals, the paired t over seeds against the reference (the
    verdict) and the exact McNemar test over problems."""
    if not a.accuracy:
        return None
    headers = who_headers(study) + [
        "Correct / attempted",
        "Accuracy",
        "Wilson 95% CI",
        "Δ vs ref, points [paired 95% CI]",
        "Paired t p",
        "Holm p",
        "Right only here",
        "Right only in ref",
        "McNemar p",
        "Verdict",
    ]
    rows = []
    for cond in study.conditions:
        t = a.accuracy.get(cond.label)
        if t is None:
            continue
        low = None if t.low is None else 100 * t.low
        high = None if t.high is None else 100 * t.high
        rows.append(
            who(study, cond)
            + [
                f"{t.correct} / {t.attempted}",
                f"{100 * t.correct / t.attempted:.1f}%" if t.attempted else DASH,
                interval(low, high, ".1f"),
                _accuracy_difference(t),
                p_text(t.p_t),
                p_text(t.p_holm),
                str(t.b) if t.n else DASH,
                str(t.c) if t.n else DASH,
                p_text(t.p),
                (t.verdict or DASH) + (f", {t.direction}" if t.direction else ""),
            ]
        )
    size = next((t.family_size for t in a.accuracy.values()), 0)
    note = (
        "The verdict is the paired t-test of each seed's accuracy against the reference's, as "
        f"for eval loss; {holm_over(size, 'accuracy test(s)')}; better = higher accuracy. "
        "Beside it, problems are paired by seed and problem with the reference's runs and the "
        "exact McNemar test uses the discordant pairs (conditional on these problems, reported "
        "but not used for the verdict)."
    )
    return Table("Accuracy", headers, rows, note)


def _accuracy_difference(t) -> str:
    """The mean paired accuracy difference in points, with its interval where defined."""
    if t.diff is None:
        return DASH
    text = f"{100 * t.diff:+.1f}"
    if t.diff_low is not None and t.diff_high is not None:
        text += f" [{100 * t.diff_low:+.1f}, {100 * t.diff_high:+.1f}]"
    return text


def _speedup(row: dict[str, Any]) -> str:
    """The speedup with its interval: a point estimate alone reads as a claim."""
    text = fmt(row["speedup_vs_reference"], ".2f", "×")
    if row["speedup_ci95_low"] is not None:
        text += f" [{row['speedup_ci95_low']:.2f}, {row['speedup_ci95_high']:.2f}]"
    return text


def speed_table(study: Study, a: Analysis) -> Table:
    """Train time, throughput and the speedup against the reference."""
    probes = any(r["probe_time_s"] is not None for r in a.rows)
    headers = who_headers(study) + [
        "n",
        "Train time (s) ± std",
        *(["Placement probe (s)"] if probes else []),
        "Tokens/s",
        "Speedup [95% CI]",
        "Claim",
        "Peak memory (MB)",
    ]
    rows = []
    for cond, r in zip(study.conditions, a.rows):
        rows.append(
            who(study, cond)
            + [
                str(r["n"]),
                pm(r["train_time_s_mean"], r["train_time_s_std"], ".1f"),
                *([fmt(r["probe_time_s"], ".1f")] if probes else []),
                fmt(r["tokens_per_s_mean"], ",.0f"),
                _speedup(r),
                (r["speedup_claim"] if r["n"] else None)
                or ("reference" if r["verdict"] == "reference" else DASH),
                fmt(r["peak_memory_mb_max"], ",.0f"),
            ]
        )
    note = (
        "Train time: measured wall time, mean ± std over seeds; on a shared machine it varies "
        "from run to run. Speedup: geometric mean over seeds of (reference time / this time), "
        "with a 95% t interval on the log scale; faster only when the interval lies above 1."
        + (
            " Placement probe: the wall time an automatic strategy spent choosing its placement "
            "(scoring, and the grad probe's training), once for all its seeds, or once per seed "
            "(the mean) where it resolved a placement per seed; it is a cost of that strategy "
            "beside its training time."
            if probes
            else ""
        )
    )
    return Table("Training speed", headers, rows, note)


def pairwise_table(study: Study, a: Analysis) -> Table | None:
    """Every pair of conditions (its own Holm family)."""
    if not a.pairwise:
        return None
    rows = [
        [
            code(c.strategy),
            code(c.reference),
            str(c.n),
            signed(c.mean),
            interval(c.ci_low, c.ci_high, "+.4f"),
            p_text(c.p),
            p_text(c.p_holm),
            p_text(c.tost_p_holm),
            c.verdict + (f", {c.direction}" if c.direction else ""),
        ]
        for c in a.pairwise
    ]
    size = a.pairwise[0].family_size
    which = (
        "Pairs at the same rank (unequal budgets: placement confounded with capacity), then each "
        "placement against itself at another rank; pairs that differ in both placement and rank "
        "are left out (the equal-budget tables compare placements). "
        if study.sweep
        else ""
    )
    family = ", a family of its own: the findings do not use it"
    note = (
        f"{which}Δ = mean per-seed difference A − B in eval loss over their common seeds; "
        f"paired t. {sentence(holm_over(size, 'pair(s)', family))}. TOST Holm p: equivalence "
        f"within ±{study.margin:g} nats, Holm-adjusted over the same pairs; equivalent below "
        f"{EQUIVALENCE_ALPHA:g}."
    )
    headers = [
        "A",
        "B",
        "n",
        "Δ (A − B)",
        "95% CI",
        "p (paired)",
        "Holm p",
        "TOST Holm p",
        "Verdict",
    ]
    return Table("All pairs", headers, rows, note)


def placement_seeds_table(study: Study) -> Table | None:
    """How far apart the placements of a strategy placed per seed (``probe_per_seed``) are."""
    rows = []
    for cond in study.conditions:
        chosen = {
            r["seed"]: {
                (int(layer), role) for layer, roles in r["placement"].items() for role in roles
            }
            for r in study.runs(cond)
            if isinstance(r.get("placement"), dict)
        }
        if len({frozenset(units) for units in chosen.values()}) < 2:
            continue
        auto = study.root / store.AUTO_DIR
        scores = {
            seed: read_importance(
                auto / store.auto_stem(cond.name, cond.rank, seed) / "importance.csv"
            )[0]
            for seed in chosen
        }
        spread = placement_spread(chosen, scores)
        rows.append(
            who(study, cond)
            + [
                ", ".join(f"{n} (seed {s})" for s, n in spread.sizes.items()),
                span(spread.jaccard),
                span(spread.tau),
                str(spread.in_all),
                str(spread.in_any),
            ]
        )
    if not rows:
        return None
    headers = who_headers(study) + [
        "Modules per seed",
        "Jaccard, pairs of seeds",
        "Kendall tau-b of scores, pairs of seeds",
        "In every seed",
        "In some seed",
    ]
    note = (
        "Strategies that placed their adapters per seed (`probe_per_seed`): each seed trained its "
        "own placement, so their verdicts compare methods with this spread included. Jaccard: "
        "(layer, role) units chosen by both seeds of a pair / units chosen by either, min–max "
        "over the pairs. Kendall tau-b: of the importance scores of every unit, min–max over the "
        "pairs (a dash where the method has no scores, as random has none)."
    )
    return Table("Placements per seed", headers, rows, note)


def _holm_adjusted(size: int) -> str:
    """``p Holm-adjusted over N test(s)``, or that nothing is tested yet."""
    return f"p Holm-adjusted over {size} test(s)" if size else "p: " + holm_over(0, "")


def run_table(study: Study) -> Table:
    """Every complete final run."""
    headers = who_headers(study) + [
        "Seed",
        "Status",
        "LR",
        "Eval loss",
        "Accuracy",
        "Train time (s)",
        "Tokens/s",
        "Peak memory (MB)",
        "Error",
    ]
    rows = [
        who(study, cond)
        + [
            str(r["seed"]),
            str(r["status"]),
            fmt(num(r.get("learning_rate")), "g"),
            fmt(num(r.get("eval_loss")), ".4f"),
            fmt(num(r.get("accuracy")), ".3f"),
            fmt(num(r.get("train_time_s")), ".1f"),
            fmt(num(r.get("tokens_per_s")), ",.0f"),
            fmt(num(r.get("peak_memory_mb")), ",.0f"),
            str(r.get("error") or ""),
        ]
        for cond in study.conditions
        for r in study.runs(cond)
    ]
    return Table("Per-run results", headers, rows)


def failures(study: Study) -> list[str]:
    """Failed final runs, failed selection runs (a diverged learning rate, say) and run
    directories that could not be read."""
    out = [
        f"{code(cond.label)} seed {r['seed']}: {r.get('error') or 'no error recorded'}"
        for cond in study.conditions
        for r in study.runs(cond)
        if r["status"] != "finished"
    ]
    out += [
        f"selection {code(r.get('name', '?'))}"
        + (f" r{r['rank']}" if r.get("rank") else "")
        + f" lr {r.get('learning_rate', 0):g} seed {r.get('seed')}: "
        + (r.get("error") or "no error recorded")
        for r in study.selection
        if r.get("status") != "finished"
    ]
    return out + [f"{code(d.split(':', 1)[0])}:{d.split(':', 1)[1]}" for d in study.incomplete]


def _unique(values: list[str]) -> str:
    seen = list(dict.fromkeys(v for v in values if v))
    return "; ".join(seen) if seen else DASH


def provenance(study: Study) -> list[tuple[str, str]]:
    """Model, data, versions, hardware and the span of the runs."""
    recs = study.records
    dicts = lambda key: [r.get(key) or {} for r in recs]  # noqa: E731
    model = _unique([f"{m.get('id', '?')} ({m.get('source', '?')})" for m in dicts("model")])
    data = _unique([json.dumps(d, sort_keys=True) for d in dicts("dataset") if d])
    keys = list(dict.fromkeys(k for v in dicts("versions") for k in v))
    versions = ", ".join(
        f"{k} {_unique([str(v.get(k, '')) for v in dicts('versions')])}" for k in keys
    )
    hw = _unique(
        [
            " / ".join(str(h.get(k, "?")) for k in ("device", "name", "cpus"))
            for h in dicts("hardware")
        ]
    )

    def span(runs: list[dict], what: str) -> str:
        starts = sorted(str(r["started_at"]) for r in runs if r.get("started_at"))
        ends = sorted(str(r["finished_at"]) for r in runs if r.get("finished_at"))
        return f"{len(runs)} {what}, {starts[0] if starts else '?'} to {ends[-1] if ends else '?'}"

    # An adopted final run's training is its selection run's: counted once, in selection.
    trained = [r for r in recs if not r.get("adopted_from")] + study.selection
    total = sum(num(r.get("train_time_s")) or 0.0 for r in trained)
    spans = [span(recs, "final runs")] + (
        [span(study.selection, "selection runs")] if study.selection else []
    )
    adopted = len(recs) + len(study.selection) - len(trained)
    runs = (
        "; ".join(spans)
        + f"; {total:.0f} s of training in all"
        + (f" ({adopted} adopted final run(s) counted once, in selection)" if adopted else "")
    )
    return [
        ("Model", model),
        ("Dataset", data),
        ("Versions", versions or DASH),
        ("Hardware (device / name / cpus)", hw),
        ("Runs", runs),
    ]


def _params(r: dict) -> str:
    """A condition's trainable parameters; the range over seeds where they differ."""
    low, high = r.get("trainable_params_min"), r.get("trainable_params_max")
    if low is not None and low != high:
        return f"{low:,}–{high:,}"
    return fmt(r["trainable_params"], ",")


def tex_tables(study: Study, a: Analysis, budget: BudgetAnalysis | None) -> list[Table]:
    """The tables of ``summary.tex``: the summary with its comparison, and the equal-budget
    comparison of a rank sweep."""
    rows = []
    for cond, r in zip(study.conditions, a.rows):
        c = a.comparisons.get(cond.label)
        name = code(cond.label) + (" †" if r["pareto"] else "")
        name += " (ref.)" if r["verdict"] == "reference" else ""
        rows.append(
            [
                name,
                str(r["n"]),
                _params(r),
                pm(r["eval_loss_mean"], r["eval_loss_ci95"], ".4f"),
                fmt(r["perplexity"], ".3f"),
                DASH if r["accuracy_mean"] is None else f"{100 * r['accuracy_mean']:.1f}%",
                signed(c.mean) if c and c.verdict != "reference" else DASH,
                interval(c.ci_low, c.ci_high, "+.4f") if c else DASH,
                p_text(c.p_holm) if c else DASH,
                (r["verdict"] or DASH) + (f", {r['direction']}" if r["direction"] else ""),
                pm(r["train_time_s_mean"], r["train_time_s_std"], ".1f"),
                _speedup(r),
            ]
        )
    headers = ["Strategy", "n", "Params", "Eval loss", "PPL", "Acc.", "Δ vs ref", "95% CI",
               "Holm p", "Verdict", "Time (s)", "Speedup"]  # fmt: skip
    caption = (
        f"LoRA placement study {code(study.name)}: eval loss as mean ± 95% CI over n seeds; "
        "perplexity = exp(mean eval loss); Δ = mean per-seed difference from the reference "
        f"(paired t 95% CI); {_holm_adjusted(a.family_size)}; verdicts as in "
        "docs/STATISTICS.md; time as mean ± std over seeds; speedup = geometric mean of "
        "per-seed time ratios with its 95% CI; † Pareto-optimal (parameters vs loss)."
    )
    out = [Table("Summary", headers, rows, caption)]
    table = budget_table(budget)
    if table is not None:
        out.append(Table(table.title, table.headers, table.rows, table.note))
    return out


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

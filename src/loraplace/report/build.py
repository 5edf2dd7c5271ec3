"""The study report: tables, statistics against the reference, figures and findings.

Reads only the study directory (through :mod:`loraplace.report_data`) and writes ``report/``:
``summary.csv``, ``summary.tex`` (booktabs), ``report.md``, ``report.html`` (one self-contained
file), ``pareto.png``, ``curves.png``, ``placement.png``, and with a rank sweep ``budget.png``,
with eval checkpoints ``eval_curves.png``.

Every comparison is paired by seed against the reference strategy at the same rank, and a
sentence about it is chosen by its verdict alone (docs/STATISTICS.md): with fewer than three
paired seeds the numbers are shown and no direction is claimed; "significant" differences are
Holm-adjusted over exactly the tests the findings make.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from loraplace import store
from loraplace.report import figures
from loraplace.report import tables as report_tables
from loraplace.report.analysis import REQUIRED_COLUMNS, SUMMARY_COLUMNS, Analysis, analyse
from loraplace.report.findings import findings, recommendation, training_lines
from loraplace.report.lmeval_table import lm_eval_table
from loraplace.report.load import Study, first, load_study
from loraplace.report.placement_map import PlacementRow, plot_placement
from loraplace.report.render import Document, code, render_html, render_markdown, render_tex
from loraplace.report.sweeps import (
    BudgetAnalysis,
    CheckpointAnalysis,
    SelectionTable,
    TrainingBudget,
    budget_analysis,
    checkpoint_analysis,
    common_seeds,
    selection_table,
    training_budget,
)
from loraplace.stats.tests import mean
from loraplace.stats.verdicts import CLEAR, SUPPORTED, SUPPORTED_P
from loraplace.store import write_text_atomic

__all__ = [
    "REQUIRED_COLUMNS",
    "SUMMARY_COLUMNS",
    "Report",
    "Study",
    "build_report",
    "load_study",
    "summarize",
    "write_report",
    "write_summary_csv",
]


@dataclass
class Report:
    """Everything the report shows, computed once from a study."""

    study: Study
    analysis: Analysis
    budget: BudgetAnalysis | None
    """Budget curves and equal-budget comparisons (rank sweeps only)."""
    selection: SelectionTable | None
    """The learning-rate selection stage (learning-rate grids only)."""
    checkpoints: CheckpointAnalysis | None
    """Eval losses at checkpoints and the ranking's stability (eval.checkpoints only)."""
    training: TrainingBudget
    findings: list[str]
    """Rich-text sentences (see :mod:`loraplace.report_findings`)."""


def build_report(study: Study) -> Report:
    """Computes every table, test and finding of a loaded study.

    Args:
        study: From :func:`load_study`.

    Returns:
        The :class:`Report`.
    """
    analysis = analyse(study)
    budget, selection = budget_analysis(study), selection_table(study)
    checkpoints, training = checkpoint_analysis(study), training_budget(study)
    notes = findings(study, analysis, budget, selection, checkpoints, training)
    return Report(study, analysis, budget, selection, checkpoints, training, notes)


def summarize(study_dir: str | Path) -> list[dict[str, Any]]:
    """One summary row per condition (:data:`SUMMARY_COLUMNS`), in study order.

    Args:
        study_dir: A study directory.

    Returns:
        Rows of plain values; ``None`` marks a value that cannot be computed.

    Raises:
        LoraplaceError: When the directory is missing or is not a study directory.
    """
    return analyse(load_study(study_dir)).rows


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return ""
    return format(value, ".10g") if isinstance(value, float) else str(value)


def write_summary_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Writes summary rows as CSV (:data:`SUMMARY_COLUMNS`); missing values are empty cells.

    Args:
        rows: From :func:`summarize`.
        path: The CSV file to write (atomically).

    Returns:
        ``path``.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(SUMMARY_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(col)) for col in SUMMARY_COLUMNS])
    write_text_atomic(Path(path), buffer.getvalue())
    return Path(path)


def _curves_caption(study: Study) -> tuple[list[int] | None, str]:
    seeds = common_seeds(study)
    band = "Training loss per step: mean over finished seeds, band = min–max."
    if seeds is None:
        finished = [set(study.losses(c)) for c in study.conditions]
        finished = [s for s in finished if s]
        if finished and any(s != finished[0] for s in finished):
            band += " The conditions have no finished seed in common: curves average other batches."
        return None, band
    listed = ", ".join(map(str, seeds))
    return seeds, (
        f"Training loss per step over the seeds every condition finished ({listed}), band = "
        "min–max; other seeds are left out so that every curve sees the same batches."
    )


def _write_figures(report: Report, out: Path) -> list[tuple[str, str]]:
    study, rows = report.study, report.analysis.rows
    base = mean([r.get("base_eval_loss") for r in study.records])
    labelled = [{**r, "strategy": c.label} for c, r in zip(study.conditions, rows)]
    figures.plot_pareto(labelled, out / "pareto.png", base)
    seeds, caption = _curves_caption(study)
    curves = {
        c.label: [
            study.metrics.get((c.name, c.rank, r["seed"]), [])
            for r in study.runs(c, "finished")
            if seeds is None or r["seed"] in seeds
        ]
        for c in study.conditions
    }
    figures.plot_curves(curves, out / "curves.png")
    placements = []
    for c in study.conditions:
        placement = first(study.runs(c, "finished"), "placement") or first(
            study.runs(c), "placement"
        )
        label = f"{c.label}  ({c.spec})" if c.spec != c.name else c.label
        placements.append(PlacementRow(label, placement or {}))
    layers = max(
        [r["num_layers"] for r in study.records if isinstance(r.get("num_layers"), int)]
        + [int(k) + 1 for p in placements for k in p.placement],
        default=1,
    )
    plot_placement(placements, layers, out / "placement.png")
    figs = [
        (
            "pareto.png",
            "Trainable parameters vs eval loss (mean ± std over seeds); the red line is the "
            "non-dominated front.",
        ),
        ("curves.png", caption),
        ("placement.png", "Placement map: which roles carry an adapter in each decoder layer."),
    ]
    if report.budget is not None:
        points = {
            name: [(p.rank, p.params, p.mean, p.ci95) for p in pts if p.mean is not None]
            for name, pts in report.budget.curves.items()
        }
        differences: dict[str, list] = {}
        for r in report.budget.rows:
            if r.status == "compared" and r.mean is not None and r.t_low is not None:
                found = r.verdict in (CLEAR, SUPPORTED)
                differences.setdefault(r.strategy, []).append(
                    (r.budget, r.mean, r.t_low, r.t_high, found)
                )
        figures.plot_budget(points, out / "budget.png", base, differences, study.reference)
        figs.append(
            (
                "budget.png",
                "Budget curves: eval loss against trainable parameters (log scale), each "
                "placement through its ranks, mean ± 95% CI over seeds. The bars are unpaired "
                "intervals; every placement trains on the same batches per seed, so the paired "
                "equal-budget tests can find a difference where bars overlap: the tests decide, "
                "not the bars."
                + (
                    " Below: each placement minus the reference at the budgets compared, with "
                    "the paired 95% t interval over seeds (not corrected); a filled marker is "
                    f"a difference the Holm-corrected test found ({CLEAR} or {SUPPORTED}, "
                    f"Holm p < {SUPPORTED_P:g}), an open one any other verdict."
                    if differences
                    else ""
                ),
            )
        )
    if report.checkpoints is not None:
        figures.plot_eval_curves(report.checkpoints.means, out / "eval_curves.png")
        figs.append(("eval_curves.png", "Eval loss at each checkpoint, mean over seeds."))
    return figs


def _document(report: Report, figs: list[tuple[str, str]]) -> Document:
    study, a = report.study, report.analysis
    seeds = sorted({r["seed"] for r in study.records})
    if study.config is not None:
        seeds = list(study.config.training.seeds)
    model = study.config.model if study.config else (first(study.records, "model") or {}).get("id")
    ref = code(study.reference) if study.reference else "none"
    ranks = f" at ranks {', '.join(map(str, study.config.ranks))}" if study.sweep else ""
    strategies = list(dict.fromkeys(c.name for c in study.conditions))
    precision = (
        study.config.training.precision if study.config else first(study.records, "precision")
    )
    # Only a precision other than fp32 is stated: reports of fp32 studies stay as they were.
    computed = f", computed in {precision}" if precision not in (None, "fp32") else ""
    subtitle = (
        f"Model {code(model or '?')}, {len(strategies)} strategies{ranks}, seeds "
        f"{', '.join(map(str, seeds)) or 'none'}, "
        f"reference {ref}{computed}."
    )
    note = study.report_settings.note
    if note:
        subtitle += f" {note}"
    t = s = report_tables
    tables = [
        t.summary_table(study, a),
        t.planned_table(study, a.planned, accuracy=False),
        t.planned_table(study, a.planned_accuracy, accuracy=True),
        t.comparison_table(study, a),
        t.accuracy_table(study, a),
        lm_eval_table(study),
        t.speed_table(study, a),
        s.budget_table(report.budget),
        s.budget_pairs_table(report.budget),
        s.selection_table(study, report.selection),
        *s.checkpoint_tables(study, report.checkpoints),
        t.pairwise_table(study, a),
        t.placement_seeds_table(study),
    ]
    training = training_lines(study, a, report.training)
    return Document(
        title=f"LoRA placement study: {study.name}",
        subtitle=subtitle,
        findings=report.findings,
        tables=[x for x in tables if x is not None],
        figures=figs,
        failures=t.failures(study),
        runs=t.run_table(study),
        provenance=t.provenance(study),
        config_text=study.config_text,
        sections={"Training budget": training} if training else {},
        lead=[line] if (line := recommendation(study, a)) else [],
    )


def write_report(study_dir: str | Path) -> Path:
    """Writes the full report of a study into ``<study_dir>/report/``.

    Args:
        study_dir: A study directory (with ``study.yaml`` and/or ``runs/``).

    Returns:
        The report directory.

    Raises:
        LoraplaceError: One line, and nothing written, when the path is missing, is not a study
            directory, or its ``study.yaml`` is not a valid study config.
    """
    study = load_study(study_dir)
    report = build_report(study)
    # A real directory inside the study, never a link out of it (its files are then written
    # atomically and never through a link, each in its place).
    out = store.make_dirs(study.root / store.REPORT_DIR, within=study.root)
    write_summary_csv(report.analysis.rows, out / "summary.csv")
    figs = _write_figures(report, out)
    doc = _document(report, figs)
    tex = render_tex(report_tables.tex_tables(study, report.analysis, report.budget), study.name)
    write_text_atomic(out / "summary.tex", tex)
    write_text_atomic(out / "report.md", render_markdown(doc))
    write_text_atomic(out / "report.html", render_html(doc, out))
    return out

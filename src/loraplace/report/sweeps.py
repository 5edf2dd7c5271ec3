"""Report sections beyond one comparison per condition: budgets, selection, checkpoints.

- **Budget curves** (rank sweeps): each placement's eval loss against its trainable parameters,
  compared with the reference placement at equal budgets where the curves overlap
  (:func:`loraplace.curves.equal_budget_difference`); a budget that would need extrapolation
  is listed, never compared.
- **Learning-rate selection**: validation loss per condition and learning rate, the chosen one
  (:func:`loraplace.studies.choose_learning_rates`, the rule the study itself used).
- **Checkpointed evaluation**: how the ranking of conditions changes between consecutive eval
  checkpoints (Kendall's tau-b).
- **The training budget**: steps, batch size, tokens and epochs, beside the parameter budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from loraplace.report.analysis import all_pairs
from loraplace.report.load import Condition, Study, first, num
from loraplace.stats.curves import COMPARED, chord_excess, equal_budget_difference
from loraplace.stats.measures import RankStability, ranking_stability
from loraplace.stats.tests import ci95, family_size, holm, mean
from loraplace.stats.verdicts import MIN_SEEDS, Comparison, verdict

__all__ = [
    "BudgetAnalysis",
    "BudgetPoint",
    "BudgetRow",
    "CheckpointAnalysis",
    "OrderChange",
    "SelectionRow",
    "SelectionTable",
    "TrainingBudget",
    "budget_analysis",
    "checkpoint_analysis",
    "selection_table",
    "training_budget",
]


# --- Budget curves ------------------------------------------------------------------------------


@dataclass(frozen=True)
class BudgetPoint:
    """One rank of one placement: its cost and its eval loss over seeds."""

    rank: int
    params: int
    n: int
    mean: float | None
    ci95: float | None
    """Half-width of the 95% t interval of the mean; ``None`` for fewer than two seeds."""


@dataclass(frozen=True)
class BudgetRow:
    """A placement against the reference placement at one budget (placement minus reference)."""

    strategy: str
    reference: str
    budget: float
    status: str
    """``compared``, or ``extrapolation`` when the budget is outside either curve's range."""
    measured: str
    """Which side is measured at this budget (the other is interpolated): a name or ``both``."""
    n: int
    mean: float | None
    t_low: float | None
    t_high: float | None
    boot_low: float | None
    boot_high: float | None
    p: float | None
    p_holm: float | None
    """Holm-adjusted over every compared budget of every placement (one family)."""
    verdict: str | None
    direction: str | None


@dataclass
class BudgetAnalysis:
    """The budget curves of a rank sweep and the equal-budget comparisons."""

    curves: dict[str, list[BudgetPoint]]
    """``{strategy: points by rank}`` for the figure."""
    rows: list[BudgetRow]
    family_size: int
    skipped: list[str] = field(default_factory=list)
    """Placements that have no curve, with the reason (e.g. the same count at every rank)."""
    pairs: list[BudgetRow] = field(default_factory=list)
    """Every pair of the other placements at equal budgets (``strategy`` minus ``reference``
    there means A minus B), Holm-adjusted in a family of their own."""
    pairs_family_size: int = 0
    chord: dict[str, float] = field(default_factory=dict)
    """``{strategy: curves.chord_excess of its mean eval losses}`` for curves of three or more
    ranks: how far interpolation between neighbouring ranks may stray."""


def _curve(study: Study, name: str) -> tuple[dict[int, dict[int, float]], list[BudgetPoint]]:
    curve: dict[int, dict[int, float]] = {}
    points = []
    for cond in study.conditions:
        losses = study.losses(cond)
        params = first(study.runs(cond), "trainable_params")
        if cond.name != name or not losses or not params:
            continue
        values = list(losses.values())
        points.append(BudgetPoint(cond.rank, params, len(values), mean(values), ci95(values)))
        curve[params] = losses
    return curve, points


def budget_analysis(study: Study) -> BudgetAnalysis | None:
    """Budget curves and equal-budget comparisons with the reference placement.

    Args:
        study: A loaded study.

    Returns:
        ``None`` without a rank sweep of at least two ranks or without a reference.
    """
    ranks = {c.rank for c in study.conditions}
    if len(ranks) < 2 or None in ranks or study.reference is None:
        return None
    names = list(dict.fromkeys(c.name for c in study.conditions))
    curves, points, skipped = {}, {}, []
    for name in names:
        curve, pts = _curve(study, name)
        if len({p.params for p in pts}) != len(pts):
            skipped.append(f"{name}: the same trainable-parameter count at several ranks")
            continue
        curves[name], points[name] = curve, pts
    ref = study.reference
    others = [n for n in names if n != ref and n in curves]
    # One family over every compared budget of every placement, as the findings use them all.
    rows, size = _compared(curves, [(n, ref) for n in others] if ref in curves else [])
    # The other placements against each other: a family of its own, like the all-pairs table.
    pairs = [(a, b) for i, a in enumerate(others) for b in others[i + 1 :]]
    pair_rows, pair_size = _compared(curves, pairs)
    chord = {}
    for name, pts in points.items():
        finished = [p for p in pts if p.mean is not None]
        gap = chord_excess([p.params for p in finished], [p.mean for p in finished])
        if gap is not None:
            chord[name] = gap
    return BudgetAnalysis(points, rows, size, skipped, pair_rows, pair_size, chord)


def _compared(curves: dict, pairs: list[tuple[str, str]]) -> tuple[list[BudgetRow], int]:
    """``a`` minus ``b`` at every budget measured on either curve, for each pair; Holm over
    all compared budgets of all pairs. Returns the rows and the family size."""
    found = []
    for a, b in pairs:
        budgets = sorted(set(curves[a]) | set(curves[b]))
        found += [(a, b, d) for d in equal_budget_difference(curves[a], curves[b], budgets)]
    ps = [d.p if d.status == COMPARED and d.n >= MIN_SEEDS else None for _, _, d in found]
    rows = []
    for (a, b, d), p_holm in zip(found, holm(ps)):
        mine, theirs = d.budget in curves[a], d.budget in curves[b]
        measured = "both" if mine and theirs else (a if mine else b)
        v = verdict(d.n, d.mean, p_holm) if d.status == COMPARED else None
        rows.append(
            BudgetRow(
                a,
                b,
                d.budget,
                d.status,
                measured,
                d.n,
                d.mean,
                d.t_low,
                d.t_high,
                d.boot_low,
                d.boot_high,
                d.p,
                p_holm,
                v.label if v else None,
                v.direction if v else None,
            )
        )
    return rows, family_size(ps)


# --- Learning-rate selection ----------------------------------------------------------------------


@dataclass(frozen=True)
class SelectionRow:
    """One condition's validation losses over the learning-rate grid."""

    condition: Condition
    losses: dict[float, float | None]
    """Mean validation loss over the selection seeds; ``None`` for a learning rate whose runs
    failed (diverged); absent while its runs are not all complete."""
    chosen: float | None
    """The learning rate chosen (lowest mean validation loss); ``None`` before selection ends or
    when every learning rate failed."""
    at_edge: bool
    """Whether the chosen learning rate is the smallest or largest of the grid."""


@dataclass
class SelectionTable:
    """The learning-rate selection stage: validation split only, never the eval split."""

    grid: list[float]
    seeds: list[int]
    validation_examples: int
    runs: int
    """Complete selection runs."""
    rows: list[SelectionRow]


def selection_table(study: Study) -> SelectionTable | None:
    """The learning-rate grid's validation losses per condition and the chosen value.

    Args:
        study: A loaded study.

    Returns:
        ``None`` when the study has no learning-rate grid.
    """
    # Deferred: importing it loads torch.
    from loraplace.studies.selection import choose_learning_rates

    config = study.config
    if config is None or not config.training.learning_rates:
        return None
    grid = sorted(config.training.learning_rates)
    choices = choose_learning_rates(config, study.root)
    rows = []
    for cond in study.conditions:
        choice = choices.get(cond.key)
        if choice is not None:
            rows.append(
                SelectionRow(cond, dict(choice.validation_loss), choice.chosen, choice.at_edge)
            )
            continue
        partial: dict[float, list[float]] = {}
        for r in study.selection:
            if (r["name"], r.get("rank")) == cond.key and num(r.get("learning_rate")) is not None:
                loss = num(r.get("validation_loss")) if r["status"] == "finished" else None
                partial.setdefault(float(r["learning_rate"]), []).append(
                    loss if loss is not None else math.inf
                )
        means = {lr: sum(v) / len(v) for lr, v in partial.items()}
        rows.append(
            SelectionRow(
                cond, {lr: m if math.isfinite(m) else None for lr, m in means.items()}, None, False
            )
        )
    return SelectionTable(
        grid,
        list(config.training.selection),
        config.data.validation_examples,
        len(study.selection),
        rows,
    )


# --- Checkpointed evaluation --------------------------------------------------------------------


@dataclass
class CheckpointAnalysis:
    """Eval loss at each checkpoint per condition, and the ranking's stability."""

    steps: list[int]
    """Checkpoint steps measured for every condition."""
    means: dict[str, dict[int, float]]
    """``{condition label: {step: mean eval loss over the seeds used}}``."""
    seeds: list[int] | None
    """The seeds averaged (those every condition finished), or ``None`` for all finished."""
    pairs: list[tuple[int, int, RankStability]] = field(default_factory=list)
    """Consecutive checkpoints and the stability of the ranking between them."""
    changes: list[OrderChange] = field(default_factory=list)
    """Pairs of the all-pairs family whose order changed between consecutive checkpoints."""


@dataclass(frozen=True)
class OrderChange:
    """A pair of the all-pairs family whose order of mean eval loss changed between two
    consecutive checkpoints, with the family's paired test at each (differences ``a - b``)."""

    from_step: int
    to_step: int
    before: Comparison
    """At ``from_step``: paired t over the seeds, Holm over the family at that checkpoint."""
    after: Comparison
    """The same pair at ``to_step``, in its own family there."""


def _eval_points(records: list[dict[str, Any]]) -> dict[int, float]:
    out = {}
    for rec in records:
        loss = num(rec.get("eval_loss"))
        step = rec.get("step")
        if loss is not None and isinstance(step, int) and not isinstance(step, bool):
            out[step] = loss
    return out


def common_seeds(study: Study) -> list[int] | None:
    """The seeds every condition with a finished run finished, when they differ by condition.

    Per-step values depend mostly on the batches, which depend on the seed: while conditions
    have different finished seeds (a study in progress), averaging the common seeds keeps every
    curve on the same batches. ``None`` when every condition has the same seeds (or none are
    shared, which the caller states).
    """
    finished = [set(study.losses(c)) for c in study.conditions]
    finished = [s for s in finished if s]
    if not finished or all(s == finished[0] for s in finished):
        return None
    common = set.intersection(*finished)
    return sorted(common) if common else None


def checkpoint_analysis(study: Study) -> CheckpointAnalysis | None:
    """Eval-loss checkpoints per condition and Kendall's tau between consecutive ones.

    Args:
        study: A loaded study.

    Returns:
        ``None`` when fewer than two checkpoint steps are measured for every condition.
    """
    seeds = common_seeds(study)
    per_seed: dict[str, dict[int, dict[int, float]]] = {}  # {label: {step: {seed: loss}}}
    for cond in study.conditions:
        for seed in study.losses(cond):
            if seeds is None or seed in seeds:
                points = _eval_points(study.metrics.get((cond.name, cond.rank, seed), []))
                for step, loss in points.items():
                    per_seed.setdefault(cond.label, {}).setdefault(step, {})[seed] = loss
    means = {
        label: {s: sum(v.values()) / len(v) for s, v in sorted(by_step.items())}
        for label, by_step in per_seed.items()
    }
    if len(means) < 2:
        return None
    steps = sorted(set.intersection(*(set(m) for m in means.values())))
    if len(steps) < 2:
        return None
    at = lambda step: {label: m[step] for label, m in means.items()}  # noqa: E731
    pairs = [(a, b, ranking_stability(at(a), at(b))) for a, b in zip(steps, steps[1:])]
    changes = _order_changes(study, per_seed, means, steps)
    return CheckpointAnalysis(steps, means, seeds, pairs, changes)


def _order_changes(
    study: Study,
    per_seed: dict[str, dict[int, dict[int, float]]],
    means: dict[str, dict[int, float]],
    steps: list[int],
) -> list[OrderChange]:
    """Each family pair whose order of mean eval loss (the means the ranking uses) changes
    between consecutive checkpoints, with its paired test at both: a change the seeds do not
    resolve at either is one they cannot order."""
    losses = {
        step: {c.label: per_seed.get(c.label, {}).get(step, {}) for c in study.conditions}
        for step in steps
    }
    tested = {step: all_pairs(study, losses[step]) for step in steps}
    out = []
    for a, b in zip(steps, steps[1:]):
        for before, after in zip(tested[a], tested[b]):
            x, y = before.strategy, before.reference
            if x in means and y in means:
                gaps = [means[x][step] - means[y][step] for step in (a, b)]
                if gaps[0] * gaps[1] < 0:
                    out.append(OrderChange(a, b, before, after))
    return out


# --- The training budget ------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingBudget:
    """How much training every final run got, beside its parameter budget."""

    steps: int | None
    batch_size: int | None
    tokens_mean: float | None
    """Non-padding tokens trained on, mean over finished final runs."""
    train_examples: int | None
    """Training examples kept after tokenization (``dataset.train_tokens.examples``)."""
    epochs: float | None
    """``steps * batch_size / train_examples``: passes over the training pool."""
    dropped: dict[str, int]
    """Examples dropped for exceeding ``max_length``, per split (only non-zero counts)."""
    max_length: int | None
    selection_runs: int
    """Learning-rate selection runs (0 without a grid)."""


def training_budget(study: Study) -> TrainingBudget:
    """Steps, batch size, tokens and epochs of the final runs, and examples dropped for length.

    Args:
        study: A loaded study.

    Returns:
        The :class:`TrainingBudget`; unknown values are ``None``.
    """
    config = study.config
    done = [r for r in study.records if r["status"] == "finished"]
    steps = config.training.steps if config else first(done, "steps")
    batch = config.training.batch_size if config else None
    dataset = first(study.records + study.selection, "dataset") or {}
    split = lambda name: dataset.get(f"{name}_tokens") if isinstance(dataset, dict) else None  # noqa: E731
    train = split("train") or {}
    kept = train.get("examples") if isinstance(train, dict) else None
    kept = kept if isinstance(kept, int) and not isinstance(kept, bool) and kept > 0 else None
    epochs = steps * batch / kept if steps and batch and kept else None
    dropped = {}
    for name in ("train", "validation", "eval"):
        stats = split(name)
        count = stats.get("dropped") if isinstance(stats, dict) else None
        if isinstance(count, int) and not isinstance(count, bool) and count > 0:
            dropped[name] = count
    max_length = config.data.max_length if config else dataset.get("max_length")
    return TrainingBudget(
        steps,
        batch,
        mean([r.get("train_tokens") for r in done]),
        kept,
        epochs,
        dropped,
        max_length if isinstance(max_length, int) else None,
        len(study.selection),
    )

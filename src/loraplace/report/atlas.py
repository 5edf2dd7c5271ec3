"""The atlas: one table and one figure across studies that differ only in model and task.

Each study is one cell (model, task). Its report's comparisons against the study's reference
(all-linear, in the atlas design) give one entry per placement: the mean paired difference,
its 95% interval and its verdict, exactly as that study's own report words them. Pairs that
every study tests in its all-pairs family (an equal-budget pair, attention-only against
FFN-only) get their own columns. A study that declares planned comparisons
(``report.comparisons``) is read from them instead: its planned comparisons with the
reference are the placement columns, and its other planned comparisons (equal-budget pairs,
the difference of differences) the pair columns, with their accuracy verdicts beside them
where the study scores accuracy. Nothing is recomputed across cells: a cell's family and Holm
adjustment are its own study's.

Studies that differ in anything but model and task (and their names) are refused with the
keys that differ: the atlas compares placements across models and tasks, not recipes.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig
from loraplace.errors import LoraplaceError
from loraplace.report import figures
from loraplace.report.analysis import Analysis, analyse
from loraplace.report.load import Study, load_study
from loraplace.report.render import DASH
from loraplace.settings import NO_RUN, keys_of_scope
from loraplace.stats.verdicts import Comparison

__all__ = ["Atlas", "Cell", "build_atlas", "write_atlas"]

#: What may differ between the cells of an atlas: the study's name, its model and its task.
CELL_KEYS = ("name", "model")
CELL_DATA_KEYS = ("dataset", "format")


@dataclass(frozen=True)
class Cell:
    """One study of the atlas: its model, its task and its comparisons."""

    model: str
    task: str
    measure: str
    reference: str
    comparisons: dict[str, Comparison]
    """Placement label -> its comparison against :attr:`reference`."""
    pairs: dict[str, Comparison]
    """``"A − B"`` -> that comparison of the study's all-pairs family, or of its planned
    family (``"(A − B) − (C − D)"`` for a difference of differences)."""
    path: Path
    planned: bool = False
    """Whether the entries come from the study's planned comparisons."""
    accuracy: dict[str, Comparison] = field(default_factory=dict)
    """Planned comparisons on accuracy (differences as fractions), by the same labels as
    :attr:`comparisons` and :attr:`pairs`; empty without them."""
    accuracy_descriptive: bool = False
    """Whether the study's verdicts are on eval loss and its accuracy tests only descriptive
    (``report.verdicts_on: loss``)."""


@dataclass(frozen=True)
class Atlas:
    cells: list[Cell]
    placements: list[str]
    """Columns against the reference, in the first study's order."""
    pairs: list[str]
    """Columns of pairs every study tested."""


def _recipe(config: StudyConfig) -> dict:
    """The parts of a study config that every cell of an atlas must share: everything but the
    model, the task and what follows from them (:func:`_per_model`, :func:`_per_task`); of the
    strategies, their names."""
    raw = json.loads(json.dumps(config.to_dict(), default=str))
    for key in (*CELL_KEYS, *keys_of_scope(StudyConfig, NO_RUN)):
        raw.pop(key, None)
    data = dict(raw.get("data") or {})
    for key in (*CELL_DATA_KEYS, "eval_examples"):
        data.pop(key, None)
    raw["data"] = data
    raw["strategies"] = list(raw.get("strategies") or {})
    return raw


def _per_model(config: StudyConfig) -> dict:
    """What may differ between models but not between two cells of one model: the strategy
    strings (the upper half and the matched ranks depend on the model's depth and shapes)."""
    return json.loads(json.dumps(config.to_dict().get("strategies") or {}, default=str))


def _per_task(config: StudyConfig) -> dict:
    """What may differ between tasks but not between two cells of one task: the eval size
    (the placement preset's 128 GSM8K problems, 300 items of an accuracy task)."""
    return {"eval_examples": config.data.eval_examples}


def _check_recipes(studies: list[Study]) -> None:
    """Refuses studies whose designs differ beyond model and task, naming the keys."""
    first = studies[0]
    for other in studies[1:]:
        differ = _differences(_recipe(first.config), _recipe(other.config))
        if differ:
            raise LoraplaceError(
                f"'{other.root}' differs from '{first.root}' in more than model and task "
                f"({', '.join(differ[:8])}{', ...' if len(differ) > 8 else ''}); an atlas "
                "compares one design across models and tasks"
            )
    for kind, key, part in (
        ("model", lambda s: s.config.model, _per_model),
        ("task", lambda s: (s.config.data.dataset, s.config.data.format), _per_task),
    ):
        seen: dict = {}
        for study in studies:
            earlier = seen.setdefault(key(study), study)
            differ = _differences(part(earlier.config), part(study.config))
            if differ:
                raise LoraplaceError(
                    f"'{study.root}' and '{earlier.root}' have the same {kind} but differ in "
                    f"{', '.join(differ[:8])}; an atlas compares one design across models "
                    "and tasks"
                )


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if isinstance(x, dict) and isinstance(y, dict):
            keys += _differences(x, y, f"{prefix}{key}.")
        elif x != y:
            keys.append(prefix + key)
    return keys


def _label(c: Comparison) -> str:
    """A pair column's name: ``A − B``, or ``(A − B) − (C − D)``."""
    if len(c.terms) == 2:
        return " − ".join(f"({a} − {b})" for a, b in c.terms)
    return f"{c.strategy} − {c.reference}"


def _planned(
    comps: list[Comparison], reference: str
) -> tuple[dict[str, Comparison], dict[str, Comparison]]:
    """Planned comparisons as ``(placement columns, pair columns)``."""
    against, pairs = {}, {}
    for c in comps:
        if len(c.terms) == 1 and c.reference == reference:
            against[c.strategy] = c
        else:
            pairs[_label(c)] = c
    return against, pairs


def _planned_cell(study: Study, analysis: Analysis) -> Cell:
    against, pairs = _planned(analysis.planned, study.reference)
    accuracy_against, accuracy_pairs = _planned(analysis.planned_accuracy, study.reference)
    return Cell(
        model=str(study.config.model),
        task=str(study.config.data.dataset),
        measure="eval loss (nats)",
        reference=study.reference,
        comparisons=against,
        pairs=pairs,
        path=study.root,
        planned=True,
        accuracy={**accuracy_against, **accuracy_pairs},
        accuracy_descriptive=study.report_settings.accuracy_descriptive,
    )


def _cell(study: Study, analysis: Analysis) -> Cell:
    if analysis.planned and study.reference:
        return _planned_cell(study, analysis)
    config = study.config
    reference = study.conditions[0].label if study.conditions else ""
    compared = {label: c for label, c in analysis.comparisons.items() if c.strategy != c.reference}
    if compared:
        reference = next(iter(compared.values())).reference
    pairs = {f"{c.strategy} − {c.reference}": c for c in analysis.pairwise}
    return Cell(
        model=str(config.model),
        task=str(config.data.dataset),
        measure="eval loss (nats)",
        reference=reference,
        comparisons=compared,
        pairs=pairs,
        path=study.root,
    )


def build_atlas(study_dirs: list[str | Path]) -> Atlas:
    """Read each study directory and lay its comparisons out as one cell of the atlas.

    Raises:
        LoraplaceError: fewer than one study, a directory that is not a study, two studies of
            the same model and task, or studies whose recipes differ beyond model and task.
    """
    if not study_dirs:
        raise LoraplaceError("an atlas needs at least one study directory")
    studies = []
    for path in study_dirs:
        if not store.has_study_config(Path(path)):
            raise LoraplaceError(f"'{path}' is not a study directory (no study.yaml)")
        studies.append(load_study(path))
    _check_recipes(studies)
    cells = [_cell(study, analyse(study)) for study in studies]
    seen: dict[tuple[str, str], Path] = {}
    for cell in cells:
        where = seen.setdefault((cell.model, cell.task), cell.path)
        if where != cell.path:
            raise LoraplaceError(
                f"'{where}' and '{cell.path}' are both {cell.model} on {cell.task}; give one "
                "study per model and task"
            )
    placements = list(cells[0].comparisons)
    for cell in cells[1:]:
        placements += [p for p in cell.comparisons if p not in placements]
    pairs = [p for p in cells[0].pairs if all(p in c.pairs for c in cells[1:])]
    if not all(c.planned for c in cells):
        pairs = [p for p in pairs if _is_design_pair(p, placements)]
    return Atlas(cells, placements, pairs)


def _is_design_pair(pair: str, placements: list[str]) -> bool:
    """A pair of two non-reference placements (against the reference, the main columns say it)."""
    a, _, b = pair.partition(" − ")
    return a in placements and b in placements


def _entry(c: Comparison | None, factor: float = 1.0) -> str:
    """``Δ [low, high] verdict``; differences times ``factor`` (100: accuracy points)."""
    if c is None or c.mean is None:
        return DASH
    spec = "+.4f" if factor == 1.0 else "+.1f"
    interval = (
        f" [{factor * c.ci_low:{spec}}, {factor * c.ci_high:{spec}}]"
        if c.ci_low is not None and c.ci_high is not None and math.isfinite(c.ci_low)
        else ""
    )
    direction = f", {c.direction}" if c.direction else ""
    return f"{factor * c.mean:{spec}}{interval} {c.verdict}{direction}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def atlas_markdown(atlas: Atlas) -> str:
    """The atlas as Markdown: one table against the reference, one of the shared pairs."""
    out = [
        "# Placement atlas",
        "",
        "Each entry: mean paired difference of eval loss (placement minus the cell's reference, "
        "nats; negative is better), its 95% paired t interval, and the verdict of that study's "
        "own report (Holm within the study's family; `equivalent` only by its TOST).",
        "",
    ]
    header = ["Model", "Task", "Reference", *atlas.placements]
    rows = [
        [
            f"`{c.model}`",
            f"`{c.task}`",
            f"`{c.reference}`",
            *[_entry(c.comparisons.get(p)) for p in atlas.placements],
        ]
        for c in atlas.cells
    ]
    out.append(_table(header, rows))
    planned = [c for c in atlas.cells if c.planned]
    if planned:
        out += [
            "",
            "Read from each study's planned comparisons (`report.comparisons`): "
            + ", ".join(f"`{c.model}` on `{c.task}`" for c in planned)
            + ". Their Holm families are the planned t-tests and the planned TOSTs.",
        ]
    if atlas.pairs:
        family = (
            "planned family of each study"
            if len(planned) == len(atlas.cells)
            else "all-pairs or planned family of each study"
            if planned
            else "all-pairs family of each study"
        )
        out += ["", f"Pairs every study tested ({family}):", ""]
        rows = [
            [f"`{c.model}`", f"`{c.task}`", *[_entry(c.pairs.get(p)) for p in atlas.pairs]]
            for c in atlas.cells
        ]
        out.append(_table(["Model", "Task", *atlas.pairs], rows))
    scored = [c for c in atlas.cells if c.accuracy]
    if scored:
        columns = [
            p for p in [*atlas.placements, *atlas.pairs] if any(p in c.accuracy for c in scored)
        ]
        out += [
            "",
            "Accuracy, for the studies that score it (planned comparisons on each seed's "
            "accuracy, in points; positive is higher accuracy; placement columns against the "
            "cell's reference):",
            "",
        ]
        rows = [
            [
                f"`{c.model}`",
                f"`{c.task}`" + (" (descriptive)" if c.accuracy_descriptive else ""),
                *[_entry(c.accuracy.get(p), 100.0) for p in columns],
            ]
            for c in scored
        ]
        out.append(_table(["Model", "Task", *columns], rows))
        if any(c.accuracy_descriptive for c in scored):
            out += [
                "",
                "Descriptive: a study whose verdicts are on eval loss (`report.verdicts_on: "
                "loss`, as its analysis plan fixed) reports its tests on accuracy beside them; "
                "they decide nothing.",
            ]
    out += ["", "Studies: " + ", ".join(f"`{c.path}`" for c in atlas.cells), ""]
    return "\n".join(out)


def plot_atlas(atlas: Atlas, path: Path) -> Path:
    """A heatmap of the differences (cells by placements), each square marked with its verdict."""
    # Deferred: importing it loads matplotlib.
    import matplotlib.pyplot as plt

    values = [
        [
            c.comparisons[p].mean
            if p in c.comparisons and c.comparisons[p].mean is not None
            else math.nan
            for p in atlas.placements
        ]
        for c in atlas.cells
    ]
    finite = [abs(v) for row in values for v in row if math.isfinite(v)]
    bound = max(finite, default=1.0) or 1.0
    fig, ax = plt.subplots(
        figsize=(1.8 + 1.6 * len(atlas.placements), 1.2 + 0.6 * len(atlas.cells))
    )
    image = ax.imshow(values, cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto")
    ax.set_xticks(range(len(atlas.placements)), atlas.placements, rotation=30, ha="right")
    ax.set_yticks(range(len(atlas.cells)), [f"{c.model} / {c.task}" for c in atlas.cells])
    for i, cell in enumerate(atlas.cells):
        for j, placement in enumerate(atlas.placements):
            comparison = cell.comparisons.get(placement)
            if comparison is not None and comparison.mean is not None:
                ax.text(
                    j,
                    i,
                    f"{comparison.mean:+.3f}\n{comparison.verdict}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if abs(comparison.mean) > 0.6 * bound else "black",
                )
    fig.colorbar(image, ax=ax, label="Δ eval loss vs reference (nats)")
    ax.set_title("Placement atlas: difference from each cell's reference")
    return figures.save_figure(fig, path)


def write_atlas(study_dirs: list[str | Path], out: str | Path) -> Path:
    """Write ``atlas.md`` and ``atlas.png`` for ``study_dirs`` into ``out``; returns ``out``."""
    atlas = build_atlas(study_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    store.write_text_atomic(out / "atlas.md", atlas_markdown(atlas))
    plot_atlas(atlas, out / "atlas.png")
    return out

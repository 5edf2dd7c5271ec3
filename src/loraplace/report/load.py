"""What the report reads from a study directory: its config, conditions and run records.

Everything is read through :mod:`loraplace.store` and the study config through
:func:`loraplace.config.load_study_config` (``check_model=False``: no model is needed to write a
report). A run directory without a readable, well-typed ``result.json`` is listed as incomplete
and the report carries on without it.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from loraplace import store
from loraplace.config.study import StudyConfig, load_study_config
from loraplace.errors import LoraplaceError, short_repr
from loraplace.settings import ReportSettings
from loraplace.store import RunKey

__all__ = [
    "Condition",
    "PlacementSpread",
    "Study",
    "first",
    "load_study",
    "num",
    "placement_spread",
    "read_importance",
]


def num(value: Any) -> float | None:
    """``value`` as a finite float, or ``None`` (also for bools, strings and NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def first(records: list[dict[str, Any]], key: str) -> Any:
    """The first non-``None`` value of ``key`` among ``records``, or ``None``."""
    return next((r[key] for r in records if r.get(key) is not None), None)


Unit = tuple[int, str]
"""A (layer, role) placement unit."""


def read_importance(path: Path) -> tuple[dict[Unit, float], set[Unit]]:
    """An ``importance.csv``: its scores by (layer, role), empty for a method without scores
    (``random``), and its chosen units; both empty for a missing file."""
    text = store.read_text(path)
    scores, chosen = {}, set()
    for r in csv.DictReader(io.StringIO(text or "", newline="")):
        try:  # a damaged row is left out
            unit = (int(r["layer"]), r["role"])
            score = float(r["score"]) if r.get("score") else None
        except (KeyError, TypeError, ValueError):
            continue
        if not isinstance(unit[1], str):
            continue
        if score is not None:
            scores[unit] = score
        if r.get("chosen") == "1":
            chosen.add(unit)
    return scores, chosen


@dataclass(frozen=True)
class PlacementSpread:
    """How far apart the placements of one strategy are, over seeds (or probe seeds)."""

    sizes: dict[int, int]
    """Chosen (layer, role) units per seed."""
    jaccard: list[float]
    """Jaccard index of the chosen sets of every pair of seeds."""
    tau: list[float]
    """Kendall's tau-b of the scores of every pair of seeds that has them."""
    in_all: int
    """Units chosen at every seed."""
    in_any: int
    """Units chosen at some seed."""


def placement_spread(
    chosen: Mapping[int, set[Unit]], scores: Mapping[int, Mapping[Unit, float]] | None = None
) -> PlacementSpread:
    """Pairwise agreement of the placements ``chosen`` (by seed) and of their ``scores``."""
    # Deferred: importing it loads scipy.
    from loraplace.stats.measures import jaccard, kendall_tau

    seeds = sorted(chosen)
    pairs = list(combinations(seeds, 2))
    scores = scores or {}
    taus = []
    for a, b in pairs:
        common = sorted(set(scores.get(a, {})) & set(scores.get(b, {})))
        tau = kendall_tau([scores[a][u] for u in common], [scores[b][u] for u in common])
        if tau is not None:
            taus.append(tau)
    sets = [set(chosen[s]) for s in seeds]
    return PlacementSpread(
        sizes={s: len(chosen[s]) for s in seeds},
        jaccard=[j for a, b in pairs if (j := jaccard(chosen[a], chosen[b])) is not None],
        tau=taus,
        in_all=len(set.intersection(*sets)) if sets else 0,
        in_any=len(set.union(*sets)) if sets else 0,
    )


@dataclass(frozen=True)
class Condition:
    """One row of the report: a strategy at one rank of the sweep (rank ``None`` without one)."""

    name: str
    """The strategy's name in the study."""
    rank: int | None
    """The sweep rank, or ``None`` when the study has no ``ranks`` list."""
    spec: str
    """The strategy string."""

    @property
    def key(self) -> tuple[str, int | None]:
        """``(name, rank)``, as :attr:`loraplace.store.RunKey.condition`."""
        return (self.name, self.rank)

    @property
    def label(self) -> str:
        """``name`` or ``name r<rank>``: unique within a study (the rank suffix is numeric)."""
        return self.name if self.rank is None else f"{self.name} r{self.rank}"


# Fields the report reads structurally, with the types a well-formed record gives them; a run
# whose record has another type here is listed as unreadable rather than crashing the report.
_DICT_OR_NONE = (dict, type(None))
_RECORD_TYPES: dict[str, tuple[type, ...]] = {
    "rank": (int, type(None)),
    "learning_rate": (int, float, type(None)),
    "validation_loss": (int, float, type(None)),
    "placement": _DICT_OR_NONE,
    "ranks": _DICT_OR_NONE,
    "dataset": _DICT_OR_NONE,
    "model": _DICT_OR_NONE,
    "versions": _DICT_OR_NONE,
    "hardware": _DICT_OR_NONE,
    "correct": (list, type(None)),
    "spec": (str, type(None)),
}


def _well_typed(record: dict[str, Any]) -> bool:
    for key, types in _RECORD_TYPES.items():
        value = record.get(key)
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            return False
    placement = record.get("placement") or {}
    if not all(
        str(layer).isdigit()
        and isinstance(roles, dict)
        and all(isinstance(r, int) and not isinstance(r, bool) for r in roles.values())
        for layer, roles in placement.items()
    ):
        return False
    return all(isinstance(c, bool) for c in record.get("correct") or [])


@dataclass
class Study:
    """Everything the report reads from a study directory."""

    root: Path
    """The study directory."""
    config: StudyConfig | None
    """The validated ``study.yaml``; ``None`` for a directory that has only ``runs/``."""
    config_text: str
    """``study.yaml`` verbatim, for the report."""
    conditions: list[Condition]
    """Report rows in config order (rank-major, as the study runs them)."""
    reference: str | None
    """The reference strategy: the config's (its first strategy by default)."""
    records: list[dict[str, Any]]
    """Complete final-run records (finished and failed), as written in ``runs/*/result.json``."""
    selection: list[dict[str, Any]] = field(default_factory=list)
    """Complete learning-rate selection records (``selection/*/result.json``)."""
    metrics: dict[tuple[str, int | None, int], list[dict[str, Any]]] = field(default_factory=dict)
    """``metrics.jsonl`` of each final run, by ``(name, rank, seed)``."""
    examples: dict[tuple[str, int | None, int], dict[int, tuple[int, float]]] = field(
        default_factory=dict
    )
    """Per-example eval losses of each finished final run: ``{example: (tokens, loss_sum)}``."""
    incomplete: list[str] = field(default_factory=list)
    """Run directories without a readable, well-typed ``result.json``, with the reason."""
    notes: list[str] = field(default_factory=list)
    """What the loader had to assume (e.g. no ``study.yaml``)."""

    @property
    def name(self) -> str:
        """The study's name (the directory's name without a config)."""
        return self.config.name if self.config else self.root.name

    @property
    def report_settings(self) -> ReportSettings:
        """The config's ``report`` keys (the defaults without a config)."""
        return self.config.report if self.config else ReportSettings()

    @property
    def margin(self) -> float:
        """The declared equivalence margin in nats (``report.equivalence_margin``)."""
        return float(self.report_settings.equivalence_margin)

    @property
    def sweep(self) -> bool:
        """Whether the study sweeps ranks."""
        return any(c.rank is not None for c in self.conditions)

    @property
    def lowest_asked(self) -> bool:
        """Whether ``report.lowest`` asks for the "lowest mean eval loss" test (the default)."""
        return bool(self.report_settings.lowest)

    @property
    def planned(self) -> list:
        """``report.comparisons``: the planned comparisons (empty when none are declared)."""
        return list(self.report_settings.comparisons or [])

    def condition(self, name: str, rank: int | None) -> Condition | None:
        """The condition ``(name, rank)``, or ``None`` when the study has no such row."""
        return next((c for c in self.conditions if c.key == (name, rank)), None)

    def reference_of(self, cond: Condition) -> Condition | None:
        """The reference strategy at ``cond``'s rank: what ``cond`` is compared with."""
        return self.condition(self.reference, cond.rank) if self.reference else None

    def runs(self, cond: Condition, status: str | None = None) -> list[dict[str, Any]]:
        """Final-run records of one condition, optionally of one status, by seed."""
        recs = [
            r
            for r in self.records
            if (r["name"], r.get("rank")) == cond.key and status in (None, r["status"])
        ]
        return sorted(recs, key=lambda r: r["seed"])

    def losses(self, cond: Condition) -> dict[int, float]:
        """``{seed: eval loss}`` of the finished runs of one condition."""
        out = {}
        for r in self.runs(cond, "finished"):
            loss = num(r.get("eval_loss"))
            if loss is not None:
                out[r["seed"]] = loss
        return out

    def values(self, cond: Condition, key: str) -> dict[int, float]:
        """``{seed: value}`` of a numeric field over the finished runs of one condition."""
        out = {}
        for r in self.runs(cond, "finished"):
            value = num(r.get(key))
            if value is not None:
                out[r["seed"]] = value
        return out

    def example_arrays(self) -> dict[str, dict[int, np.ndarray]]:
        """``{condition label: {seed: (E, 2) array of (tokens, loss_sum)}}`` for the bootstrap.

        Examples pair by index: only the indices every run with per-example losses has are
        used, in index order, so all arrays cover the same examples.
        """
        found = {k: v for k, v in self.examples.items() if v}
        if not found:
            return {}
        common = sorted(set.intersection(*(set(v) for v in found.values())))
        out: dict[str, dict[int, np.ndarray]] = {}
        for cond in self.conditions:
            for seed in self.losses(cond):
                rows = found.get((cond.name, cond.rank, seed))
                if rows is not None and common:
                    out.setdefault(cond.label, {})[seed] = np.array(
                        [rows[i] for i in common], dtype=float
                    )
        return out


def _check_dir(root: Path) -> None:
    if not root.exists():
        raise LoraplaceError(f"study directory {short_repr(str(root), 200)} not found")
    if not root.is_dir():
        raise LoraplaceError(f"{short_repr(str(root), 200)} is a file, not a study directory")
    if not store.is_study_dir(root):
        raise LoraplaceError(
            f"{short_repr(str(root), 200)} is not a study directory (it has neither study.yaml "
            "nor runs/); nothing was written"
        )


def _read_config(root: Path) -> tuple[StudyConfig | None, str]:
    path = root / store.STUDY_FILE
    if not path.is_file():
        return None, ""
    config = load_study_config(path, check_model=False)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):  # validated above; read again only to show it
        text = ""
    return config, text


def _read_run(run_dir: Path, key: RunKey | None) -> tuple[dict[str, Any] | None, str | None]:
    """A run's record, or the reason it cannot be used (``None`` when the run has not started)."""
    if not run_dir.exists():
        return None, None
    record = store.read_result(run_dir)
    if record is None or not _well_typed(record):
        return None, "no readable, well-typed result.json (in progress, interrupted or corrupt)"
    if key is not None and (
        record.get("name", key.name) != key.name
        or record["seed"] != key.seed
        or record.get("rank") not in (key.rank, None)
    ):
        return None, "result.json describes another run than its directory"
    if key is not None:
        return {**record, "name": key.name, "seed": key.seed, "rank": key.rank}, None
    if run_dir.parent.name == store.RUNS_DIR and record.get("stage", "final") != "final":
        return None, "a selection record among the final runs"
    return {**record, "name": record.get("name", run_dir.name.split("--")[0])}, None


def _keys_without_config(root: Path) -> list[tuple[Path, RunKey | None]]:
    dirs = [
        p for sub in (store.SELECTION_DIR, store.RUNS_DIR) for p in sorted((root / sub).glob("*"))
    ]
    return [(p, None) for p in dirs if p.is_dir()]


def _spec(configured, name: str, rank: int | None, records: list[dict]) -> str:
    """A condition's strategy string; an automatic strategy's is the one it resolved to."""
    if isinstance(configured, str):
        return configured
    resolved = {r.get("spec") for r in records if (r["name"], r.get("rank")) == (name, rank)}
    method = (configured.get("auto") or {}).get("method", "?")
    if len(resolved) == 1:
        return f"{resolved.pop()} (auto {method})"
    return f"auto {method}" + (" (one placement per seed)" if len(resolved) > 1 else "")


def load_study(study_dir: str | Path) -> Study:
    """Reads a study directory.

    Args:
        study_dir: A directory holding ``study.yaml`` and/or ``runs/``.

    Returns:
        The :class:`Study`. With a config, exactly the runs of its run keys are read (a seed
        taken out of ``training.seeds`` stays on disk but is not reported); without one, every
        run directory is.

    Raises:
        LoraplaceError: One line, when the path is missing, is not a study directory, or its
            ``study.yaml`` is not a valid study config (invalid YAML or not a mapping).
    """
    root = Path(study_dir)
    _check_dir(root)
    config, text = _read_config(root)
    study = Study(root, config, text, [], None, [])
    if store.export_incomplete(root):
        study.notes.append(
            f"This directory is an export that was interrupted (it still has "
            f"{store.EXPORT_MARKER}): records may be missing. Export the study again to "
            "complete it."
        )
    if config is not None:
        study.reference = config.reference
        todo = [(key.run_dir(root), key) for key in config.run_keys()]
    else:
        study.notes.append(
            "No study.yaml: the conditions and the reference come from the run records."
        )
        todo = _keys_without_config(root)
    for run_dir, key in todo:
        record, problem = _read_run(run_dir, key)
        if problem is not None:
            study.incomplete.append(f"{run_dir.parent.name}/{run_dir.name}: {problem}")
        if record is None:
            continue
        if run_dir.parent.name == "selection":
            study.selection.append(record)
            continue
        study.records.append(record)
        index = (record["name"], record.get("rank"), record["seed"])
        study.metrics[index] = store.read_metrics(run_dir / store.METRICS_FILE)
        if record["status"] == "finished":
            study.examples[index] = store.read_eval_examples(run_dir / "eval_examples.jsonl")
    if config is not None:
        study.conditions = [
            Condition(name, rank, _spec(config.strategies[name], name, rank, study.records))
            for name, rank in config.conditions
        ]
    else:
        seen = {(r["name"], r.get("rank")): r.get("spec") or r["name"] for r in study.records}
        # Rank-major, like a config's conditions; names in the order their directories sort.
        order = sorted(seen, key=lambda k: (k[1] is not None, k[1] or 0))
        study.conditions = [Condition(name, rank, seen[(name, rank)]) for name, rank in order]
        study.reference = study.conditions[0].name if study.conditions else None
    return study

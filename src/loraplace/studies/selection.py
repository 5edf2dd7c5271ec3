"""What a study runs and what it has: the runs to execute, their records, and the learning
rate chosen for each condition on the validation split (never on the eval split).

Every module that reads or drives a study's runs (the runner, the executors, the estimate,
reuse, status and the report) takes these rules from here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from loraplace import store
from loraplace.config.study import StudyConfig
from loraplace.placement.plan import Plan
from loraplace.store import RunKey

__all__ = ["Job", "LrChoice", "choose_learning_rates", "collect_results", "pending"]


@dataclass(frozen=True)
class Job:
    """A run to execute: its key, its compiled plan and its learning rate."""

    key: RunKey
    plan: Plan | None
    learning_rate: float
    selected_from: list[float] | None = None
    auto: dict | None = None
    """The resolved automatic strategy behind the plan (its record), if any."""
    keep_checkpoints: bool = False
    """A selection run whose seed is also a final seed keeps its weights for adoption."""
    adopt_from: RunKey | None = None
    """A final run trained exactly as this selection run: adopt it instead of training."""


@dataclass(frozen=True)
class LrChoice:
    """The learning rate chosen for one condition, and the grid it was chosen from."""

    chosen: float | None
    """``None`` when no learning rate of the grid trained without failure."""
    validation_loss: dict[float, float | None]
    """Mean validation loss over the selection seeds at each learning rate (``None``: failed)."""

    @property
    def at_edge(self) -> bool:
        grid = sorted(self.validation_loss)
        return self.chosen is not None and len(grid) > 1 and self.chosen in (grid[0], grid[-1])


def collect_results(config: StudyConfig, out: Path, keys: list[RunKey] | None = None) -> list[dict]:
    """The complete records of ``keys`` (default: every run of the study), with ``run_dir``."""
    results = []
    for key in keys if keys is not None else config.run_keys():
        result = store.read_result(key.run_dir(out))
        if result is not None:
            results.append({**result, "run_dir": key.relpath})
    return results


def choose_learning_rates(config: StudyConfig, out: Path, lookup=None) -> dict[tuple, LrChoice]:
    """For each condition whose selection runs are all complete: the learning rate with the
    lowest mean validation loss over the selection seeds (ties: the smaller learning rate).

    A failed selection run (e.g. a diverging learning rate) counts as an infinite loss.
    ``lookup`` maps a run key to its complete record (default: the record in ``out``).
    """
    read = lookup or (lambda key: store.read_result(key.run_dir(out)))
    grid = config.training.learning_rates or []
    choices = {}
    for condition in config.conditions:
        losses: dict[float, float | None] = {}
        complete = True
        for lr in grid:
            values = []
            for seed in config.training.selection:
                result = read(RunKey(condition[0], seed, condition[1], "selection", lr))
                if result is None:
                    complete = False
                    break
                loss = result.get("validation_loss")
                ok = result["status"] == "finished" and isinstance(loss, (int, float))
                values.append(loss if ok and math.isfinite(loss) else math.inf)
            if not complete:
                break
            mean = sum(values) / len(values)
            losses[lr] = mean if math.isfinite(mean) else None
        if not complete:
            continue
        finite = [(loss, lr) for lr, loss in losses.items() if loss is not None]
        choices[condition] = LrChoice(min(finite)[1] if finite else None, losses)
    return choices


def pending(
    config: StudyConfig, out: Path, keys: list[RunKey], *, retry_failed: bool
) -> list[RunKey]:
    """Runs of ``keys`` without a complete result. An interrupted run that saved its training
    state (``resume.pt``) is kept to go on from it; the leftovers of others are removed.

    A run that failed because the disk was full is always retried: that failure says nothing
    about the run.
    """
    todo = []
    for key in keys:
        run_dir = key.run_dir(out)
        result = store.read_result(run_dir)
        if result is not None:
            disk = str(result.get("error") or "").startswith("disk_full")
            if not (result["status"] == "failed" and (retry_failed or disk)):
                continue
            store.clear_run_dir(run_dir)
        elif not store.can_resume(run_dir):
            store.clear_run_dir(run_dir)
        # else: interrupted after saving its training state; the run goes on from there
        todo.append(key)
    return todo

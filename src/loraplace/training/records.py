"""The record of one run (``result.json``): the parts the plan, the settings and the start of
a run decide, and the one line a study prints for a finished run (docs/FORMATS.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loraplace import store
from loraplace.placement.plan import Plan
from loraplace.provenance import hardware, versions
from loraplace.settings import EvalSettings, LoraSettings, TrainingSettings
from loraplace.store import RunKey
from loraplace.training.workbench import Workbench

__all__ = [
    "RunSpec",
    "plan_record",
    "run_record",
    "settings_record",
    "start_record",
    "summary_line",
]


def plan_record(plan: Plan, key: RunKey) -> dict:
    """The part of ``result.json`` that the plan and the run key alone decide."""
    return {
        **key.to_json(),
        "spec": plan.spec,
        "ranks": plan.part_ranks,
        "targets": plan.targets,
        "placement": {str(k): v for k, v in plan.placement.items()},
        "num_layers": plan.num_layers,
        "matched_to": plan.matched_to,
        "status": None,
        "error": None,
        "trainable_params": plan.trainable_params,
        "total_params": plan.total_params,
        "trainable_pct": plan.trainable_pct,
    }


def run_record(
    plan: Plan,
    key: RunKey,
    bench: Workbench,
    lora: LoraSettings,
    training: TrainingSettings,
    evaluation: EvalSettings,
) -> dict:
    """The part of ``result.json`` known before training (also the body of a failed result)."""
    return {
        **plan_record(plan, key),
        "available_roles": sorted(bench.arch.roles_present),
        "model": bench.source.describe(),
        "dataset": bench.data,
        "versions": versions(),
        "hardware": hardware(bench.device),
        "precision": bench.precision,
        "config": settings_record(lora, training, evaluation),
    }


def settings_record(lora: LoraSettings, training: TrainingSettings, evaluation: EvalSettings):
    """The ``config`` block of ``result.json``: the settings every run of a study shares."""
    return {
        "lora": vars(lora),
        "training": {
            k: v for k, v in vars(training).items() if k not in ("seeds", "selection_seeds")
        },
        "eval": vars(evaluation),
    }


@dataclass(frozen=True)
class RunSpec:
    """What a run is trained and recorded with beside its plan and key. These travel together
    from the study (or ``loraplace run``) through the executors to the run and its record."""

    lora: LoraSettings
    training: TrainingSettings
    evaluation: EvalSettings
    learning_rate: float
    """The peak learning rate of this run."""
    selected_from: list[float] | None = None
    """The grid this learning rate was chosen from (final runs of a study with a grid)."""
    base: dict | None = None
    """The base model's eval metrics (``Workbench.base_metrics``), recorded beside the run's
    own for final runs."""
    auto: dict | None = None
    """The resolved automatic strategy behind the plan (method, budget, probe cost), so the
    report can charge the strategy for its probe."""


def start_record(plan, key, bench, spec: RunSpec) -> dict:
    """A run's record as it starts: :func:`run_record`, its learning rate and where it was
    chosen from, its automatic placement, and the base model's eval metrics (final runs)."""
    record = run_record(plan, key, bench, spec.lora, spec.training, spec.evaluation)
    record.update(
        {
            "learning_rate": spec.learning_rate,
            "selected_from": spec.selected_from,
            "auto": spec.auto,
            "started_at": store.now(),
        }
    )
    base = spec.base
    if key.stage == "selection":
        record.update({"eval_loss": None, "perplexity": None, "eval_tokens": None})
    elif base is not None:
        record.update(
            {
                "base_eval_loss": base["eval_loss"],
                "base_perplexity": math.exp(base["eval_loss"]) if base["eval_loss"] else None,
                "base_accuracy": base["accuracy"],
            }
        )
    return record


def summary_line(result: dict) -> str:
    """One line about a finished or failed run, for the study's progress output."""
    key = RunKey(
        result["name"],
        result.get("seed", 0),
        result.get("rank"),
        result.get("stage") or "final",
        result.get("learning_rate") if result.get("stage") == "selection" else None,
    )
    if result["status"] != "finished":
        return f"{key.label()}: FAILED ({result['error']})"
    if result.get("stage") == "selection":
        score = f"validation loss {result['validation_loss']:.4f}"
    else:
        score = f"eval loss {result['eval_loss']:.4f}"
        if result.get("base_eval_loss") is not None:
            score += f" (base {result['base_eval_loss']:.4f})"
        if result.get("accuracy") is not None:
            score += f", accuracy {100 * result['accuracy']:.1f}%"
    return (
        f"{key.label()}: {score}, lr {result.get('learning_rate'):.0e}, "
        f"{result['train_time_s']:.1f} s, {result['tokens_per_s']:.0f} tokens/s, "
        f"peak {result['peak_memory_mb']:.0f} MB"
    )

"""Typed settings shared by ``loraplace run`` and study configs (one dataclass per concept).

Every problem is collected and raised once as a :class:`~loraplace.errors.ConfigError` naming
the field (as it is spelled in a study YAML) and the bad value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from loraplace.errors import ConfigError

__all__ = ["LoraSettings", "TrainingSettings", "EvalSettings", "check_fields"]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_fields(obj, section: str, rules: dict[str, tuple]) -> list[str]:
    """Check ``obj``'s fields against ``{name: (predicate, description)}``; return the problems."""
    problems = []
    for name, (ok, description) in rules.items():
        value = getattr(obj, name)
        if not ok(value):
            problems.append(f"{section}.{name} must be {description}, got {value!r}")
    return problems


@dataclass
class LoraSettings:
    """LoRA hyperparameters, the same for every strategy of a study."""

    rank: int = 8
    """Global LoRA rank; a strategy part's ``:rN`` or parameter matching overrides it."""
    alpha: float = 16.0
    """LoRA alpha at the global rank. Modules with another rank keep the scaling alpha/r."""
    dropout: float = 0.0
    """Dropout on the LoRA input. Off by default: a study's short runs (well under a few epochs)
    have nothing to regularise, and on a CPU the dropout masks cost ~30% of training time."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "lora",
            {
                "rank": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                "alpha": (lambda v: _is_number(v) and v > 0, "a number > 0"),
                "dropout": (lambda v: _is_number(v) and 0 <= v < 1, "a number in [0, 1)"),
            },
        )
        if problems:
            raise ConfigError(problems)


@dataclass
class TrainingSettings:
    """Optimisation settings; with the seed they fix everything a run does."""

    steps: int = 24
    """Optimizer steps per run."""
    batch_size: int = 4
    """Examples per step (dynamic padding, length-grouped batches)."""
    learning_rate: float = 2.0e-4
    """Peak learning rate (AdamW)."""
    warmup_steps: int = 2
    """Linear warm-up steps before the linear decay to zero."""
    weight_decay: float = 0.0
    """AdamW weight decay on the LoRA parameters."""
    max_grad_norm: float = 1.0
    """Gradient clipping norm."""
    seeds: list[int] | None = None
    """Seeds of a study (each strategy runs once per seed). Ignored by ``loraplace run``."""

    def __post_init__(self) -> None:
        if self.seeds is None:
            self.seeds = [0, 1]
        problems = check_fields(
            self,
            "training",
            {
                "steps": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                "learning_rate": (lambda v: _is_number(v) and v > 0, "a number > 0"),
                "warmup_steps": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                "weight_decay": (lambda v: _is_number(v) and v >= 0, "a number >= 0"),
                "max_grad_norm": (lambda v: _is_number(v) and v > 0, "a number > 0"),
            },
        )
        seeds = self.seeds
        if (
            not isinstance(seeds, list)
            or not seeds
            or not all(_is_int(s) and s >= 0 for s in seeds)
        ):
            problems.append(
                f"training.seeds must be a non-empty list of integers >= 0, got {seeds!r}"
            )
        elif len(set(seeds)) != len(seeds):
            problems.append(f"training.seeds has duplicates: {seeds!r}")
        if problems:
            raise ConfigError(problems)


@dataclass
class EvalSettings:
    """What is measured after training."""

    accuracy_examples: int = 16
    """Eval problems scored by greedy decoding for task accuracy (GSM8K); 0 skips it."""
    max_new_tokens: int = 256
    """Generation budget per problem for accuracy."""
    batch_size: int = 8
    """Sequences per forward pass when evaluating loss and accuracy."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "eval",
            {
                "accuracy_examples": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                "max_new_tokens": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                "batch_size": (lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
            },
        )
        if problems:
            raise ConfigError(problems)

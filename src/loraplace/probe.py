"""Resolving an automatic strategy: score every module, pick the best placement in a budget.

``loraplace place`` and a study's ``auto`` strategies both come here. The ``grad`` method trains
a short all-linear LoRA probe on the **training split only** and scores each module by its
adapter's mean output norm; ``snr`` scores the base weights; ``random`` draws the control. The
result is a plain strategy string (see :mod:`loraplace.autoplace`), recorded with what the
probe cost, so a study can charge an automatic strategy for its probe.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loraplace.autoplace import METHODS, Placement, place, place_random
from loraplace.errors import ConfigError, LoraplaceError, short_repr
from loraplace.progress import bar
from loraplace.settings import check_fields, is_int, is_number

__all__ = ["AutoSpec", "ProbeCost", "ModelOnly", "AutoResult", "resolve_budget", "auto_place"]


@dataclass
class AutoSpec:
    """An automatic strategy: how to score modules and how many parameters to place.

    In a study config: ``strategies: {auto-grad: {auto: {method: grad, budget: attention-only}}}``.
    """

    method: str = "grad"
    """grad (a short LoRA probe on the training split), snr (base weights) or random."""
    budget: int | str = "attn"
    """Trainable parameters to place: an integer, or a strategy (a name in the study, or a
    strategy string) whose count at the rank is the budget."""
    rank: int | None = None
    """Rank of every chosen module (default: the study's rank, or each sweep rank)."""
    seed: int = 0
    """Seed of the probe (and of the random control)."""
    probe_per_seed: bool = False
    """Resolve a placement for each training seed (with that seed), to measure the probe's own
    variance; by default one placement serves every seed."""
    probe_steps: int = 16
    """Optimizer steps of the grad probe."""
    probe_rank: int = 4
    """Rank of the grad probe's all-linear LoRA."""
    probe_learning_rate: float = 1.0e-3
    """Learning rate of the grad probe."""
    probe_batches: int = 4
    """Training batches the adapters' output norms are averaged over."""

    def __post_init__(self) -> None:
        problems = check_fields(
            self,
            "auto",
            {
                "method": (lambda v: v in METHODS, f"one of {', '.join(METHODS)}"),
                "budget": (
                    lambda v: (is_int(v) and v > 0) or (isinstance(v, str) and bool(v.strip())),
                    "a positive integer or a strategy",
                ),
                "rank": (lambda v: v is None or (is_int(v) and v >= 1), "an integer >= 1"),
                "seed": (lambda v: is_int(v) and 0 <= v < 2**32, "an integer in [0, 2^32)"),
                "probe_per_seed": (lambda v: isinstance(v, bool), "true or false"),
                "probe_steps": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
                "probe_rank": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
                "probe_learning_rate": (lambda v: is_number(v) and v > 0, "a number > 0"),
                "probe_batches": (lambda v: is_int(v) and v >= 1, "an integer >= 1"),
            },
        )
        if problems:
            raise ConfigError(problems)

    @classmethod
    def from_mapping(cls, raw, where: str) -> AutoSpec:
        """Build from a config mapping, naming unknown keys and bad values under ``where``."""
        from dataclasses import fields

        if not isinstance(raw, dict):
            raise ConfigError([f"{where}.auto must be a mapping, got {short_repr(raw)}"])
        valid = [f.name for f in fields(cls)]
        unknown = [k for k in raw if k not in valid]
        problems = [f"unknown key '{where}.auto.{k}' (valid: {', '.join(valid)})" for k in unknown]
        try:
            spec = cls(**{k: v for k, v in raw.items() if k in valid})
        except ConfigError as exc:
            problems += [p.replace("auto.", f"{where}.auto.", 1) for p in exc.problems]
        except TypeError as exc:
            problems.append(f"{where}.auto: {exc}")
        if problems:
            raise ConfigError(problems)
        return spec


@dataclass(frozen=True)
class ProbeCost:
    """What resolving a placement cost: wall time, and the probe's training steps and tokens."""

    time_s: float
    steps: int
    tokens: int


@dataclass(frozen=True)
class ModelOnly:
    """What ``snr`` and ``random`` read of a workbench: the base model (``snr`` only) and its
    architecture. ``loraplace place`` builds it for them instead of loading data they ignore."""

    model: object
    arch: object


@dataclass(frozen=True)
class AutoResult:
    """A resolved automatic strategy."""

    placement: Placement
    cost: ProbeCost
    seed: int
    scores: dict[str, float] | None = field(default=None, repr=False, compare=False)
    """Module name -> score (``None`` for the random control); not in :meth:`to_json`, as
    ``importance.csv`` holds them."""

    def to_json(self) -> dict:
        return {
            **self.placement.to_json(),
            "seed": self.seed,
            "probe": asdict(self.cost),
        }


def resolve_budget(budget: int | str, planner, rank: int, strategies: dict | None = None) -> int:
    """A budget as a parameter count: an integer as it is, a strategy as its count at ``rank``.

    Args:
        budget: an integer, a strategy name in ``strategies``, or a strategy string.
        planner: the model's :class:`~loraplace.placement.ModelPlanner`.
        rank: the rank at which a strategy's count is taken.
        strategies: the study's named strategies (plain strings).

    Raises:
        LoraplaceError: a budget that is neither.
    """
    if is_int(budget):
        return budget
    spec = (strategies or {}).get(budget, budget)
    if not isinstance(spec, str):
        raise LoraplaceError(f"budget '{budget}' names an automatic strategy; use a fixed one")
    return planner.plan({str(budget): spec}, rank)[0].trainable_params


def _grad_scores(bench, spec: AutoSpec, seed: int, batch_size: int) -> tuple[dict, int, int]:
    """Train the all-linear probe on the training split and score each module's adapter."""
    from peft import get_peft_model
    from transformers import set_seed

    from loraplace.importance import contribution_scores
    from loraplace.train import batch_order, train_adapter

    features = bench.train.features  # the probe reads the training split and nothing else
    plan = bench.planner.plan({"probe": "all"}, spec.probe_rank)[0]
    set_seed(seed)
    # alpha = 2 * rank: a scaling of 2, the usual LoRA setting, for whatever probe rank.
    model = get_peft_model(bench.fresh_model(), plan.lora_config(2.0 * spec.probe_rank, 0.0))
    with bar(spec.probe_steps, "placement probe", unit="step") as progress:
        outcome = train_adapter(
            model,
            features,
            steps=spec.probe_steps,
            batch_size=batch_size,
            learning_rate=spec.probe_learning_rate,
            warmup_steps=0,
            weight_decay=0.0,
            max_grad_norm=1.0,
            seed=seed,
            device=bench.device,
            dtype=bench.dtype,
            pad_token_id=bench.collator.pad_token_id,
            progress=progress,
        )
    if outcome.nonfinite:
        raise LoraplaceError(
            f"the grad probe diverged (non-finite loss at lr {spec.probe_learning_rate:g}); "
            "lower auto.probe_learning_rate"
        )
    lengths = [len(f["input_ids"]) for f in features]
    order = batch_order(lengths, batch_size, spec.probe_batches, seed + 1)
    batches = [bench.collator([features[i] for i in ids]) for ids in order]
    scores = contribution_scores(model, bench.arch, batches, device=bench.device, dtype=bench.dtype)
    return scores, outcome.steps, outcome.train_tokens


def auto_place(
    bench,
    spec: AutoSpec,
    *,
    rank: int,
    budget: int,
    seed: int,
    batch_size: int = 4,
    out_dir: Path | None = None,
) -> AutoResult:
    """Score the workbench's model by ``spec.method`` and place ``budget`` parameters at ``rank``.

    Args:
        bench: a :class:`~loraplace.workbench.Workbench` (its training split feeds the probe),
            or for ``snr`` and ``random`` a :class:`ModelOnly`.
        spec: the automatic strategy.
        rank: the rank of every chosen module.
        budget: the parameter budget (see :func:`resolve_budget`).
        seed: the probe's (or the random control's) seed.
        batch_size: the probe's batch size.
        out_dir: where to write ``importance.csv`` and ``importance.png`` (optional).

    Raises:
        StrategyError: a budget that cannot be met.
    """
    from loraplace.importance import snr_scores, write_importance

    start = time.perf_counter()
    steps = tokens = 0
    if spec.method == "random":
        scores = None
        placement = place_random(bench.arch, budget, seed, rank=rank)
    else:
        if spec.method == "snr":
            scores = snr_scores(bench.model, bench.arch)
        else:
            scores, steps, tokens = _grad_scores(bench, spec, seed, batch_size)
        placement = place(bench.arch, scores, budget, method=spec.method, rank=rank)
    cost = ProbeCost(round(time.perf_counter() - start, 3), steps, tokens)
    if out_dir is not None:
        write_importance(
            out_dir, bench.arch, scores, placement.chosen, title=f"{spec.method} scores"
        )
    return AutoResult(placement, cost, seed, scores)

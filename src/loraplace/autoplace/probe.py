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

from loraplace.autoplace.choose import Placement, place, place_random
from loraplace.autoplace.importance import contribution_scores, snr_scores, write_importance
from loraplace.errors import LoraplaceError
from loraplace.progress import bar
from loraplace.settings import AutoSpec, is_int
from loraplace.training.loop import batch_order, train_adapter

__all__ = ["AutoSpec", "ProbeCost", "ModelOnly", "AutoResult", "resolve_budget", "auto_place"]


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

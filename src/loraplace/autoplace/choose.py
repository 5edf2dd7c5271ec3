"""Automatic placement: the modules most worth adapting under a trainable-parameter budget.

A placement problem has one **unit** per adaptable projection module (a fused module such as
GPT-2's ``c_attn`` is one unit), each costing ``rank * (in + out)`` LoRA parameters, exactly as
:mod:`loraplace.planning` counts them. A **score** per unit says how much it is worth adapting:

- ``snr`` (:func:`snr_scores`): data-free, from the base weights; the share of a weight's
  spectral energy in singular values above the Marchenko–Pastur bulk edge, in the spirit of
  Spectrum (Hartford et al., 2024, https://arxiv.org/abs/2406.06623).
- ``grad`` (:func:`contribution_scores`, the default; :func:`gradient_sensitivity` as an
  alternative): data-driven, from an all-linear LoRA probe trained briefly on the training split;
  the mean norm of each adapter's output ``‖ΔW x‖`` (LoRA-drop, Zhou et al., 2024,
  https://arxiv.org/abs/2402.07721).
- ``random`` (:func:`random_selection`): the control, a placement drawn uniformly from all
  placements that fit the same budget window.

:func:`select` solves the 0/1 knapsack exactly (maximum total score, cost within
``[(1 - tolerance) * budget, budget]``), and :func:`render_strategy` writes the chosen modules as
a readable strategy string that compiles back to exactly them. docs/PLACEMENT.md explains what
each score measures, what it costs, and why no placement claim means anything without the random
control.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from loraplace.autoplace.importance import (
    contribution_scores,
    gradient_sensitivity,
    mp_median,
    snr_scores,
    spectral_signal_fraction,
    write_importance,
)
from loraplace.errors import StrategyError
from loraplace.placement.arch import ArchInfo
from loraplace.placement.plan import compile_plan
from loraplace.placement.render import render_strategy
from loraplace.settings import METHODS

__all__ = [
    "METHODS",
    "Unit",
    "Selection",
    "Placement",
    "units_of",
    "mp_median",
    "spectral_signal_fraction",
    "snr_scores",
    "contribution_scores",
    "gradient_sensitivity",
    "check_budget",
    "select",
    "random_selection",
    "render_strategy",
    "place",
    "place_random",
    "write_importance",
]


#: Dynamic-programming tables larger than this many cells are refused (0.8 GB as float64).
_MAX_DP_CELLS = 100_000_000


@dataclass(frozen=True)
class Unit:
    """One adaptable module: the thing a placement takes or leaves.

    Attributes:
        module: full module name in the model (``model.layers.3.self_attn.q_proj``).
        layer: its 0-based decoder layer.
        roles: the roles it carries (several for a fused module, which is adapted whole).
        in_features: input width.
        out_features: output width.
    """

    module: str
    layer: int
    roles: tuple[str, ...]
    in_features: int
    out_features: int

    def cost(self, rank: int) -> int:
        """LoRA parameters of this module at ``rank``: ``rank * (in + out)`` (A and B)."""
        return rank * (self.in_features + self.out_features)


def units_of(arch: ArchInfo) -> tuple[Unit, ...]:
    """The placement units of a classified model, in model order (one per projection module)."""
    return tuple(
        Unit(p.name, p.layer, p.roles, p.in_features, p.out_features) for p in arch.projections
    )


# --- selection: exact knapsack, and the uniform random control -----------------------------------


@dataclass(frozen=True)
class Selection:
    """The modules a selection takes, with their ranks.

    Attributes:
        chosen: full module name -> LoRA rank, in model order.
        cost: LoRA parameters of the chosen modules (``Σ rank * (in + out)``).
        budget: the parameter budget it was selected for.
        score: the total score maximised (``None`` for the random control).
    """

    chosen: dict[str, int]
    cost: int
    budget: int
    score: float | None = None


def _options(units, rank: int, ranks: Iterable[int] | None) -> tuple[list, int]:
    """Per unit, its ``(rank, cost)`` options; and the gcd of every cost (the DP's cost step)."""
    choices = sorted(set(ranks)) if ranks is not None else [rank]
    if not choices or any(not isinstance(r, int) or r < 1 for r in choices):
        raise StrategyError(f"ranks must be positive integers, got {list(choices)}")
    options = [[(r, unit.cost(r)) for r in choices] for unit in units]
    step = math.gcd(*(cost for opts in options for _, cost in opts))
    return options, step


def _window(units, options, step: int, budget: int, tolerance: float) -> tuple[int, int]:
    """The DP's cost window ``[low, high]`` in steps, after the checks that can fail early."""
    if not units:
        raise StrategyError("nothing to place: no adaptable module")
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise StrategyError(f"the parameter budget must be a positive integer, got {budget!r}")
    if not 0 <= tolerance < 1:
        raise StrategyError(f"the budget tolerance must be in [0, 1), got {tolerance}")
    cheapest = min(cost for opts in options for _, cost in opts)
    if budget < cheapest:
        unit, (r, _) = min(zip(units, (o[0] for o in options)), key=lambda u: u[0].cost(u[1][0]))
        raise StrategyError(
            f"budget {budget:,} is below the cheapest module: {unit.module} costs {cheapest:,} "
            f"at rank {r}; raise the budget or lower the rank"
        )
    low_params = budget - math.floor(budget * tolerance)
    everything = sum(max(cost for _, cost in opts) for opts in options)
    if everything < low_params:
        raise StrategyError(
            f"budget {budget:,} cannot be reached: adapting every module at the highest rank "
            f"costs {everything:,}; lower the budget below {everything:,} or raise the rank"
        )
    if everything <= budget:
        # The methods' scores are never negative, so ranking would take every module: no choice.
        top_rank = max(r for opts in options for r, _ in opts)
        raise StrategyError(
            f"budget {budget:,} leaves nothing to choose: every module at rank {top_rank} costs "
            f"{everything:,}, which fits, so a placement by score is all of them; lower the "
            f"budget below {everything:,} or raise the rank"
        )
    high = budget // step
    if (high + 1) * len(units) > _MAX_DP_CELLS:
        raise StrategyError(f"budget {budget:,} is too large to place exactly on this model")
    return -(-low_params // step), high


def _no_fit(budget: int, tolerance: float, reachable: np.ndarray, step: int) -> StrategyError:
    below = int(np.flatnonzero(reachable).max()) * step
    return StrategyError(
        f"no placement costs between {budget - math.floor(budget * tolerance):,} and {budget:,} "
        f"parameters (within {tolerance:.0%} of the budget); the closest below costs {below:,}"
    )


def select(
    units: Iterable[Unit],
    scores: Mapping[str, float],
    budget: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Selection:
    """The modules of maximal total score whose cost lies within ``tolerance`` below ``budget``.

    An exact 0/1 knapsack by dynamic programming over costs divided by their greatest common
    divisor (one rank gives few distinct costs, so the table is small: 1,591 costs x 210 units for
    SmolLM2-135M at any budget up to ``all``). With several ``ranks`` each unit takes at most
    one of them, and a unit at rank ``r`` is worth ``score * sqrt(r / min(ranks))``: more rank is
    worth more, with diminishing returns, so a higher rank goes only where a score pays for it.
    Ties are broken deterministically: the fuller budget first, then, unit by unit in model
    order from the last, not taking a unit (or taking its lower rank) over taking it.

    Args:
        units: the candidate modules (:func:`units_of`).
        scores: full module name -> score (higher = more worth adapting); every unit needs one.
        budget: the most LoRA parameters the selection may cost.
        rank: the LoRA rank when ``ranks`` is not given.
        ranks: several ranks to choose from per unit, e.g. ``(4, 8, 16)``.
        tolerance: the selection costs at least ``(1 - tolerance) * budget``.

    Returns:
        The selection; ``cost <= budget`` and ``cost >= budget - floor(tolerance * budget)``.

    Raises:
        StrategyError: a unit without a finite score, or a budget that cannot be met (below the
            cheapest module, above everything, or no combination inside the window).
    """
    units = list(units)
    missing = [u.module for u in units if not math.isfinite(scores.get(u.module, math.nan))]
    if missing:
        raise StrategyError(
            f"{len(missing)} module(s) have no finite score (e.g. {missing[0]}); the scores must "
            f"cover every module the placement may choose"
        )
    options, step = _options(units, rank, ranks)
    low, high = _window(units, options, step, budget, tolerance)
    base = min(r for r, _ in options[0])
    best = np.full(high + 1, -np.inf)
    best[0] = 0.0
    taken = np.zeros((len(units), high + 1), dtype=np.uint8)  # 0 = left out, k = option k
    for i, (unit, opts) in enumerate(zip(units, options)):
        new = best.copy()
        for k, (r, cost) in enumerate(opts, start=1):
            w = cost // step
            if w > high:
                continue
            candidate = best[: high + 1 - w] + scores[unit.module] * math.sqrt(r / base)
            better = candidate > new[w:]  # strict: an equal score keeps the earlier choice
            new[w:][better] = candidate[better]
            taken[i, w:][better] = k
        best = new
    window = best[low:]
    if not np.isfinite(window).any():
        raise _no_fit(budget, tolerance, np.isfinite(best), step)
    c = low + int(np.flatnonzero(window == window[np.isfinite(window)].max()).max())
    total, chosen = float(best[c]), {}
    for i in range(len(units) - 1, -1, -1):
        k = int(taken[i, c])
        if k:
            r, cost = options[i][k - 1]
            chosen[units[i].module] = r
            c -= cost // step
    assert c == 0, "knapsack backtrack did not end at cost 0"
    return _selection(units, chosen, budget, total)


def _selection(units, chosen: dict[str, int], budget: int, score: float | None) -> Selection:
    ordered = {u.module: chosen[u.module] for u in units if u.module in chosen}
    cost = sum(u.cost(chosen[u.module]) for u in units if u.module in chosen)
    return Selection(ordered, cost, budget, score)


def random_selection(
    units: Iterable[Unit],
    budget: int,
    seed: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Selection:
    """The random control: a placement drawn uniformly from all placements in the budget window.

    "Uniform" means every selection (each unit left out or given one of ``ranks``) whose cost
    lies in ``[budget - floor(tolerance * budget), budget]`` is equally likely: the window
    :func:`select` chooses from, with no information about which module matters. With unequal
    costs a module's chance of being taken then depends on its cost (below half of everything,
    cheaper modules are taken more often); that is what "no preference among placements at this
    budget" implies, and it is why a per-module coin flip would not do. Sampled exactly: count
    the selections per cost by dynamic programming, then draw backwards unit by unit.

    Args:
        units: the candidate modules (:func:`units_of`).
        budget: the most LoRA parameters the selection may cost.
        seed: the random seed; the same seed gives the same selection.
        rank: the LoRA rank when ``ranks`` is not given.
        ranks: several ranks to choose from per unit.
        tolerance: the selection costs at least ``(1 - tolerance) * budget``.

    Returns:
        The selection, with ``score`` None.

    Raises:
        StrategyError: a budget that cannot be met (as for :func:`select`).
    """
    units = list(units)
    options, step = _options(units, rank, ranks)
    low, high = _window(units, options, step, budget, tolerance)
    # counts[i][c]: number of selections of the first i units costing c steps, each row scaled
    # by its maximum (only ratios within a row are used, and the raw counts overflow floats).
    counts = np.zeros((len(units) + 1, high + 1))
    counts[0, 0] = 1.0
    for i, opts in enumerate(options):
        row = counts[i].copy()
        for _, cost in opts:
            w = cost // step
            if w <= high:
                row[w:] += counts[i, : high + 1 - w]
        counts[i + 1] = row / row.max()
    window = counts[-1, low:]
    if not window.any():
        raise _no_fit(budget, tolerance, counts[-1] > 0, step)
    rng = np.random.default_rng(seed)
    c = low + int(rng.choice(len(window), p=window / window.sum()))
    chosen = {}
    for i in range(len(units) - 1, -1, -1):
        steps = [0] + [cost // step for _, cost in options[i]]
        weights = np.array([counts[i, c - w] if c - w >= 0 else 0.0 for w in steps])
        k = int(rng.choice(len(steps), p=weights / weights.sum()))
        if k:
            chosen[units[i].module] = options[i][k - 1][0]
            c -= steps[k]
    return _selection(units, chosen, budget, None)


# --- the whole placement ----------------------------------------------------------------------


@dataclass(frozen=True)
class Placement:
    """An automatic placement, ready to be used as a strategy.

    Attributes:
        method: how the modules were scored (one of :data:`METHODS`, or the caller's name).
        strategy: the strategy string (compile it at ``rank``).
        rank: the global rank the strategy is written for.
        chosen: full module name -> rank, in model order.
        trainable_params: LoRA parameters of the placement (``compile_plan``'s count).
        budget: the parameter budget.
        score: the total score maximised (``None`` for the random control).
    """

    method: str
    strategy: str
    rank: int
    chosen: dict[str, int]
    trainable_params: int
    budget: int
    score: float | None

    @property
    def fill(self) -> float:
        """``trainable_params / budget``, in ``[1 - tolerance, 1]``."""
        return self.trainable_params / self.budget

    def to_json(self) -> dict:
        return {**self.__dict__, "fill": self.fill}


def _placement(method: str, selection: Selection, arch: ArchInfo, rank: int) -> Placement:
    text = render_strategy(selection.chosen, arch, rank)
    trainable = compile_plan(text, arch, rank, base_params=0).trainable_params
    assert trainable == selection.cost, "the rendered strategy's count differs from the knapsack's"
    return Placement(
        method, text, rank, selection.chosen, trainable, selection.budget, selection.score
    )


def check_budget(
    arch: ArchInfo,
    budget: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> None:
    """Fail early, before any scoring, on a budget that no placement of ``arch`` can meet.

    The same checks that :func:`place` and :func:`place_random` make first, so a probe is never
    trained for a budget they would refuse (below the cheapest module, above everything, or one
    that every module fits, leaving nothing to choose).

    Raises:
        StrategyError: the budget, with the numbers.
    """
    units = units_of(arch)
    options, step = _options(units, rank, ranks)
    _window(units, options, step, budget, tolerance)


def place(
    arch: ArchInfo,
    scores: Mapping[str, float],
    budget: int,
    *,
    method: str,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Placement:
    """The best-scoring placement of ``arch`` within ``budget`` LoRA parameters.

    Args:
        arch: the classified model.
        scores: full module name -> score for every module (e.g. :func:`snr_scores`).
        budget: the most LoRA parameters to place.
        method: the scores' name, recorded in the result.
        rank: the global rank (and the only one unless ``ranks`` is given).
        ranks: several ranks a module may get, e.g. ``(4, 8, 16)``.
        tolerance: the placement costs at least ``(1 - tolerance) * budget``.

    Returns:
        The placement; its strategy compiles to exactly its chosen modules.

    Raises:
        StrategyError: missing scores or a budget that cannot be met (see :func:`select`).
    """
    selection = select(units_of(arch), scores, budget, rank=rank, ranks=ranks, tolerance=tolerance)
    return _placement(method, selection, arch, rank)


def place_random(
    arch: ArchInfo,
    budget: int,
    seed: int,
    *,
    rank: int = 8,
    ranks: Iterable[int] | None = None,
    tolerance: float = 0.05,
) -> Placement:
    """The random control at ``budget``: see :func:`random_selection` (arguments as there)."""
    selection = random_selection(
        units_of(arch), budget, seed, rank=rank, ranks=ranks, tolerance=tolerance
    )
    return _placement("random", selection, arch, rank)

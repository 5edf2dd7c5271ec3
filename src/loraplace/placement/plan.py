"""Compile a strategy for a model: the exact modules to adapt, their ranks, and the count.

A :class:`Plan` is everything a run needs to build its PEFT adapter and everything a report
needs to say what was trained. Parameter counts are computed from module shapes
(``r * (in + out)`` per adapted module, as PEFT builds LoRA A and B), and the tests check them
against PEFT's own count on wrapped models of every supported architecture.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from loraplace.errors import StrategyError
from loraplace.placement.arch import ArchInfo
from loraplace.placement.grammar import (
    ATTN_ROLES,
    GROUPS,
    MLP_ROLES,
    ROLES,
    Part,
    Strategy,
    parse_strategy,
)
from loraplace.settings import MATCH_TOLERANCE

__all__ = [
    "Plan",
    "compile_plan",
    "match_rank",
    "match_within",
    "plan_strategies",
]


@dataclass(frozen=True)
class Plan:
    """A strategy compiled for one model.

    Attributes:
        name: the strategy's name in a study (its spec when it has none).
        spec: the canonical strategy string.
        strategy: the parsed strategy.
        rank: the global rank (the most common module rank).
        module_ranks: full module name -> LoRA rank, for every adapted module, in model order.
        part_ranks: canonical part string -> rank.
        placement: layer index -> {role: rank} for every adapted role.
        trainable_params: LoRA parameters added (what PEFT reports as trainable).
        base_params: parameters of the base model.
        num_layers: decoder layers in the model (for placement maps).
        fan_in_fan_out: whether targets are transformers ``Conv1D`` (GPT-2 family).
        matched_to: the parameter budget this plan's rank was matched to, if any.
    """

    name: str
    spec: str
    strategy: Strategy
    rank: int
    module_ranks: dict[str, int]
    part_ranks: dict[str, int]
    placement: dict[int, dict[str, int]]
    trainable_params: int
    base_params: int
    num_layers: int
    fan_in_fan_out: bool = False
    matched_to: int | None = field(default=None)

    @property
    def targets(self) -> list[str]:
        return list(self.module_ranks)

    @property
    def total_params(self) -> int:
        """Base plus adapter parameters, as PEFT's ``get_nb_trainable_parameters`` counts them."""
        return self.base_params + self.trainable_params

    @property
    def trainable_pct(self) -> float:
        return 100.0 * self.trainable_params / self.total_params

    @property
    def lowest_layer(self) -> int:
        return min(self.placement)

    def lora_config(self, alpha: float, dropout: float, scaling: str = "standard"):
        """The PEFT ``LoraConfig`` for this plan.

        Modules are named explicitly (no suffix matching), so exactly the planned modules are
        adapted. Modules whose rank differs from :attr:`rank` get ``rank_pattern`` entries.
        Every module's scaling is ``alpha / r`` (``standard``) or ``alpha / sqrt(r)``
        (``rslora``, PEFT's ``use_rslora``) with ``r`` its own rank, so a larger rank changes
        the scaling as the convention says (see docs/CONCEPTS.md, "LoRA scaling").
        """
        from peft import LoraConfig

        if scaling not in ("standard", "rslora"):
            raise ValueError(f"unknown LoRA scaling {scaling!r}; valid: standard, rslora")
        rank_pattern = {name: r for name, r in self.module_ranks.items() if r != self.rank}
        return LoraConfig(
            r=self.rank,
            lora_alpha=alpha,
            lora_dropout=dropout,
            target_modules=self.targets,
            rank_pattern=rank_pattern,
            use_rslora=scaling == "rslora",
            fan_in_fan_out=self.fan_in_fan_out,
            bias="none",
            task_type="CAUSAL_LM",
        )

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "spec": self.spec,
            "trainable_params": self.trainable_params,
            # The denominator of trainable_pct: base plus adapter, as PEFT counts them.
            "total_params": self.total_params,
            "trainable_pct": self.trainable_pct,
            "ranks": self.part_ranks,
            "targets": self.targets,
        }


def _placement_of(strategy: Strategy, arch: ArchInfo, rank: int) -> dict[int, dict[str, int]]:
    placement: dict[int, dict[str, int]] = {}
    for part in strategy.parts:
        part_rank = part.rank if part.rank is not None else rank
        for layer in part.layers.resolve(arch.num_layers):
            roles = placement.setdefault(layer, {})
            for role in part.roles:
                if role in roles and roles[role] != part_rank:
                    raise StrategyError(
                        f"strategy '{strategy}' gives role '{role}' of layer {layer} two ranks "
                        f"({roles[role]} and {part_rank}); make the parts disjoint"
                    )
                roles[role] = part_rank
    return placement


def _check_ranks_fit(strategy: Strategy, arch: ArchInfo, module_ranks: dict[str, int]) -> None:
    """Refuse a rank above a target's smaller dimension.

    ``B @ A`` has rank at most ``min(in, out)``, so a larger ``r`` adds parameters (and skews
    every count and parameter match) without adding capacity (Hu et al., 2021, "LoRA",
    https://arxiv.org/abs/2106.09685, section 4).
    """
    over = [
        p
        for p in arch.projections
        if p.name in module_ranks and module_ranks[p.name] > min(p.in_features, p.out_features)
    ]
    if not over:
        return
    worst = min(over, key=lambda p: min(p.in_features, p.out_features))
    largest = min(worst.in_features, worst.out_features)
    raise StrategyError(
        f"rank {module_ranks[worst.name]} in strategy '{strategy}' is larger than module "
        f"'{worst.name}' ({worst.in_features}->{worst.out_features}) can use: LoRA with "
        f"r > min(in, out) adds parameters without adding capacity; the largest valid rank "
        f"for it is {largest}"
    )


# C901: one pass over the modules, with each rank rule in place.
def compile_plan(  # noqa: C901
    strategy: Strategy | str,
    arch: ArchInfo,
    rank: int,
    *,
    base_params: int,
    name: str | None = None,
) -> Plan:
    """Compile ``strategy`` for the model described by ``arch``.

    Args:
        strategy: a parsed strategy or a strategy string.
        arch: the classified model.
        rank: the global LoRA rank, used by parts without ``:rN``.
        base_params: parameter count of the base model.
        name: the strategy's name (defaults to its canonical spec).

    Raises:
        StrategyError: layers out of range, a role that exists only fused with roles the
            strategy does not adapt, a strategy that matches no module, or a rank larger than
            a target module's smaller dimension.
    """
    if isinstance(strategy, str):
        strategy = parse_strategy(strategy)
    if not isinstance(rank, int) or rank < 1:
        raise StrategyError(f"rank must be a positive integer, got {rank!r}")
    wanted = _placement_of(strategy, arch, rank)
    present = arch.roles_present
    for part in strategy.parts:
        for group in part.groups:
            absent = [r for r in GROUPS[group] if r not in present]
            # Broad groups adapt what exists (GPT-2's mlp has no gate); a named role must exist.
            if absent and group not in ("all", "attn", "mlp"):
                raise StrategyError(
                    f"group '{group}' in '{part}' asks for role {','.join(absent)}, which "
                    f"{arch.model_type} does not have; its roles: "
                    f"{','.join(r for r in ROLES if r in present)}"
                )
    module_ranks: dict[str, int] = {}
    placement: dict[int, dict[str, int]] = {}
    for proj in arch.projections:
        roles = wanted.get(proj.layer, {})
        chosen = [role for role in proj.roles if role in roles]
        if not chosen:
            continue
        if len(chosen) < len(proj.roles):
            missing = [r for r in proj.roles if r not in roles]
            suggestion = (
                "qkv' or 'attn"
                if set(proj.roles) <= {"q", "k", "v"}
                else ",".join(proj.roles) + "' or 'mlp"
            )
            raise StrategyError(
                f"role '{','.join(chosen)}' cannot be adapted alone in {arch.model_type}: it is "
                f"fused with {','.join(missing)} in '{proj.local_name}' "
                f"({proj.in_features}->{proj.out_features}); adapt '{suggestion}' instead"
            )
        ranks = {roles[role] for role in chosen}
        if len(ranks) > 1:
            raise StrategyError(
                f"fused module '{proj.local_name}' ({','.join(proj.roles)}) gets different ranks "
                f"{sorted(ranks)} from strategy '{strategy}'; give its roles one rank"
            )
        module_ranks[proj.name] = ranks.pop()
        placement.setdefault(proj.layer, {}).update(
            {role: module_ranks[proj.name] for role in chosen}
        )
    if not module_ranks:
        asked = sorted({role for roles in wanted.values() for role in roles})
        raise StrategyError(
            f"strategy '{strategy}' matches no module in {arch.model_type}: it asks for "
            f"{','.join(asked)} but the model has roles "
            f"{','.join(r for r in ROLES if r in present)}"
        )
    _check_ranks_fit(strategy, arch, module_ranks)
    trainable = sum(
        r * (p.in_features + p.out_features)
        for p in arch.projections
        if (r := module_ranks.get(p.name))
    )
    global_rank = Counter(module_ranks.values()).most_common(1)[0][0]
    part_ranks = {
        str(Part(part.groups, part.layers, None)): part.rank or rank for part in strategy.parts
    }
    fan_in_fan_out = any(p.kind == "Conv1D" for p in arch.projections if p.name in module_ranks)
    return Plan(
        name=name or str(strategy),
        spec=str(strategy),
        strategy=strategy,
        rank=global_rank,
        module_ranks=module_ranks,
        part_ranks=part_ranks,
        placement=dict(sorted(placement.items())),
        trainable_params=trainable,
        base_params=base_params,
        num_layers=arch.num_layers,
        fan_in_fan_out=fan_in_fan_out,
    )


def match_rank(
    strategy: Strategy,
    arch: ArchInfo,
    budget: int,
    *,
    base_params: int,
    name: str | None = None,
) -> Plan:
    """The plan of ``strategy`` with the single rank whose trainable count is closest to ``budget``.

    Trainable parameters grow linearly with a uniform rank, so the best integer rank is one of
    the two around ``budget / (params at rank 1)``; ties go to the smaller rank.

    Raises:
        StrategyError: when the strategy sets its own part ranks (matching chooses them), or
            the budget needs a rank above a target module's smaller dimension.
    """
    if strategy.has_part_ranks:
        raise StrategyError(
            f"strategy '{strategy}' sets its own ranks with ':rN', but parameter matching chooses "
            f"ranks itself; remove the ':rN' suffixes or drop match_params"
        )
    if budget < 1:
        raise StrategyError(f"parameter budget must be a positive integer, got {budget}")
    unit_plan = compile_plan(strategy, arch, 1, base_params=base_params, name=name)
    unit = unit_plan.trainable_params
    low = max(1, budget // unit)
    best = min((low, low + 1), key=lambda r: (abs(r * unit - budget), r))
    narrowest = min(
        (p for p in arch.projections if p.name in unit_plan.module_ranks),
        key=lambda p: min(p.in_features, p.out_features),
    )
    largest = min(narrowest.in_features, narrowest.out_features)
    if best > largest:
        raise StrategyError(
            f"matching {budget:,} trainable parameters needs rank {best} for strategy "
            f"'{name or strategy}', but its module '{narrowest.name}' "
            f"({narrowest.in_features}->{narrowest.out_features}) allows at most rank {largest} "
            f"({largest * unit:,} parameters); lower the budget"
        )
    plan = compile_plan(strategy, arch, best, base_params=base_params, name=name)
    return Plan(**{**plan.__dict__, "matched_to": budget})


def _by_family(strategy: Strategy, attn_rank: int, mlp_rank: int) -> Strategy | None:
    """``strategy`` with its attention roles at ``attn_rank`` and its MLP roles at
    ``mlp_rank`` (each part split in two, its layers kept); ``None`` when it adapts only one
    of the two families, so that per-family ranks add nothing."""
    parts = []
    for part in strategy.parts:
        for family, rank in ((ATTN_ROLES, attn_rank), (MLP_ROLES, mlp_rank)):
            roles = [r for r in family if r in part.roles]
            if roles:
                groups = (
                    ("attn",)
                    if roles == list(ATTN_ROLES)
                    else ("mlp",)
                    if roles == list(MLP_ROLES)
                    else tuple(roles)
                )
                parts.append(Part(groups, part.layers, rank))
    families = {frozenset(p.roles) <= frozenset(ATTN_ROLES) for p in parts}
    return Strategy(tuple(parts)) if len(families) == 2 else None


def match_within(
    strategy: Strategy,
    arch: ArchInfo,
    budget: int,
    *,
    base_params: int,
    name: str | None = None,
    tolerance: float = MATCH_TOLERANCE,
) -> Plan:
    """The plan of ``strategy`` whose count comes closest to ``budget``: one rank for every
    module (:func:`match_rank`) when that lands within ``tolerance`` (relative), otherwise one
    rank for its attention modules and one for its MLP modules, the pair closest to the budget
    (ties: the two ranks closest to each other, then the smaller count).

    Where attention and MLP modules differ much in size, no single rank of all-linear may land
    near an attention-only budget; two ranks usually do.

    A strategy that adapts one family only keeps its global rank, however far it lands.

    Raises:
        StrategyError: as :func:`match_rank`.
    """
    plan = match_rank(strategy, arch, budget, base_params=base_params, name=name)
    if abs(plan.trainable_params - budget) <= tolerance * budget:
        return plan
    best = None
    for attn_rank in range(1, 4 * plan.rank + 1):
        for mlp_rank in range(1, 4 * plan.rank + 1):
            split = _by_family(strategy, attn_rank, mlp_rank)
            if split is None:
                break
            try:
                candidate = compile_plan(split, arch, 1, base_params=base_params, name=name)
            except StrategyError:
                continue  # a rank above a module's smaller dimension
            gap = abs(candidate.trainable_params - budget)
            key = (gap, abs(attn_rank - mlp_rank), candidate.trainable_params)
            if best is None or key < best[0]:
                best = (key, candidate)
    if best is None or best[0][0] >= abs(plan.trainable_params - budget):
        return plan  # one family only, or no pair closer: the global rank, gap shown
    return Plan(**{**best[1].__dict__, "matched_to": budget})


def plan_strategies(
    named: dict[str, str],
    arch: ArchInfo,
    rank: int,
    *,
    base_params: int,
    match_params: int | str | None = None,
    tolerance: float | None = None,
) -> list[Plan]:
    """Compile several named strategies, optionally parameter-matched.

    Args:
        named: strategy name -> strategy string.
        arch: the classified model.
        rank: global rank.
        base_params: base model parameter count.
        match_params: ``None``; an integer budget; or the name (or spec) of a strategy whose
            count at ``rank`` is the budget.
        tolerance: with ``match_params``, how close (relative) one global rank must come
            before ranks per attention/MLP part are tried (:func:`match_within`); ``None``
            matches one global rank only, as a study's ``match_params`` does.
    """
    parsed = {name: parse_strategy(spec) for name, spec in named.items()}
    if match_params is None:
        return [
            compile_plan(s, arch, rank, base_params=base_params, name=n) for n, s in parsed.items()
        ]
    if isinstance(match_params, bool):
        raise StrategyError(
            f"match_params must be an integer or a strategy name, got {match_params!r}"
        )
    if isinstance(match_params, int):
        budget = match_params
    elif isinstance(match_params, str) and match_params.isdigit():
        budget = int(match_params)
    else:
        reference = parsed.get(match_params)
        if reference is None:
            try:
                reference = parse_strategy(match_params)
            except StrategyError:
                raise StrategyError(
                    f"match_params '{match_params}' is neither an integer nor a strategy; "
                    f"strategies: {', '.join(parsed)}"
                ) from None
        budget = compile_plan(reference, arch, rank, base_params=base_params).trainable_params
    if tolerance is not None:
        return [
            match_within(s, arch, budget, base_params=base_params, name=n, tolerance=tolerance)
            for n, s in parsed.items()
        ]
    return [match_rank(s, arch, budget, base_params=base_params, name=n) for n, s in parsed.items()]

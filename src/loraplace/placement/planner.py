"""Model-level planning without weights: resolve, build on ``meta``, classify, compile.

This is what ``loraplace inspect`` and ``loraplace plan`` run; a study uses the same
:class:`ModelPlanner` so that a plan and a run can never disagree about targets or counts.
"""

from __future__ import annotations

from dataclasses import dataclass

from loraplace.models import ModelSource, build_meta_model, count_params, load_config, resolve_model
from loraplace.placement.arch import ArchInfo, classify
from loraplace.placement.grammar import ROLES
from loraplace.placement.plan import Plan, plan_strategies

__all__ = ["ModelPlanner", "format_layers", "plan_table", "inspect_table"]


@dataclass
class ModelPlanner:
    """A model's architecture, ready for planning.

    Attributes:
        source: the resolved model reference.
        arch: the classifier's result.
        base_params: parameters of the base model (tied weights once).
    """

    source: ModelSource
    arch: ArchInfo
    base_params: int

    @classmethod
    def for_model(cls, name: str, *, trust_remote_code: bool = False) -> ModelPlanner:
        """Plan for a model from its config alone (built on the meta device, no weights)."""
        source = resolve_model(name, trust_remote_code=trust_remote_code)
        meta = build_meta_model(load_config(source), trust_remote_code=trust_remote_code)
        return cls(source, classify(meta), count_params(meta))

    def plan(
        self,
        strategies: dict[str, str],
        rank: int,
        match_params: int | str | None = None,
        tolerance: float | None = None,
    ) -> list[Plan]:
        return plan_strategies(
            strategies,
            self.arch,
            rank,
            base_params=self.base_params,
            match_params=match_params,
            tolerance=tolerance,
        )


def format_layers(layers) -> str:
    """Compact layer list: ``[0,1,2,3,8]`` -> ``0-3,8``."""
    layers = sorted(layers)
    if not layers:
        return "-"
    pieces, start, prev = [], layers[0], layers[0]
    for layer in layers[1:] + [None]:
        if layer is not None and layer == prev + 1:
            prev = layer
            continue
        pieces.append(str(start) if start == prev else f"{start}-{prev}")
        if layer is not None:
            start = prev = layer
    return ",".join(pieces)


def _table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(
            str(c).rjust(w) if i in right else str(c).ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        )

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def plan_table(planner: ModelPlanner, plans: list[Plan]) -> str:
    """A readable table of plans: ranks, adapted modules per role, layers, counts."""
    arch = planner.arch
    roles = [r for r in ROLES if r in arch.roles_present]
    headers = ["strategy", "spec", "ranks"] + roles + ["layers", "trainable", "% total"]
    rows = []
    for plan in plans:
        per_role = [sum(role in roles_at for roles_at in plan.placement.values()) for role in roles]
        ranks = ",".join(
            sorted({f"r{r}" for r in plan.module_ranks.values()}, key=lambda s: int(s[1:]))
        )
        rows.append(
            [plan.name, plan.spec, ranks]
            + [str(n) for n in per_role]
            + [
                format_layers(plan.placement),
                f"{plan.trainable_params:,}",
                f"{plan.trainable_pct:.3f}%",
            ]
        )
    header = (
        f"model: {planner.source.id} ({arch.model_type}, {arch.num_layers} layers, "
        f"{planner.base_params:,} parameters); role columns count adapted layers"
    )
    text = header + "\n" + _table(headers, rows, right=set(range(3, len(headers))))
    matched = [p for p in plans if p.matched_to]
    if matched:
        budget = matched[0].matched_to
        notes = [
            f"  {p.name}: {_ranks(p)} -> {p.trainable_params:,} "
            f"({100 * (p.trainable_params - budget) / budget:+.2f}%)"
            for p in matched
        ]
        text += f"\nparameter-matched to {budget:,} trainable parameters:\n" + "\n".join(notes)
    return text


def _ranks(plan: Plan) -> str:
    """``r3``, or the part ranks of a plan matched per part (``attn:r5+mlp:r2``)."""
    return plan.spec if plan.strategy.has_part_ranks else f"r{plan.rank}"


def inspect_table(planner: ModelPlanner) -> str:
    """Roles found in each layer, with module names and shapes, then totals."""
    arch = planner.arch
    lines = [
        f"model: {planner.source.id} ({arch.model_type}), decoder layers at '{arch.layers_path}' "
        f"({arch.num_layers} layers, hidden size {arch.hidden_size}), "
        f"{planner.base_params:,} parameters"
    ]
    signatures: dict[tuple, list[int]] = {}
    for layer in range(arch.num_layers):
        sig = tuple(
            (p.local_name, p.roles, p.in_features, p.out_features, p.kind)
            for p in arch.in_layer(layer)
        )
        signatures.setdefault(sig, []).append(layer)
    for sig, layers in signatures.items():
        lines.append(f"layers {format_layers(layers)}:")
        rows = [
            [",".join(roles), name, f"{n_in} -> {n_out}", kind, "fused" if len(roles) > 1 else ""]
            for name, roles, n_in, n_out, kind in sig
        ]
        lines.append(
            _indent(_table(["roles", "module", "in -> out", "type", ""], rows, right=set()))
        )
    per_role = {r: sum(1 for p in arch.projections if r in p.roles) for r in ROLES}
    lora_r1 = sum(p.in_features + p.out_features for p in arch.projections)
    lines.append(
        "totals: "
        + ", ".join(f"{r}={n}" for r, n in per_role.items() if n)
        + f"; {len(arch.projections)} adaptable modules; LoRA on all of them costs "
        f"{lora_r1:,} parameters per unit of rank"
    )
    return "\n".join(lines)


def _indent(text: str) -> str:
    return "\n".join("  " + line for line in text.splitlines())

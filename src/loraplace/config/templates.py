"""Values of a study config that depend on its model or dataset, resolved once when it loads.

A preset written for any model (``loraplace study --preset placement --model M --dataset D``)
cannot spell out ``all@last:15`` or ``all:r3``: both depend on the model. It writes markers
instead, and :func:`resolve_strategies` and :func:`resolve_eval_examples` turn them into plain
values before the config is validated. The config saved as ``OUT/study.yaml`` holds only the
resolved strings and numbers, so a resumed study is the same study whatever the preset says
later. The markers (docs/STUDIES.md, "Presets for any model"):

- a strategy ``{upper_half: SPEC}``: SPEC on the upper half of the decoder layers,
  ``SPEC@last:K`` with K half the model's layer count (rounded down, at least 1);
- a strategy ``{match: NAME}`` (or ``{match: NAME, strategy: SPEC}``; SPEC defaults to ``all``):
  SPEC at the ranks whose trainable count comes closest to strategy NAME's at ``lora.rank``,
  chosen as ``loraplace plan --match-params NAME`` chooses them
  (:func:`loraplace.placement.plan.match_within`): one rank for every module where that lands
  within :data:`~loraplace.settings.MATCH_TOLERANCE`, else one rank for the attention modules
  and one for the MLP modules. Saved with its ranks written out: ``all:r3``, ``attn:r5+mlp:r2``;
- ``data.eval_examples: {accuracy: N, loss: M}``: N eval problems for a built-in task scored by
  accuracy, M for any other dataset (measured by eval loss).

A preset may also carry ``pilot:``, the changes ``loraplace study --pilot`` makes
(:func:`apply_pilot`); it is never part of the study itself.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace

from loraplace.errors import LoraplaceError, one_line, short_repr
from loraplace.placement.grammar import LayerSelector, Strategy, parse_strategy
from loraplace.settings import MATCH_TOLERANCE, is_int

__all__ = [
    "EVAL_SIZE_KEYS",
    "PILOT_KEY",
    "Resolved",
    "apply_pilot",
    "describe_strategies",
    "is_marker",
    "pilot_problems",
    "resolve_eval_examples",
    "resolve_strategies",
]

#: The top-level key of a preset's pilot: what ``--pilot`` changes.
PILOT_KEY = "pilot"
#: The keys of ``data.eval_examples`` given per kind of dataset.
EVAL_SIZE_KEYS = ("accuracy", "loss")
_MARKERS = {"match": ("match", "strategy"), "upper_half": ("upper_half",)}


@dataclass(frozen=True)
class Resolved:
    """A strategy resolved from a marker, for the printout and the tests.

    Attributes:
        marker: the marker as written (``{match: attention-only}``).
        spec: the strategy string it became.
        matched_to: the strategy whose count it was matched to, if a ``match`` marker.
    """

    marker: dict
    spec: str
    matched_to: str | None = None


def is_marker(value) -> bool:
    """Whether a strategy entry is a marker resolved here (not ``{auto: ...}``)."""
    return isinstance(value, dict) and any(key in value for key in _MARKERS)


def _marker_problem(name: str, marker: dict) -> str | None:
    kind = next(key for key in _MARKERS if key in marker)
    extra = sorted(set(map(str, marker)) - set(_MARKERS[kind]))
    if extra:
        return (
            f"strategies.{name}: {{{kind}: ...}} takes the keys {', '.join(_MARKERS[kind])}; "
            f"got {', '.join(extra)}"
        )
    for key in _MARKERS[kind]:
        if key in marker and not (isinstance(marker[key], str) and marker[key].strip()):
            return f"strategies.{name}.{key} must be a strategy, got {short_repr(marker[key])}"
    return None


def _upper_half(spec: str, num_layers: int) -> str:
    strategy = parse_strategy(spec)
    if any(part.layers.kind != "all" for part in strategy.parts):
        raise LoraplaceError(
            f"upper_half takes a strategy without layers ('all', 'attn', 'mlp'), got '{spec}'"
        )
    last = LayerSelector("last", (max(1, num_layers // 2),))
    return str(Strategy(tuple(replace(part, layers=last) for part in strategy.parts)))


def _explicit(plan) -> str:
    """A plan's strategy with every part's rank written out, so it compiles alone to it."""
    strategy = plan.strategy
    if not strategy.has_part_ranks:
        strategy = Strategy(tuple(replace(part, rank=plan.rank) for part in strategy.parts))
    return str(strategy)


def resolve_strategies(
    raw, planner, rank: int, problems: list[str], *, sweep: bool = False
) -> tuple[object, dict[str, Resolved]]:
    """The ``strategies`` mapping with every marker replaced by its strategy string.

    Args:
        raw: the config's ``strategies`` as written (returned as it is when not a mapping).
        planner: the model's :class:`~loraplace.placement.planner.ModelPlanner`.
        rank: ``lora.rank``, the rank a ``match`` target is counted at.
        problems: every problem found is appended here.
        sweep: whether the config sweeps ranks (a ``match`` marker fixes its own ranks, so the
            two are refused together).

    Returns:
        The resolved mapping (markers with problems left out) and ``{name: Resolved}``.
    """
    if not isinstance(raw, dict) or not any(is_marker(v) for v in raw.values()):
        return raw, {}
    out, resolved = dict(raw), {}
    for kind in ("upper_half", "match"):  # an upper half may be a match's target
        for name, marker in raw.items():
            if not (is_marker(marker) and kind in marker):
                continue
            where = str(name)
            problem = _marker_problem(where, marker)
            if problem is None and kind == "match" and sweep:
                problem = f"strategies.{where}: {{match: ...}} fixes its own ranks; drop 'ranks'"
            if problem is None:
                try:
                    resolved[name] = _resolve(name, marker, out, planner, rank)
                except LoraplaceError as exc:
                    problem = f"strategies.{where}: {exc}"
            if problem is not None:
                problems.append(problem)
                out.pop(name)
                continue
            out[name] = resolved[name].spec
    return out, resolved


def _resolve(name, marker: dict, named: dict, planner, rank: int) -> Resolved:
    if "upper_half" in marker:
        return Resolved(dict(marker), _upper_half(marker["upper_half"], planner.arch.num_layers))
    target = marker["match"]
    if not isinstance(named.get(target), str):
        fixed = [n for n, s in named.items() if isinstance(s, str)]
        raise LoraplaceError(
            f"match names {short_repr(target)}, which is not a fixed strategy of this study "
            f"(fixed strategies: {', '.join(map(str, fixed)) or 'none'})"
        )
    budget = planner.plan({target: named[target]}, rank)[0].trainable_params
    spec = marker.get("strategy", "all")
    plan = planner.plan({name: spec}, rank, budget, tolerance=MATCH_TOLERANCE)[0]
    explicit = _explicit(plan)
    assert planner.plan({name: explicit}, rank)[0].trainable_params == plan.trainable_params
    return Resolved(dict(marker), explicit, target)


def resolve_eval_examples(data, problems: list[str]):
    """``data`` with ``eval_examples: {accuracy: N, loss: M}`` resolved for its dataset.

    Returns:
        ``data`` itself when there is nothing to resolve, else a copy.
    """
    if not isinstance(data, dict) or not isinstance(data.get("eval_examples"), dict):
        return data
    sizes = data["eval_examples"]
    if set(map(str, sizes)) != set(EVAL_SIZE_KEYS):
        problems.append(
            "data.eval_examples given per kind of dataset needs exactly the keys "
            f"{', '.join(EVAL_SIZE_KEYS)}, got {short_repr(sizes)}"
        )
        return {k: v for k, v in data.items() if k != "eval_examples"}
    bad = [k for k in EVAL_SIZE_KEYS if not (is_int(sizes[k]) and sizes[k] >= 1)]
    if bad:  # both are checked, whichever kind this dataset is
        problems.append(
            f"data.eval_examples.{bad[0]} must be a positive integer, got "
            f"{short_repr(sizes[bad[0]])}"
        )
        return {k: v for k, v in data.items() if k != "eval_examples"}
    # Deferred: importing it loads torch.
    from loraplace.data.tasks import BUILTIN_TASKS

    kind = "accuracy" if data.get("dataset") in BUILTIN_TASKS else "loss"
    return {**data, "eval_examples": sizes[kind]}


def pilot_problems(raw: dict, valid: list[str]) -> list[str]:
    """What is wrong with a config's ``pilot:`` mapping (its keys: those of a study)."""
    pilot = raw.get(PILOT_KEY)
    if pilot is None:
        return []
    if not isinstance(pilot, dict):
        return [f"'{PILOT_KEY}' must be a mapping of study keys, got {short_repr(pilot)}"]
    problems = []
    for key in pilot:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            problems.append(f"{PILOT_KEY}: unknown key '{one_line(str(key), 40)}'{hint}")
    return problems


def apply_pilot(raw: dict, where: str) -> dict:
    """The config's pilot: ``raw`` with its ``pilot:`` changes made, section by section (a
    ``null`` removes a key, so that its default applies).

    Args:
        raw: the config as read.
        where: the config's name for an error message (``the preset 'default'``).

    Raises:
        LoraplaceError: the config has no ``pilot:``.
    """
    pilot = raw.get(PILOT_KEY)
    if not isinstance(pilot, dict):
        raise LoraplaceError(
            f"--pilot: {where} has no '{PILOT_KEY}:' mapping saying what a pilot changes "
            "(the placement preset has one)"
        )
    out = {k: v for k, v in raw.items() if k != PILOT_KEY}
    for key, value in pilot.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            merged = {**out[key], **value}
            out[key] = {k: v for k, v in merged.items() if v is not None}
        elif value is None:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def describe_strategies(config) -> str:
    """The strategies of a loaded study with their trainable counts, and for each matched one
    its error against the count it was matched to, in %."""
    plans = config.plans or {}
    first = {}  # each strategy's plan at the study's rank, or its first sweep rank
    for (name, _), plan in plans.items():
        first.setdefault(name, plan)
    rows = []
    for name, spec in config.strategies.items():
        plan = first.get(name)
        if plan is None:
            continue  # automatic: placed when the study starts
        note = ""
        resolved = config.resolved.get(name)
        if resolved is not None and resolved.matched_to is not None:
            budget = first[resolved.matched_to].trainable_params
            error = 100 * (plan.trainable_params - budget) / budget
            note = f"matched to {resolved.matched_to} ({budget:,}): {error:+.2f}%"
        elif resolved is not None:
            note = f"upper half of {plan.num_layers} layers"
        rows.append((str(name), str(spec), f"{plan.trainable_params:,}", note))
    widths = [max((len(row[i]) for row in rows), default=0) for i in range(3)]
    layers = next(iter(plans.values())).num_layers if plans else 0
    lines = [f"strategies for {config.model} ({layers} layers), trainable parameters:"]
    for name, spec, count, note in rows:
        line = f"  {name:<{widths[0]}}  {spec:<{widths[1]}}  {count:>{widths[2]}}  {note}"
        lines.append(line.rstrip())
    return "\n".join(lines)

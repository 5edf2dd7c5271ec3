"""The strategy grammar: short strings that say where LoRA adapters go.

```
strategy := part ('+' part)*
part     := groups ['@' layers] [':r' INT]
groups   := group (',' group)*
group    := all | attn | mlp | ffn | q | k | v | o | qkv | gate | up | down
layers   := all | first:K | last:K | every:N[:OFFSET] | items     (0-based)
items    := item (',' item)*
item     := I | A-B                                                 (A-B inclusive)
```

A strategy parses to a small immutable :class:`Strategy`; ``str()`` of it gives the canonical
string back. Layer selectors are resolved against a model's layer count only when a strategy is
compiled for that model (:meth:`LayerSelector.resolve`).

Layer items: a lone range ``A-B`` and a plain list ``I,J,...`` keep the spelling they always had
(``0-1`` stays ``0-1``, ``5,1,3`` stays ``5,1,3``), so strategies written before ranges and
indices could mix keep their canonical strings. A list that mixes them (``10-12,0-3,7``) is
canonicalised to its sorted, distinct layers with every run of 3 or more consecutive layers
written as a range (``0-3,7,10-12``); :meth:`LayerSelector.from_layers` gives that spelling for
any set of layers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from loraplace.errors import StrategyError, short_repr

__all__ = [
    "ROLES",
    "ATTN_ROLES",
    "MLP_ROLES",
    "GROUPS",
    "PRESETS",
    "LayerSelector",
    "Part",
    "Strategy",
    "parse_strategy",
]

ATTN_ROLES: tuple[str, ...] = ("q", "k", "v", "o")
MLP_ROLES: tuple[str, ...] = ("gate", "up", "down")
ROLES: tuple[str, ...] = ATTN_ROLES + MLP_ROLES

#: Each group names a set of roles; ``ffn`` is an alias of ``mlp``.
GROUPS: dict[str, tuple[str, ...]] = {
    "all": ROLES,
    "attn": ATTN_ROLES,
    "mlp": MLP_ROLES,
    "ffn": MLP_ROLES,
    "qkv": ("q", "k", "v"),
    **{role: (role,) for role in ROLES},
}
_GROUP_ALIASES = {"ffn": "mlp"}

#: Named presets, usable wherever a strategy string is.
PRESETS: dict[str, str] = {"baseline": "all", "attention-only": "attn", "ffn-only": "mlp"}

#: Longest strategy string accepted (error messages echo it, so it is bounded).
MAX_STRATEGY_LENGTH = 2000
_LAYER_FORMS = "all, first:K, last:K, every:N[:OFFSET], A-B, I,J,... or a mix such as 0-3,7"
_RANK_SUFFIX = re.compile(r":r(\w*)$")
_LAYER_HINT = f"; valid layer forms: {_LAYER_FORMS}"
_RANK_HINT = "; write the rank as ':rN' with N >= 1, e.g. 'mlp:r16'"


@dataclass(frozen=True)
class LayerSelector:
    """Which decoder layers a part applies to.

    Attributes:
        kind: one of ``all``, ``first``, ``last``, ``every``, ``range``, ``list``, ``set``.
        args: the integers of the selector (``K``; ``N, OFFSET``; ``A, B``; ``I, J, ...`` as
            written for ``list``; for ``set``, a list that mixes ranges and indices, the first
            and last layer of each maximal run of consecutive layers, in order:
            ``0-3,7`` is ``(0, 3, 7, 7)``).
    """

    kind: str = "all"
    args: tuple[int, ...] = ()

    @classmethod
    def from_layers(cls, layers: Iterable[int]) -> LayerSelector:
        """The canonical selector of exactly ``layers`` (an explicit list, never ``all``).

        One run of 3 or more consecutive layers is a ``range`` (``4-9``); layers without such a
        run are a sorted ``list`` (``0,1,5``); anything else is a ``set`` written with ranges for
        its runs of 3 or more (``0-3,7,10-12``). Parsing ``str()`` of the result gives it back.

        Args:
            layers: non-negative layer indices, in any order, repeats allowed.

        Raises:
            StrategyError: when ``layers`` is empty or holds a negative index.
        """
        indices = sorted(set(layers))
        if not indices or indices[0] < 0:
            raise StrategyError(f"a layer list needs non-negative layers, got {indices}")
        return cls._from_runs(_merge_runs((i, i) for i in indices))

    @classmethod
    def _from_runs(cls, runs: list[tuple[int, int]]) -> LayerSelector:
        """The canonical selector of maximal, sorted runs ``(first, last)`` (see from_layers)."""
        if len(runs) == 1 and runs[0][1] - runs[0][0] >= 2:
            return cls("range", runs[0])
        if all(b - a < 2 for a, b in runs):
            return cls("list", tuple(i for a, b in runs for i in range(a, b + 1)))
        return cls("set", tuple(i for run in runs for i in run))

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        if self.kind in ("first", "last"):
            return f"{self.kind}:{self.args[0]}"
        if self.kind == "every":
            n, offset = self.args
            return f"every:{n}" if offset == 0 else f"every:{n}:{offset}"
        if self.kind == "range":
            return f"{self.args[0]}-{self.args[1]}"
        if self.kind == "set":
            return ",".join(
                f"{a}-{b}" if b - a >= 2 else ",".join(str(i) for i in range(a, b + 1))
                for a, b in zip(self.args[::2], self.args[1::2])
            )
        return ",".join(str(i) for i in self.args)

    def resolve(self, num_layers: int) -> tuple[int, ...]:
        """The sorted layer indices this selector picks in a model with ``num_layers`` layers.

        Raises:
            StrategyError: when the selector reaches outside ``0 .. num_layers-1``.
        """
        valid = f"the model has {num_layers} layers (0-{num_layers - 1})"
        if self.kind == "all":
            return tuple(range(num_layers))
        if self.kind in ("first", "last"):
            k = self.args[0]
            if k > num_layers:
                raise StrategyError(f"layer selector '{self}' asks for {k} layers but {valid}")
            return (
                tuple(range(k))
                if self.kind == "first"
                else tuple(range(num_layers - k, num_layers))
            )
        if self.kind == "every":
            n, offset = self.args
            if offset >= num_layers:
                raise StrategyError(f"layer selector '{self}' starts at layer {offset} but {valid}")
            return tuple(range(offset, num_layers, n))
        bad = [i for i in self.args if i >= num_layers]
        if bad:
            if self.kind == "set":  # name a layer the user wrote or spanned: the first too high
                bad = [
                    max(a, num_layers)
                    for a, b in zip(self.args[::2], self.args[1::2])
                    if b >= num_layers
                ]
            raise StrategyError(f"layer {bad[0]} in '{self}' is out of range: {valid}")
        if self.kind == "range":
            return tuple(range(self.args[0], self.args[1] + 1))
        if self.kind == "set":
            pairs = zip(self.args[::2], self.args[1::2])
            return tuple(i for a, b in pairs for i in range(a, b + 1))
        return tuple(sorted(set(self.args)))


@dataclass(frozen=True)
class Part:
    """One ``groups[@layers][:rN]`` piece of a strategy.

    Attributes:
        groups: group names as written (``ffn`` canonicalised to ``mlp``), in order.
        layers: the layer selector (``all`` when none was written).
        rank: the part's own LoRA rank, or ``None`` to use the run's global rank.
    """

    groups: tuple[str, ...]
    layers: LayerSelector = LayerSelector()
    rank: int | None = None

    @property
    def roles(self) -> frozenset[str]:
        """The roles this part adapts."""
        return frozenset(role for group in self.groups for role in GROUPS[group])

    def __str__(self) -> str:
        text = ",".join(self.groups)
        if self.layers.kind != "all":
            text += f"@{self.layers}"
        if self.rank is not None:
            text += f":r{self.rank}"
        return text


@dataclass(frozen=True)
class Strategy:
    """A parsed placement strategy: one or more parts joined with ``+``."""

    parts: tuple[Part, ...]

    def __str__(self) -> str:
        return "+".join(str(part) for part in self.parts)

    @property
    def has_part_ranks(self) -> bool:
        """Whether any part sets its own rank with ``:rN``."""
        return any(part.rank is not None for part in self.parts)


def _merge_runs(intervals: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Merge inclusive intervals into sorted maximal runs of consecutive layers (never expanded,
    so ``0-99999999,5`` costs nothing before it is found out of range)."""
    runs: list[tuple[int, int]] = []
    for a, b in sorted(intervals):
        if runs and a <= runs[-1][1] + 1:
            runs[-1] = (runs[-1][0], max(b, runs[-1][1]))
        else:
            runs.append((a, b))
    return runs


def _int(text: str, what: str, piece: str, minimum: int = 0, hint: str = "") -> int:
    kind = "a positive integer" if minimum >= 1 else "a non-negative integer"
    if not re.fullmatch(r"[0-9]{1,9}", text):
        raise StrategyError(f"'{piece}': {what} must be {kind} below 10^9, got '{text}'{hint}")
    value = int(text)
    if value < minimum:
        raise StrategyError(f"'{piece}': {what} must be at least {minimum}, got {value}{hint}")
    return value


def _parse_layers(text: str) -> LayerSelector:  # noqa: C901 (one branch per layer-selector form of the grammar)
    if text == "":
        raise StrategyError(f"empty layer selector after '@'; valid forms: {_LAYER_FORMS}")
    if text == "all":
        return LayerSelector()
    head, _, rest = text.partition(":")
    if head in ("first", "last"):
        if not rest:
            raise StrategyError(f"layer selector '{text}' needs a count, e.g. '{head}:8'")
        return LayerSelector(
            head, (_int(rest, "the layer count", text, minimum=1, hint=_LAYER_HINT),)
        )
    if head == "every":
        n_text, _, offset_text = rest.partition(":")
        if not n_text:
            raise StrategyError(
                f"layer selector '{text}' needs a step, e.g. 'every:2' or 'every:2:1'"
            )
        n = _int(n_text, "the step", text, minimum=1, hint=_LAYER_HINT)
        offset = _int(offset_text, "the offset", text, hint=_LAYER_HINT) if offset_text else 0
        return LayerSelector("every", (n, offset))
    if rest:
        raise StrategyError(f"unknown layer selector '{text}'; valid forms: {_LAYER_FORMS}")
    items = text.split(",")
    if not all(re.fullmatch(r"[0-9]{1,9}(-[0-9]{1,9})?", item) for item in items):
        raise StrategyError(f"unknown layer selector '{text}'; valid forms: {_LAYER_FORMS}")
    if not any("-" in item for item in items):
        return LayerSelector("list", tuple(int(item) for item in items))
    intervals: list[tuple[int, int]] = []
    for item in items:
        a_text, _, b_text = item.partition("-")
        a, b = int(a_text), int(b_text or a_text)
        if a > b:
            raise StrategyError(
                f"layer range '{item}' is empty: its start is after its end (write {b}-{a})"
            )
        intervals.append((a, b))
    if len(items) == 1:  # a lone A-B keeps its spelling, even 2-2 or 0-1
        return LayerSelector("range", intervals[0])
    return LayerSelector._from_runs(_merge_runs(intervals))


def _parse_part(text: str) -> Part:
    rank = None
    match = _RANK_SUFFIX.search(text)
    if match:
        rank = _int(match.group(1), "the rank", text, minimum=1, hint=_RANK_HINT)
        text = text[: match.start()]
    groups_text, at, layers_text = text.partition("@")
    layers = _parse_layers(layers_text) if at else LayerSelector()
    groups: list[str] = []
    for group in groups_text.split(","):
        if group not in GROUPS:
            hint = (
                " (did you mean a layer selector after '@'?)"
                if ":" in group or group.isdigit()
                else ""
            )
            shown = group if group else "(empty)"
            raise StrategyError(
                f"unknown group '{shown}' in '{text}'; valid groups: {', '.join(GROUPS)}{hint}"
            )
        group = _GROUP_ALIASES.get(group, group)
        if group not in groups:
            groups.append(group)
    return Part(tuple(groups), layers, rank)


def parse_strategy(text: str) -> Strategy:
    """Parse a strategy string (or preset name) into a :class:`Strategy`.

    Args:
        text: e.g. ``"all"``, ``"q,v"``, ``"attn@0-11+mlp@12-23"``, ``"mlp@every:2:r16"``,
            or a preset such as ``"attention-only"``.

    Returns:
        The parsed strategy; ``str()`` of it is the canonical spelling.

    Raises:
        StrategyError: naming the bad piece and the valid choices.
    """
    if not isinstance(text, str):
        raise StrategyError(f"a strategy must be a string, got {short_repr(text)}")
    cleaned = "".join(text.split())
    if len(cleaned) > MAX_STRATEGY_LENGTH:
        raise StrategyError(
            f"strategy '{cleaned[:40]}...' has {len(cleaned)} characters, more than the "
            f"{MAX_STRATEGY_LENGTH} allowed"
        )
    if not cleaned:
        raise StrategyError(
            "empty strategy; write e.g. 'all', 'attn', 'mlp@last:8' or a preset "
            f"({', '.join(PRESETS)})"
        )
    cleaned = PRESETS.get(cleaned, cleaned)
    pieces = cleaned.split("+")
    if not all(pieces):
        raise StrategyError(
            f"empty part in strategy '{cleaned}' (check for a doubled, leading or trailing '+'); "
            f"each part is groups[@layers][:rN] with groups from: {', '.join(GROUPS)}"
        )
    return Strategy(tuple(_parse_part(piece) for piece in pieces))

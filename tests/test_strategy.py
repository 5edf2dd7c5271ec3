"""The strategy grammar: parsing, canonical spelling, layer resolution, error messages.

Every case is a row: a new grammar form, selector or error is a new row in one of the tables.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from loraplace.errors import StrategyError
from loraplace.placement.grammar import (
    GROUPS,
    PRESETS,
    LayerSelector,
    Part,
    Strategy,
    parse_strategy,
)

ALL = LayerSelector()


def S(*parts: Part) -> Strategy:
    return Strategy(tuple(parts))


# (strategy text, the parsed object it must equal, its canonical spelling)
PARSE_CASES = [
    ("all", S(Part(("all",))), "all"),
    ("attn", S(Part(("attn",))), "attn"),
    ("mlp", S(Part(("mlp",))), "mlp"),
    ("ffn", S(Part(("mlp",))), "mlp"),
    ("q,v", S(Part(("q", "v"))), "q,v"),
    ("qkv", S(Part(("qkv",))), "qkv"),
    ("gate,up,down", S(Part(("gate", "up", "down"))), "gate,up,down"),
    ("all@last:8", S(Part(("all",), LayerSelector("last", (8,)))), "all@last:8"),
    ("all@first:4", S(Part(("all",), LayerSelector("first", (4,)))), "all@first:4"),
    (
        "attn@0-11+mlp@12-23",
        S(
            Part(("attn",), LayerSelector("range", (0, 11))),
            Part(("mlp",), LayerSelector("range", (12, 23))),
        ),
        "attn@0-11+mlp@12-23",
    ),
    ("mlp@every:2:r16", S(Part(("mlp",), LayerSelector("every", (2, 0)), 16)), "mlp@every:2:r16"),
    ("all@every:3:1", S(Part(("all",), LayerSelector("every", (3, 1)))), "all@every:3:1"),
    ("all@every:3:1:r8", S(Part(("all",), LayerSelector("every", (3, 1)), 8)), "all@every:3:1:r8"),
    ("all@every:2:0", S(Part(("all",), LayerSelector("every", (2, 0)))), "all@every:2"),
    ("qkv@1,3,5", S(Part(("qkv",), LayerSelector("list", (1, 3, 5)))), "qkv@1,3,5"),
    ("q,v@all:r4", S(Part(("q", "v"), ALL, 4)), "q,v:r4"),
    (
        "attn:r4+mlp@1:r8",
        S(Part(("attn",), ALL, 4), Part(("mlp",), LayerSelector("list", (1,)), 8)),
        "attn:r4+mlp@1:r8",
    ),
    ("ffn,attn", S(Part(("mlp", "attn"))), "mlp,attn"),
    (
        " attn @ last:2 + ffn ",
        S(Part(("attn",), LayerSelector("last", (2,))), Part(("mlp",))),
        "attn@last:2+mlp",
    ),
    # layer lists mixing ranges and indices: sorted, merged, runs of 3+ as ranges
    ("all@0-3,7", S(Part(("all",), LayerSelector("set", (0, 3, 7, 7)))), "all@0-3,7"),
    (
        "q,v@10-12,0-3,7",
        S(Part(("q", "v"), LayerSelector("set", (0, 3, 7, 7, 10, 12)))),
        "q,v@0-3,7,10-12",
    ),
    (
        "attn@0-2,1-4,9:r4",
        S(Part(("attn",), LayerSelector("set", (0, 4, 9, 9)), 4)),
        "attn@0-4,9:r4",
    ),
    ("mlp@0-3,5,6", S(Part(("mlp",), LayerSelector("set", (0, 3, 5, 6)))), "mlp@0-3,5,6"),
    # ... and collapse to the older forms when that is what they are
    ("mlp@0-1,2", S(Part(("mlp",), LayerSelector("range", (0, 2)))), "mlp@0-2"),
    ("attn@3,0-2", S(Part(("attn",), LayerSelector("range", (0, 3)))), "attn@0-3"),
    ("mlp@0-1,5", S(Part(("mlp",), LayerSelector("list", (0, 1, 5)))), "mlp@0,1,5"),
    ("all@2-2,5", S(Part(("all",), LayerSelector("list", (2, 5)))), "all@2,5"),
    # the older forms keep their spelling: a lone range, a list in the order written
    ("all@0-1", S(Part(("all",), LayerSelector("range", (0, 1)))), "all@0-1"),
    ("all@2-2", S(Part(("all",), LayerSelector("range", (2, 2)))), "all@2-2"),
    ("all@5,1,3", S(Part(("all",), LayerSelector("list", (5, 1, 3)))), "all@5,1,3"),
    ("all@1,2,3", S(Part(("all",), LayerSelector("list", (1, 2, 3)))), "all@1,2,3"),
    # presets
    ("baseline", S(Part(("all",))), "all"),
    ("attention-only", S(Part(("attn",))), "attn"),
    ("ffn-only", S(Part(("mlp",))), "mlp"),
]


@pytest.mark.parametrize(
    "text, expected, canonical", PARSE_CASES, ids=[c[0].strip() for c in PARSE_CASES]
)
def test_parse(text, expected, canonical):
    parsed = parse_strategy(text)
    assert parsed == expected
    assert str(parsed) == canonical
    # Round trip: the canonical string parses back to the same object.
    assert parse_strategy(str(parsed)) == parsed
    assert hash(parsed) == hash(parse_strategy(canonical))


def test_presets_are_the_documented_ones():
    # The README's preset table, read from the README.
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    table = readme[readme.index("| preset | strategy |") :].split("\n\n")[0].splitlines()[2:]
    documented = dict(
        tuple(cell.strip().strip("`") for cell in row.strip("|").split("|")) for row in table
    )
    assert documented and PRESETS == documented


# (group, the roles it adapts)
ROLE_CASES = [
    ("all", {"q", "k", "v", "o", "gate", "up", "down"}),
    ("attn", {"q", "k", "v", "o"}),
    ("mlp", {"gate", "up", "down"}),
    ("ffn", {"gate", "up", "down"}),
    ("qkv", {"q", "k", "v"}),
    ("q,v", {"q", "v"}),
    ("o,down", {"o", "down"}),
]


@pytest.mark.parametrize("text, roles", ROLE_CASES, ids=[c[0] for c in ROLE_CASES])
def test_part_roles(text, roles):
    (part,) = parse_strategy(text).parts
    assert part.roles == frozenset(roles)


def test_has_part_ranks():
    assert parse_strategy("attn@0-1+mlp:r16").has_part_ranks
    assert not parse_strategy("attn@0-1+mlp").has_part_ranks


# (layer selector, number of layers, resolved layers)
RESOLVE_CASES = [
    ("all", 3, (0, 1, 2)),
    ("first:3", 8, (0, 1, 2)),
    ("last:2", 5, (3, 4)),
    ("last:5", 5, (0, 1, 2, 3, 4)),
    ("every:2", 5, (0, 2, 4)),
    ("every:3:1", 8, (1, 4, 7)),
    ("every:4:3", 8, (3, 7)),
    ("every:1", 3, (0, 1, 2)),
    ("0-3", 6, (0, 1, 2, 3)),
    ("2-2", 6, (2,)),
    ("12-23", 24, tuple(range(12, 24))),
    ("5,1,3", 6, (1, 3, 5)),
    ("7", 8, (7,)),
    ("0-3,7", 8, (0, 1, 2, 3, 7)),
    ("10-12,0-1,5", 13, (0, 1, 5, 10, 11, 12)),
    ("4,0-2,2-3", 5, (0, 1, 2, 3, 4)),
]


@pytest.mark.parametrize(
    "selector, num_layers, layers", RESOLVE_CASES, ids=[f"{c[0]}/{c[1]}" for c in RESOLVE_CASES]
)
def test_resolve_layers(selector, num_layers, layers):
    (part,) = parse_strategy(f"all@{selector}").parts
    assert part.layers.resolve(num_layers) == layers


# (layer selector, number of layers): reaches outside 0 .. num_layers-1
OUT_OF_RANGE_CASES = [
    ("last:9", 8),
    ("first:9", 8),
    ("0-8", 8),
    ("3,8", 8),
    ("8", 8),
    ("every:2:8", 8),
    ("0-3,8", 8),
    ("0,5-9", 8),
]


@pytest.mark.parametrize(
    "selector, num_layers", OUT_OF_RANGE_CASES, ids=[c[0] for c in OUT_OF_RANGE_CASES]
)
def test_resolve_out_of_range(selector, num_layers):
    (part,) = parse_strategy(f"all@{selector}").parts
    with pytest.raises(StrategyError) as info:
        part.layers.resolve(num_layers)
    message = str(info.value)
    assert "\n" not in message
    assert selector in message
    assert f"{num_layers} layers" in message and f"0-{num_layers - 1}" in message


LAYER_FORMS = ["first:K", "last:K", "every:N", "A-B"]
GROUP_NAMES = list(GROUPS)

# (strategy, pieces the message must name, the valid choices it must list)
ERROR_CASES = [
    ("foo", ["'foo'"], GROUP_NAMES),
    ("all,foo", ["'foo'"], GROUP_NAMES),
    ("attention", ["'attention'"], GROUP_NAMES),
    ("all+", ["all+", "'+'"], GROUP_NAMES),
    ("+attn", ["+attn"], GROUP_NAMES),
    ("attn++mlp", ["attn++mlp"], GROUP_NAMES),
    ("all,", ["(empty)"], GROUP_NAMES),
    ("all@last:x", ["last:x", "'x'"], LAYER_FORMS),
    ("all@last", ["last"], ["last:8"]),
    ("all@last:0", ["last:0"], LAYER_FORMS),
    ("all@every:0", ["every:0"], LAYER_FORMS),
    ("all@every:x", ["every:x"], LAYER_FORMS),
    ("all@every:2:y", ["every:2:y", "'y'"], LAYER_FORMS),
    ("all@5-2", ["5-2"], ["2-5"]),
    ("all@0,5-2", ["'5-2'"], ["2-5"]),
    ("all@0-3,x", ["0-3,x"], LAYER_FORMS),
    ("all@0-3,", ["0-3,"], LAYER_FORMS),
    ("all@1-2-3", ["1-2-3"], LAYER_FORMS),
    ("all@1-x", ["1-x"], LAYER_FORMS),
    ("all@foo", ["foo"], LAYER_FORMS),
    ("all@", ["'@'"], LAYER_FORMS),
    ("all:r0", ["all:r0", "0"], [":rN", "N >= 1"]),
    ("all:rx", ["all:rx", "'x'"], [":rN", "N >= 1"]),
    ("all:r", ["all:r"], [":rN", "N >= 1"]),
    ("last:8", ["'last:8'"], GROUP_NAMES + ["layer selector after '@'"]),
    ("", ["empty strategy"], list(PRESETS)),
]


@pytest.mark.parametrize(
    "text, pieces, choices", ERROR_CASES, ids=[c[0] or "(empty)" for c in ERROR_CASES]
)
def test_parse_errors(text, pieces, choices):
    with pytest.raises(StrategyError) as info:
        parse_strategy(text)
    message = str(info.value)
    assert "\n" not in message
    for piece in pieces:
        assert piece in message, f"{message!r} does not name {piece!r}"
    for choice in choices:
        assert choice in message, f"{message!r} does not list {choice!r}"


def test_non_string_strategy():
    with pytest.raises(StrategyError, match="must be a string"):
        parse_strategy(8)  # type: ignore[arg-type]


# (layers in any order, with repeats; the canonical selector's spelling)
FROM_LAYERS_CASES = [
    ([7], "7"),
    ([1, 0], "0,1"),
    ([2, 0, 1], "0-2"),
    ([0, 1, 2, 3, 7], "0-3,7"),
    ([12, 11, 10, 7, 3, 2, 1, 0, 7], "0-3,7,10-12"),
    ([0, 1, 5, 6], "0,1,5,6"),
    ([0, 2, 4], "0,2,4"),
    ([0, 1, 2, 4, 5], "0-2,4,5"),
]


@pytest.mark.parametrize("layers, text", FROM_LAYERS_CASES, ids=[c[1] for c in FROM_LAYERS_CASES])
def test_from_layers(layers, text):
    selector = LayerSelector.from_layers(layers)
    assert str(selector) == text
    (part,) = parse_strategy(f"all@{text}").parts
    assert part.layers == selector
    assert selector.resolve(20) == tuple(sorted(set(layers)))


@pytest.mark.parametrize("layers", [[], [-1, 2]], ids=["empty", "negative"])
def test_from_layers_refuses(layers):
    with pytest.raises(StrategyError, match="non-negative layers"):
        LayerSelector.from_layers(layers)


def _spelled_runs(layers: set[int]) -> str:
    """A hand spelling of a layer set, independent of the grammar: runs of 3+ as ``A-B``."""
    pieces, ordered, i = [], sorted(layers), 0
    while i < len(ordered):
        j = i
        while j + 1 < len(ordered) and ordered[j + 1] == ordered[j] + 1:
            j += 1
        if j - i >= 2:
            pieces.append(f"{ordered[i]}-{ordered[j]}")
        else:
            pieces.extend(str(x) for x in ordered[i : j + 1])
        i = j + 1
    return ",".join(pieces)


@given(
    st.lists(
        st.tuples(st.integers(0, 40), st.integers(0, 5)).map(lambda t: (t[0], t[0] + t[1])),
        min_size=1,
        max_size=6,
    )
)
@settings(max_examples=200, deadline=None)
def test_mixed_layer_lists_round_trip(items):
    """Any mix of ranges and indices resolves to their union and canonicalises by the rules."""
    text = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in items)
    union = {i for a, b in items for i in range(a, b + 1)}
    (part,) = parse_strategy(f"all@{text}").parts
    assert part.layers.resolve(50) == tuple(sorted(union))
    if len(items) > 1 and any(a != b for a, b in items):
        assert str(part.layers) == _spelled_runs(union)
    assert parse_strategy(str(parse_strategy(f"all@{text}"))).parts[0].layers == part.layers

"""Property-based fuzzing of what users type: strategies, YAML, and study configs.

The contract under test: arbitrary input gives a result or a :class:`LoraplaceError` subclass,
which the CLI prints as one line; any other exception is a crash. Each property runs 200
derandomized examples (the same ones on every run). To explore further, set
``LORAPLACE_FUZZ_EXAMPLES`` (e.g. 5000): the examples are then random and more numerous.
"""

from __future__ import annotations

import dataclasses
import os

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loraplace.config.study import StudyConfig, load_study_config
from loraplace.config.yamlio import dump_yaml, load_yaml
from loraplace.errors import ConfigError, LoraplaceError, StrategyError
from loraplace.placement.grammar import GROUPS, PRESETS, parse_strategy

_EXPLORE = os.environ.get("LORAPLACE_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(_EXPLORE or 200),
    deadline=None,
    database=None,
    derandomize=not _EXPLORE,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --------------------------------------------------------------------------------------------
# (a) The strategy grammar

# Strategy strings drawn from the grammar in src/loraplace/strategy.py's docstring.
small = st.integers(min_value=0, max_value=64)
positive = st.integers(min_value=1, max_value=64)


@st.composite
def layer_selectors(draw) -> str:
    kind = draw(st.sampled_from(["all", "first", "last", "every", "every-offset", "range", "list"]))
    if kind == "all":
        return "all"
    if kind in ("first", "last"):
        return f"{kind}:{draw(positive)}"
    if kind == "every":
        return f"every:{draw(positive)}"
    if kind == "every-offset":
        return f"every:{draw(positive)}:{draw(small)}"
    if kind == "range":
        a, b = sorted((draw(small), draw(small)))
        return f"{a}-{b}"
    return ",".join(str(i) for i in draw(st.lists(small, min_size=1, max_size=5)))


@st.composite
def parts(draw) -> str:
    text = ",".join(draw(st.lists(st.sampled_from(list(GROUPS)), min_size=1, max_size=4)))
    if draw(st.booleans()):
        text += "@" + draw(layer_selectors())
    if draw(st.booleans()):
        text += f":r{draw(positive)}"
    return text


@st.composite
def valid_strategies(draw) -> str:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from(list(PRESETS)))
    pieces = draw(st.lists(parts(), min_size=1, max_size=4))
    # Whitespace anywhere is ignored by the parser; put some in to check that it is.
    space = draw(st.sampled_from(["", " ", "\t", "\n"]))
    return (space + "+" + space).join(pieces)


_GRAMMAR_CHARS = list("allattnmlpffnqkvogateupdownfirstlastevery@:r,+-0123456789 \t")
grammar_noise = st.text(alphabet=st.sampled_from(_GRAMMAR_CHARS), max_size=40)
mutated = st.builds(
    lambda s, i, junk: s[:i] + junk + s[i:],
    valid_strategies(),
    st.integers(0, 40),
    st.text(max_size=3),
)


@FUZZ
@given(st.one_of(st.text(max_size=40), grammar_noise, mutated))
def test_any_text_parses_or_raises_strategy_error(text):
    try:
        strategy = parse_strategy(text)
    except StrategyError:
        return
    assert str(strategy) == str(parse_strategy(str(strategy)))


@FUZZ
@given(st.one_of(st.none(), st.integers(), st.floats(), st.lists(st.text(max_size=3))))
def test_non_text_raises_strategy_error(value):
    with pytest.raises(StrategyError):
        parse_strategy(value)


@FUZZ
@given(valid_strategies())
def test_valid_strategies_parse_and_round_trip(text):
    strategy = parse_strategy(text)
    canonical = str(strategy)
    assert parse_strategy(canonical) == strategy
    assert str(parse_strategy(canonical)) == canonical
    # The canonical form is the parsed one, written once: no whitespace, no alias 'ffn'.
    assert not any(c.isspace() for c in canonical)
    expected = PRESETS.get("".join(text.split()), "".join(text.split()))
    assert len(strategy.parts) == len(expected.split("+"))
    assert all("ffn" not in part.groups for part in strategy.parts)


@pytest.mark.parametrize("text", ["all:r" + "9" * 5000, "all@" + "1" * 5000, "mlp@0-" + "9" * 5000])
def test_huge_numbers_raise_strategy_error(text):
    with pytest.raises(StrategyError):
        parse_strategy(text)


# --------------------------------------------------------------------------------------------
# (b) Strict YAML


_YAML_CHARS = list("&*!|>-?:[]{},#'\"\n\t %@`<=~.abxyz019") + ["!!int", "!!str", "<<", "---"]
yaml_noise = st.lists(st.sampled_from(_YAML_CHARS), max_size=60).map("".join)


def _load(text: str) -> object:
    try:
        return load_yaml(text, "fuzz.yaml")
    except ConfigError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("invalid study config: fuzz.yaml")
        raise


@FUZZ
@given(st.one_of(st.text(max_size=200), yaml_noise))
@example("!!int")  # PyYAML indexes the empty value: an IndexError before tags were refused
def test_any_text_loads_or_raises_config_error(text):
    try:
        _load(text)
    except ConfigError:
        pass


# Plain data as a study config holds it; NaN is left out because it never equals itself.
keys = st.text(min_size=1, max_size=12)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**18), max_value=10**18),
    st.floats(allow_nan=False),
    st.text(max_size=20),
)
plain_data = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=4)),
    max_leaves=8,
)


@FUZZ
@given(st.dictionaries(keys, plain_data, min_size=1, max_size=4))
def test_dumped_plain_data_loads_back_unchanged(data):
    assert _load(dump_yaml(data)) == data


@FUZZ
@given(st.dictionaries(keys, plain_data, min_size=1, max_size=4), st.data())
def test_generated_duplicate_keys_are_refused(data, draw):
    # Each top-level entry is a complete YAML block; repeat one key at any position, with any
    # value, at the top level or one level down.
    entries = [dump_yaml({key: value}) for key, value in data.items()]
    key = draw.draw(st.sampled_from(list(data)))
    entries.insert(draw.draw(st.integers(0, len(entries))), dump_yaml({key: draw.draw(plain_data)}))
    text = "".join(entries)
    if draw.draw(st.booleans()):
        text = "outer:\n" + "".join("  " + line + "\n" for line in text.splitlines())
    with pytest.raises(ConfigError, match="duplicate key"):
        _load(text)


@FUZZ
@given(st.dictionaries(keys, plain_data, min_size=1, max_size=4), st.data())
def test_generated_anchors_and_aliases_are_refused(data, draw):
    anchor = draw.draw(st.from_regex(r"[a-z][a-z0-9]{0,7}", fullmatch=True))
    body = dump_yaml({"base": data}).replace("base:", f"base: &{anchor}", 1)
    use = draw.draw(st.sampled_from(["only the anchor", "alias", "alias in a list"]))
    if use == "alias":
        body += f"copy: *{anchor}\n"
    elif use == "alias in a list":
        body += f"copies: [*{anchor}, *{anchor}]\n"
    with pytest.raises(ConfigError, match="anchors and aliases are not allowed"):
        _load(body)


# --------------------------------------------------------------------------------------------
# (c) Study configs given as mappings


def _section_fields() -> dict[str, list[str]]:
    """Section name -> its keys, read from StudyConfig itself so new keys are fuzzed too."""
    sections = {}
    for f in dataclasses.fields(StudyConfig):
        if f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
            if dataclasses.is_dataclass(default):
                sections[f.name] = [g.name for g in dataclasses.fields(default)]
    return sections


SECTIONS = _section_fields()
TOP_KEYS = [f.name for f in dataclasses.fields(StudyConfig)]

# Every type YAML gives: the extremes a careless or hostile config can hold.
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, -(2**63), 2**63, 10**30, -(10**30)]),
    st.floats(),  # NaN and infinities included
    st.sampled_from(["1e3", "8", "-1", "nan", "inf", "", "0x10"]),
)
yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    numbers,
    st.text(max_size=20),
    st.dates(),
    st.datetimes(),
    st.binary(max_size=8),
)
yaml_keys = st.one_of(st.text(max_size=10), st.integers(), st.booleans(), st.none())
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(yaml_keys, inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def sections(draw, name: str):
    known = SECTIONS[name]
    chosen = draw(st.lists(st.sampled_from(known) | st.text(max_size=8), max_size=len(known) + 1))
    return {key: draw(st.one_of(numbers, yaml_values)) for key in chosen}


@st.composite
def strategy_maps(draw):
    specs = st.one_of(valid_strategies(), st.text(max_size=12), yaml_values)
    return draw(
        st.one_of(
            st.dictionaries(st.one_of(st.text(max_size=10), yaml_keys), specs, max_size=4),
            st.lists(specs, max_size=4),
            yaml_values,
        )
    )


@st.composite
def study_mappings(draw):
    raw = {}
    for key in draw(st.lists(st.sampled_from(TOP_KEYS) | yaml_keys, max_size=8)):
        if key in SECTIONS:
            raw[key] = draw(st.one_of(sections(key), yaml_values))
        elif key == "strategies":
            raw[key] = draw(strategy_maps())
        else:
            raw[key] = draw(yaml_values)
    return raw


def _load_config(raw: dict) -> str | None:
    """Load ``raw``; return the refusal message, or None when it is accepted."""
    try:
        load_study_config(raw, check_model=False)
    except LoraplaceError as exc:
        return str(exc)
    return None


@FUZZ
@given(st.dictionaries(st.sampled_from(SECTIONS["ray"]) | yaml_keys, numbers, max_size=3))
def test_any_ray_section_is_accepted_in_range_or_refused_in_one_line(ray):
    raw = {"strategies": {"a": "attn"}, "ray": ray}
    message = _load_config(raw)
    if message is not None:
        assert "\n" not in message and "ray" in message
        return
    options = load_study_config(raw, check_model=False).ray
    assert 0 < options.cpus_per_run <= 4096 and 0 <= options.gpus_per_run <= 64


@FUZZ
@given(study_mappings())
@example({"ray": {"\n": 0}})
@example({"reference": []})
def test_study_config_refusals_are_one_line(raw):
    # Any mapping at all is accepted or refused with a LoraplaceError (_load_config lets any
    # other exception through), and a refusal is one line.
    message = _load_config(raw)
    assert message is None or "\n" not in message

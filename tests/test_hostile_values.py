"""Hostile values (issue #44): what a study sees, absurd numbers, huge records, long names and
a tracking server that does not answer.

Each case failed before its fix: a resumed study did not notice a changed tokenizer or chat
template; ``training.steps: 10**12`` was accepted; one 50 MB record was tokenized in full; a
300-character strategy name reached the disk (errno 36); an unreachable MLflow server stalled
a study for four minutes. Numbers are bounded so that any real study still fits: a million
steps is fine.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import signal
import time
import warnings
from pathlib import Path

import pytest
from helpers import tiny_study
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraplace import store
from loraplace.cli.main import main as cli_main
from loraplace.config.study import MAX_NAME, RayOptions, load_study_config
from loraplace.data.batching import tokenize_examples
from loraplace.data.formats import Example, extract_final_number, read_records
from loraplace.data.sources import MAX_CHARS_PER_TOKEN, load_splits
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.settings import (
    AutoSpec,
    DataConfig,
    EvalSettings,
    LoraSettings,
    ReportSettings,
    TrainingSettings,
)
from loraplace.studies.identity import identity_changes, prepare_study_dir, study_identity
from loraplace.studies.runner import run_study
from loraplace.tracking.backends import MLFLOW_HTTP_DEFAULTS, open_tracking
from loraplace.tracking.core import Guard, Tracking, TrackingWarning

# --- 1. Model identity: everything that changes what a run sees ---------------------------------


def _with_system_turn(model: Path) -> None:
    template = model / "chat_template.jinja"
    system = "{{ '<|im_start|>system\\nAnswer tersely.<|im_end|>\\n' }}"
    template.write_text(system + template.read_text())


def _edit_json(name: str, key: str, value):
    def edit(model: Path) -> None:
        data = json.loads((model / name).read_text())
        data[key] = value
        (model / name).write_text(json.dumps(data, indent=2))

    return edit


def _flip_last_byte(name: str):
    def edit(model: Path) -> None:
        data = bytearray((model / name).read_bytes())
        data[-2] ^= 0x01
        (model / name).write_bytes(bytes(data))

    return edit


def _template_into_config(model: Path) -> None:
    # The same template, moved from chat_template.jinja into tokenizer_config.json with a
    # system turn: the older way of saving it.
    template = (model / "chat_template.jinja").read_text()
    (model / "chat_template.jinja").unlink()
    _edit_json("tokenizer_config.json", "chat_template", "{{ 'System: be brief. ' }}" + template)(
        model
    )


def _extra_template(model: Path) -> None:
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "tool_use.jinja").write_text("{{ messages }}")


#: (case, what changes in the model directory, the file the refusal names)
CHANGES = [
    ("chat template gains a system turn", _with_system_turn, "chat_template.jinja"),
    ("chat template moves into tokenizer_config", _template_into_config, "tokenizer_config.json"),
    ("another chat template", _extra_template, "additional_chat_templates/tool_use.jinja"),
    ("eos token", _edit_json("tokenizer_config.json", "eos_token", "<|endoftext|>"), "tokenizer"),
    ("vocabulary", _flip_last_byte("tokenizer.json"), "tokenizer.json"),
    ("generation config", _edit_json("generation_config.json", "eos_token_id", 0), "generation"),
]


@pytest.fixture
def own_model(tiny_model_dir, tmp_path) -> Path:
    """A copy of the tiny model that a test may change."""
    return Path(shutil.copytree(tiny_model_dir, tmp_path / "model"))


@pytest.mark.parametrize("case, change, named", CHANGES, ids=[c[0] for c in CHANGES])
def test_a_changed_tokenizer_template_or_generation_config_is_refused_on_resume(
    own_model, tiny_data_file, tmp_path, case, change, named
):
    config = load_study_config(tiny_study(own_model, tiny_data_file))
    out = tmp_path / "out"
    out.mkdir()
    prepare_study_dir(config, out, study_identity(config))
    recorded = (out / store.IDENTITY_FILE).read_text()
    change(own_model)
    with pytest.raises(LoraplaceError, match="different model files") as refused:
        prepare_study_dir(config, out, study_identity(config))
    assert named in str(refused.value) and "\n" not in str(refused.value)
    assert (out / store.IDENTITY_FILE).read_text() == recorded  # nothing changed there


def test_a_resumed_study_with_a_new_chat_template_mixes_no_runs(
    own_model, tiny_data_file, tmp_path
):
    # The reproduction of the issue: a system turn is prepended to the template, and a seed is
    # added. The study used to train the new seed with the new prompts and reuse the base loss.
    raw = tiny_study(own_model, tiny_data_file, strategies={"top": "mlp@last:1"}, reference="top")
    raw["eval"] = {"accuracy_examples": 0}
    raw["training"] = {**raw["training"], "seeds": [0]}
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    _with_system_turn(own_model)
    raw["training"]["seeds"] = [0, 1]
    with pytest.raises(LoraplaceError, match="chat_template.jinja"):
        run_study(load_study_config(raw), out, show_progress=False)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before


def test_an_identity_recorded_before_tokenizers_were_covered_still_resumes(
    own_model, tiny_data_file, tmp_path
):
    # identity.json of a study started before: no tokenizer or generation parts. They are
    # unknown, not changed, and the file stays as it was (base.json is keyed by it).
    config = load_study_config(tiny_study(own_model, tiny_data_file))
    identity = study_identity(config)
    old = {**identity, "model": {k: identity["model"][k] for k in ("kind", "files")}}
    out = tmp_path / "out"
    out.mkdir()
    prepare_study_dir(config, out, old)
    prepare_study_dir(config, out, identity)
    assert store.read_json(out / store.IDENTITY_FILE) == old
    # What it did record is still checked.
    _flip_last_byte("model.safetensors")(own_model)
    with pytest.raises(LoraplaceError, match="model files: model.safetensors"):
        prepare_study_dir(config, out, study_identity(config))


RESULTS = Path(__file__).resolve().parents[1] / "docs" / "results"


@pytest.mark.parametrize("study", sorted(p.parent.name for p in RESULTS.glob("*/identity.json")))
def test_committed_identities_agree_with_themselves_grown_by_the_new_parts(study):
    stored = json.loads((RESULTS / study / store.IDENTITY_FILE).read_text())
    grown = {**stored, "model": {**stored["model"], "tokenizer": {"x": "1"}, "generation": {}}}
    assert identity_changes(stored, grown) == []
    assert identity_changes(stored, stored) == []


# --- 2. Bounds: a typo must not eat the machine ---------------------------------------------------


def _numeric_fields(cls) -> list[str]:
    """The fields of a settings class that hold a number (read from the class, so a numeric
    field added later is checked too)."""
    numeric = {"int", "float", "int | None", "float | None", "int | str"}
    return [f.name for f in dataclasses.fields(cls) if str(f.type) in numeric]


SECTIONS = {
    "data": DataConfig,
    "lora": LoraSettings,
    "training": TrainingSettings,
    "eval": EvalSettings,
    "report": ReportSettings,
    "ray": RayOptions,
    "auto": AutoSpec,
}
NUMERIC = [(section, name) for section, cls in SECTIONS.items() for name in _numeric_fields(cls)]

absurd = st.one_of(
    st.integers(min_value=10**13),
    st.integers(max_value=-1),
    st.floats(min_value=1e13),
    st.floats(max_value=-1e-6),
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 10**100, 1e300]),
)


def _raw_with(section: str, name: str, value) -> dict:
    raw = {"name": "hostile", "strategies": {"a": "attn"}}
    if section == "auto":
        raw["strategies"] = {"a": "attn", "b": {"auto": {"budget": "a", name: value}}}
    else:
        raw[section] = {name: value}
    return raw


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(field=st.sampled_from(NUMERIC), value=absurd)
def test_an_absurd_number_in_any_settings_field_is_one_line_naming_it(field, value):
    section, name = field
    with pytest.raises(ConfigError) as refused:
        load_study_config(_raw_with(section, name, value), check_model=False)
    message = str(refused.value)
    assert "\n" not in message and f"{section}.{name}" in message


@pytest.mark.parametrize(
    "section, name, value, expected",
    [
        ("training", "steps", 10**12, "training.steps must be an integer in [1, 10000000]"),
        ("training", "warmup_steps", 10**12, "training.warmup_steps must be an integer in [0, "),
        ("eval", "max_new_tokens", 10**9, "eval.max_new_tokens must be an integer in [1, "),
        ("eval", "accuracy_examples", 10**12, "eval.accuracy_examples must be an integer in [0, "),
        ("training", "seeds", list(range(1001)), "training.seeds has 1001 seeds; at most 1000"),
        ("training", "learning_rate", 1e300, "training.learning_rate must be a number in (0, 10]"),
        ("lora", "rank", 10**9, "lora.rank must be an integer in [1, 65536]"),
    ],
)
def test_the_refusal_gives_the_range(section, name, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        load_study_config({"strategies": {"a": "attn"}, section: {name: value}}, check_model=False)


def test_bounds_leave_room_for_any_real_study():
    TrainingSettings(steps=10**6, warmup_steps=10**4, seeds=list(range(100)), batch_size=512)
    EvalSettings(max_new_tokens=8192, accuracy_examples=1319, batch_size=256)
    DataConfig(train_examples=7473, max_length=32768)
    LoraSettings(rank=1024, alpha=2048)


def test_generation_and_sequences_are_capped_by_the_models_context(tiny_model_dir, tiny_data_file):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"max_new_tokens": 4096, "accuracy_examples": 2}
    raw["data"] = {**raw["data"], "max_length": 5000}
    with pytest.raises(ConfigError) as refused:
        load_study_config(raw)
    message = str(refused.value)
    for key, value in (("eval.max_new_tokens", 4096), ("data.max_length", 5000)):
        assert f"{key} must be at most the model's context of 1024 tokens" in message
        assert f"got {value}" in message
    raw["eval"]["max_new_tokens"] = raw["data"]["max_length"] = 1024
    load_study_config(raw)


# --- 3. Data with bounded memory -----------------------------------------------------------------


class _Recording:
    """A tokenizer that remembers the longest text it was given."""

    def __init__(self, tokenizer):
        self._tokenizer = tokenizer
        self.longest = 0

    def __call__(self, text, **kwargs):
        texts = [text] if isinstance(text, str) else text
        self.longest = max([self.longest, *map(len, texts)])
        return self._tokenizer(text, **kwargs)

    def __getattr__(self, name):
        return getattr(self._tokenizer, name)


def _with_huge_record(tmp_path: Path, data_file: Path, field: str) -> Path:
    lines = data_file.read_text().splitlines()
    huge = {"instruction": "How many apples?", "input": "", "output": "#### 3"}
    huge[field] = "12 apples and " * 400_000 + huge[field]  # 5.6 MB
    path = tmp_path / f"huge-{field}.jsonl"
    path.write_text("\n".join([*lines[:10], json.dumps(huge), *lines[10:]]) + "\n")
    return path


@pytest.mark.parametrize("field, counted", [("output", "truncated"), ("instruction", "dropped")])
def test_a_huge_record_is_cut_before_it_is_tokenized(
    tiny_tokenizer, tiny_data_file, tmp_path, field, counted
):
    data = DataConfig(
        dataset=str(_with_huge_record(tmp_path, tiny_data_file, field)),
        train_examples=41,
        eval_examples=8,
        max_length=96,
    )
    splits = load_splits(data)
    limit = data.max_length * MAX_CHARS_PER_TOKEN
    examples = splits.train + splits.eval
    assert splits.provenance["cut_examples"] == 1
    assert all(len(e.completion) <= limit for e in examples)
    assert all(sum(len(m["content"]) for m in e.prompt) <= limit for e in examples)
    recording = _Recording(tiny_tokenizer)
    _, stats = tokenize_examples(splits.train, recording, data.max_length)
    assert recording.longest <= limit + 200  # the template's own text around a prompt
    assert stats[counted] >= 1


def test_cutting_a_long_text_leaves_its_tokens_as_they_were(tiny_tokenizer, tmp_path):
    text = "12 apples and 7 pears make a total " * 10_000
    path = tmp_path / "long.jsonl"
    path.write_text("".join(json.dumps({"text": f"{i} {text}"}) + "\n" for i in range(6)))
    splits = load_splits(DataConfig(dataset=str(path), train_examples=4, eval_examples=2))
    (cut, *_) = splits.train
    assert splits.provenance["cut_examples"] == 6 and len(cut.completion) < len(text)
    whole = Example(prompt=[], completion=cut.completion[:2] + text, answer=None)
    assert whole.completion.startswith(cut.completion)
    assert tokenize_examples([cut], tiny_tokenizer, 384) == tokenize_examples(
        [whole], tiny_tokenizer, 384
    )


def test_ordinary_data_is_not_cut(tiny_data_file):
    splits = load_splits(DataConfig(str(tiny_data_file), train_examples=24, eval_examples=8))
    assert "cut_examples" not in splits.provenance


def test_a_reference_answer_of_thousands_of_digits_is_read():
    # Python refuses to turn an int of more than 4300 digits into text.
    assert extract_final_number("#### " + "9" * 5000) == "9" * 5000
    assert extract_final_number("#### -0") == "0" and extract_final_number("#### 1,000") == "1000"


def test_a_json_array_of_many_records_is_read_in_linear_time(tmp_path):
    # Each record's line used to be counted from the start of the file: quadratic.
    path = tmp_path / "many.json"
    rows = (json.dumps({"text": f"record {i}"}) for i in range(60_000))
    path.write_text("[\n" + ",\n".join(rows) + "\n]\n")
    start = time.perf_counter()
    records = read_records(path)
    assert time.perf_counter() - start < 10
    assert records[-1].where == f"{path} line 60001"


# --- 4. Names that fit the file system -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        {"name": "n" * 300},
        {"strategies": {"x" * 300: "all"}},
        {"strategies": {"\u4e2d" * 90: "all"}},  # 90 characters, 270 bytes as UTF-8
        {"strategies": ["+".join(f"q@{i}" for i in range(40))]},  # listed: its own name
    ],
    ids=["study name", "strategy name", "wide characters", "listed strategy"],
)
def test_a_name_that_cannot_be_a_directory_name_is_refused(raw):
    with pytest.raises(ConfigError, match="too long") as refused:
        load_study_config(raw, check_model=False)
    assert "\n" not in str(refused.value)


def test_a_name_of_the_longest_length_is_accepted():
    config = load_study_config(
        {"name": "n" * MAX_NAME, "strategies": {"s" * MAX_NAME: "all"}}, check_model=False
    )
    assert config.name == "n" * MAX_NAME


def test_a_directory_holding_an_over_long_name_is_one_line(tmp_path, capsys):
    # A study written before the bound: status and report say what is wrong in one line.
    out = tmp_path / "study"
    out.mkdir()
    (out / store.STUDY_FILE).write_text(f"name: old\nstrategies: {{{'x' * 300}: all}}\n")
    for command in ("status", "report"):
        assert cli_main([command, str(out)]) == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and "too long" in error


# --- 5. Tracking never stalls a study ------------------------------------------------------------


class _Stalled(BaseException):
    """Raised by the alarm: not an Exception, so the tracking guard cannot swallow it."""


@pytest.fixture
def alarm():
    def stalled(signum, frame):
        raise _Stalled

    previous = signal.signal(signal.SIGALRM, stalled)
    yield signal.alarm
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def test_an_unreachable_mlflow_server_costs_seconds_and_one_warning(tmp_path, monkeypatch, alarm):
    pytest.importorskip("mlflow")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")
    for key in MLFLOW_HTTP_DEFAULTS:  # unset here, and as they were after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    start = time.perf_counter()
    alarm(60)  # MLflow's own defaults retried for 253 s
    with pytest.warns(TrackingWarning) as caught:
        with open_tracking(["mlflow"], tmp_path, "toy", {}) as tracking:
            assert tracking.backends == []
            with tracking.run("a--seed0", {"seed": 0}) as run:
                run.log_metrics(1, {"loss": 1.0})
    alarm(0)
    assert time.perf_counter() - start < 30
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "mlflow tracking is off for this study" in messages[0]


def test_mlflow_http_limits_are_set_only_where_the_user_has_not(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for key in MLFLOW_HTTP_DEFAULTS:  # unset here, and as they were after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "300")
    with warnings.catch_warnings():
        warnings.simplefilter("error", TrackingWarning)
        open_tracking(["mlflow"], tmp_path, "toy", {}).close()
    import os

    assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "300"
    assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "2"


class _SlowFailing:
    """A backend whose every call fails after a while, as a store that stopped answering."""

    name = "slow"

    def __init__(self) -> None:
        self.calls = 0

    def start_run(self, run_name: str):
        self.calls += 1
        time.sleep(0.03)
        raise ConnectionError("no answer")

    def close(self, status: str) -> None:
        self.calls += 1
        raise ConnectionError("no answer")


def test_a_backend_whose_failures_cost_too_long_is_turned_off_with_one_warning():
    backend = _SlowFailing()
    tracking = Tracking([backend], Guard(budget_s=0.05))
    with pytest.warns(TrackingWarning) as caught:
        for seed in range(10):
            with tracking.run(f"a--seed{seed}", {"seed": seed}):
                pass
        tracking.close()
    assert backend.calls == 2  # then never called again, not even to close
    messages = [str(w.message) for w in caught]
    assert len(messages) == 2  # the first failure, then the backend turned off
    assert "slow tracking is off for the rest of this study" in messages[1]
    assert tracking.backends == []

"""`loraplace status`: where a study stands, from its files alone."""

from __future__ import annotations

import shutil

from test_study import tiny_study

from loraplace import store
from loraplace.config import load_study_config
from loraplace.status import format_duration, study_status, time_left
from loraplace.studies import run_study
from loraplace.yamlio import dump_yaml


def _result(started: str, finished: str) -> dict:
    return {"status": "finished", "started_at": started, "finished_at": finished}


def test_time_left_times_each_run_by_its_own_condition_and_stage():
    a0, a1, a2 = store.RunKey("a", 0), store.RunKey("a", 1), store.RunKey("a", 2)
    b0, b1 = store.RunKey("b", 0), store.RunKey("b", 1)
    states = [
        (a0, "finished", _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:01:40+00:00")),
        (b0, "finished", _result("2026-01-01T00:00:00+00:00", "2026-01-01T00:00:10+00:00")),
        (a1, "pending", None),
        (a2, "pending", None),
        (b1, "in progress", None),
    ]
    spent, left, unknown = time_left(states)
    assert (spent, left, unknown) == (110.0, 210.0, 0)  # 100 + 100 + 10, not 3 x 55
    # A condition with no finished run is timed by its stage's mean, and a stage with none
    # is counted as unknown.
    c1, s0 = store.RunKey("c", 1), store.RunKey("a", 0, learning_rate=1e-3, stage="selection")
    spent, left, unknown = time_left([*states, (c1, "pending", None), (s0, "pending", None)])
    assert (left, unknown) == (210.0 + 55.0, 1)


def test_format_duration():
    assert [format_duration(s) for s in (45, 750, 3900, None)] == [
        "45 s",
        "12 min 30 s",
        "1 h 05 min",
        "unknown",
    ]


def test_status_of_a_half_finished_study_reads_only_files(tiny_model_dir, tiny_data_file, tmp_path):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"accuracy_examples": 0}
    out = tmp_path / "study"
    assert run_study(load_study_config(raw), out, show_progress=False, report=False) == 0
    # One run interrupted (its directory without a result), one never started.
    (out / "runs" / "top--seed1" / "result.json").unlink()
    shutil.rmtree(out / "runs" / "attention-only--seed1")
    text = study_status(out)
    final = next(line for line in text.splitlines() if line.startswith("final"))
    assert final.split() == ["final", "4", "0", "1", "1"]
    assert "estimated time to finish:" in text and "unknown" not in text


def test_status_before_any_run_finished_says_the_time_is_not_known(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    out = tmp_path / "study"
    out.mkdir()
    (out / "study.yaml").write_text(dump_yaml(load_study_config(raw).to_dict()))
    text = study_status(out)
    final = next(line for line in text.splitlines() if line.startswith("final"))
    assert final.split() == ["final", "0", "0", "0", "6"]
    assert "not known until a run of each stage finishes (6 run(s) to time)" in text

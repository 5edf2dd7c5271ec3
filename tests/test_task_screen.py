"""The task screen's baselines (tools/task_screen.py): the majority rate of each kind of task."""

import importlib.util
from pathlib import Path

import pytest

_PATH = Path(__file__).resolve().parents[1] / "tools" / "task_screen.py"


@pytest.fixture(scope="module")
def screen():
    spec = importlib.util.spec_from_file_location("task_screen", _PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_majority_of_a_choice_task_counts_label_positions(screen):
    rows = [{"label": 1}, {"label": 1}, {"label": 0}, {"label": 1}]
    assert screen._majority(rows, "acc") == 0.75


def test_majority_of_an_exact_match_task_counts_reference_numbers(screen):
    # Always answering "6" gets 2 of 5 right: the baseline a generated number must beat.
    rows = [{"number": "6"}, {"number": "12"}, {"number": "6"}, {"number": "5"}, {"number": "7"}]
    assert screen._majority(rows, "exact_match") == 0.4


def test_majority_of_an_unknown_metric_or_no_rows_is_none(screen):
    assert screen._majority([{"label": 0}], "f1") is None
    assert screen._majority([], "acc") is None


def test_the_committed_screen_table_regenerates_from_its_records(tmp_path):
    # docs/results/task-screen/README.md (quoted in RESULTS.md) is written from the committed
    # records alone; writing it again must give the same table and numbers.
    import subprocess
    import sys

    root = _PATH.parents[1]
    committed = root / "docs" / "results" / "task-screen"
    subprocess.run(
        [sys.executable, str(_PATH), "--out", "docs/results/task-screen/records", "--report",
         str(tmp_path)],
        cwd=root,
        check=True,
        capture_output=True,
    )  # fmt: skip
    for name in ("README.md", "screen.json"):
        assert (tmp_path / name).read_text() == (committed / name).read_text(), name

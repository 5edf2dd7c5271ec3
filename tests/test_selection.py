"""Rank sweeps and learning-rate selection on a tiny model: the run set, the validation split,
the choice, adoption of the chosen selection run, and kill -9 across both stages."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_sweep

from loraplace import store
from loraplace.config.study import load_study_config
from loraplace.studies.runner import run_study
from loraplace.studies.selection import choose_learning_rates


def test_the_validation_split_is_disjoint_from_train_and_eval(tiny_data_file):
    from loraplace.data.sources import load_splits
    from loraplace.settings import DataConfig

    splits = load_splits(
        DataConfig(
            dataset=str(tiny_data_file), train_examples=24, validation_examples=8, eval_examples=8
        )
    )
    texts = [
        {repr(e.prompt) for e in part} for part in (splits.train, splits.validation, splits.eval)
    ]
    assert [len(t) for t in texts] == [24, 8, 8]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    # The eval split does not move when a validation split is carved out of the pool.
    plain = load_splits(DataConfig(dataset=str(tiny_data_file), train_examples=24, eval_examples=8))
    assert [e.prompt for e in plain.eval] == [e.prompt for e in splits.eval]


def test_the_run_set_of_a_sweep_with_selection(tiny_model_dir, tiny_data_file):
    config = load_study_config(tiny_sweep(tiny_model_dir, tiny_data_file))
    keys = config.run_keys()
    selection = [k for k in keys if k.stage == "selection"]
    final = [k for k in keys if k.stage == "final"]
    assert len(selection) == 2 * 2 * 2  # strategies x ranks x learning rates, on seed 0
    assert {k.seed for k in selection} == {0} and config.training.selection_seeds == [0]
    assert len(final) == 2 * 2 * 2  # strategies x ranks x seeds
    assert {k.dirname for k in final} >= {"all--r2--seed0", "top--r4--seed1"}
    assert "selection/top--r2--lr3e-03--seed0" in {k.relpath for k in selection}
    # Each rank of the sweep is its own plan; counts grow with the rank.
    counts = {r: config.plans[("all", r)].trainable_params for r in (2, 4)}
    assert counts[4] == 2 * counts[2]


def _record(
    out: Path, name: str, rank: int, lr: float, loss, status="finished", weights=True
) -> None:
    """A selection run of seed 0; a finished one kept its checkpoints unless ``weights`` is
    false (as in a study restored from its export)."""
    key = store.RunKey(name, 0, rank, "selection", lr)
    if status == "finished" and weights:
        (key.run_dir(out) / "checkpoints").mkdir(parents=True)
    store.write_result(
        key.run_dir(out),
        {
            "name": name,
            "seed": 0,
            "rank": rank,
            "stage": "selection",
            "learning_rate": lr,
            "status": status,
            "validation_loss": loss,
        },
    )


def test_selection_picks_the_lowest_validation_loss(tiny_model_dir, tiny_data_file, tmp_path):
    config = load_study_config(tiny_sweep(tiny_model_dir, tiny_data_file))
    _record(tmp_path, "all", 2, 1e-3, 2.0)
    _record(tmp_path, "all", 2, 3e-3, 1.5)
    _record(tmp_path, "all", 4, 1e-3, 1.7)
    _record(tmp_path, "all", 4, 3e-3, None, status="failed")  # diverged
    _record(tmp_path, "top", 2, 1e-3, 3.0)  # top r2 is incomplete: no choice yet
    choices = choose_learning_rates(config, tmp_path)
    assert choices[("all", 2)].chosen == 3e-3 and choices[("all", 2)].at_edge
    assert choices[("all", 4)].chosen == 1e-3
    assert choices[("all", 4)].validation_loss == {1e-3: 1.7, 3e-3: None}
    assert ("top", 2) not in choices


def test_selection_never_reads_the_eval_split_and_the_chosen_run_is_adopted(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.studies.executors as executors

    raw = tiny_sweep(tiny_model_dir, tiny_data_file)
    config = load_study_config(raw)
    out = tmp_path / "out"
    real = executors.execute_job

    class Forbidden:
        def __getattr__(self, name):
            raise AssertionError(f"a selection run read the eval split ({name})")

    def guarded(bench, config, job, out, **kwargs):
        if job.key.stage != "selection":
            return real(bench, config, job, out, **kwargs)
        held, bench.eval = bench.eval, Forbidden()
        try:
            return real(bench, config, job, out, **kwargs)
        finally:
            bench.eval = held

    monkeypatch.setattr(executors, "execute_job", guarded)
    assert run_study(config, out, show_progress=False) == 0
    for path in (out / "selection").glob("*/result.json"):
        record = json.loads(path.read_text())
        assert record["status"] == "finished" and record["eval_loss"] is None
        assert record["validation_loss"] is not None
        assert not (path.parent / "eval_examples.jsonl").exists()
        assert not (path.parent / "checkpoints").exists()  # dropped once adopted
    choices = choose_learning_rates(config, out)
    for (name, rank), choice in choices.items():
        final0 = json.loads((out / "runs" / f"{name}--r{rank}--seed0" / "result.json").read_text())
        final1 = json.loads((out / "runs" / f"{name}--r{rank}--seed1" / "result.json").read_text())
        assert final0["learning_rate"] == final1["learning_rate"] == choice.chosen
        assert final0["selected_from"] == [1e-3, 3e-3]
        assert (
            final0["adopted_from"]
            == f"selection/{name}--r{rank}--lr{store.format_lr(choice.chosen)}--seed0"
        )
        assert "adopted_from" not in final1

    # An adopted run equals the same run trained from scratch.
    chosen = choices[("top", 4)].chosen
    single = tmp_path / "single"
    import loraplace

    fresh = loraplace.run(
        "top",
        0,
        config=out / "study.yaml",
        out=single,
        lora={"rank": 4},
        training={"learning_rate": chosen},
    )
    adopted = json.loads((out / "runs" / "top--r4--seed0" / "result.json").read_text())
    assert fresh["eval_loss"] == pytest.approx(adopted["eval_loss"], rel=1e-6)
    curve = [r for r in store.read_jsonl(single / "metrics.jsonl") if "eval_loss" in r]
    kept = [
        r
        for r in store.read_jsonl(out / "runs" / "top--r4--seed0" / "metrics.jsonl")
        if "eval_loss" in r
    ]
    assert [r["step"] for r in curve] == [r["step"] for r in kept] == [2, 4]
    assert [r["eval_loss"] for r in curve] == pytest.approx(
        [r["eval_loss"] for r in kept], rel=1e-6
    )


def test_kill_9_during_selection_then_resume_runs_everything_exactly_once(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_sweep(tiny_model_dir, tiny_data_file)
    raw["ranks"] = [2]
    raw["training"] = {**raw["training"], "steps": 12, "seeds": [0, 1]}
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "loraplace",
        "study",
        str(config_file),
        "--out",
        str(out),
        "--no-report",
    ]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 300
    while len(list((out / "selection").glob("*/result.json"))) < 1:
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.parent.name: p.read_text() for p in (out / "selection").glob("*/result.json")}
    finished = subprocess.run(command, capture_output=True, text=True, env=env)
    assert finished.returncode == 0, finished.stderr
    # Finished selection runs were kept byte for byte; every run exists exactly once.
    assert all((out / "selection" / n / "result.json").read_text() == t for n, t in done.items())
    rows = (out / "results.csv").read_text().splitlines()[1:]
    assert len(rows) == len(set(rows)) == 4 + 4  # 2 strategies x 2 lrs + 2 strategies x 2 seeds
    for path in list((out / "selection").glob("*/metrics.jsonl")) + list(
        (out / "runs").glob("*/metrics.jsonl")
    ):
        steps = [r["step"] for r in store.read_jsonl(path) if "loss" in r]
        assert steps == list(range(1, 13))


def test_a_conditions_final_runs_are_released_once_its_own_selection_is_complete(
    tiny_model_dir, tiny_data_file, tmp_path
):
    from loraplace.studies.runner import _final_release
    from loraplace.studies.selection import Job

    config = load_study_config(tiny_sweep(tiny_model_dir, tiny_data_file))
    todo_final = [k for k in config.run_keys() if k.stage == "final"]
    failures = []

    class Run:
        def record_failure(self, job, error):
            failures.append((job.key.dirname, error))

    def selection(name, rank, lr):
        return Job(store.RunKey(name, 0, rank, "selection", lr), None, lr)

    release = _final_release(config, tmp_path, todo_final, lambda jobs: jobs, Run())
    assert release() == []  # no selection run is complete
    _record(tmp_path, "all", 2, 1e-3, 2.0)
    assert release(selection("all", 2, 1e-3)) == []  # its other rate has not run
    _record(tmp_path, "all", 4, 1e-3, 1.0)
    _record(tmp_path, "all", 2, 3e-3, 1.5)
    jobs = release(selection("all", 2, 3e-3))
    # Only that condition, every seed, at its chosen rate; seed 0 adopts its selection run.
    assert [(j.key.dirname, j.learning_rate) for j in jobs] == [
        ("all--r2--seed0", 3e-3),
        ("all--r2--seed1", 3e-3),
    ]
    assert jobs[0].adopt_from == store.RunKey("all", 0, 2, "selection", 3e-3)
    assert jobs[1].adopt_from is None and jobs[0].selected_from == [1e-3, 3e-3]
    assert release(selection("all", 2, 3e-3)) == []  # released once only
    # A final run releases nothing; a condition whose every rate failed gets failed records.
    _record(tmp_path, "top", 4, 1e-3, None, status="failed")
    _record(tmp_path, "top", 4, 3e-3, None, status="failed")
    assert release(Job(store.RunKey("top", 1, 4), None, 1e-3)) == [] and not failures
    assert release(selection("top", 4, 3e-3)) == []
    assert [name for name, _ in failures] == ["top--r4--seed0", "top--r4--seed1"]
    assert all(error.startswith("no_learning_rate") for _, error in failures)
    # A study resumed after its selection ended releases every such condition at once.
    again = _final_release(config, tmp_path, todo_final, lambda jobs: jobs, Run())
    assert {j.key.dirname for j in again()} == {"all--r2--seed0", "all--r2--seed1"}
    # Restored from an export, the selection runs have no checkpoints: seed 0 is trained.
    shutil.rmtree(tmp_path)
    _record(tmp_path, "all", 2, 1e-3, 2.0, weights=False)
    _record(tmp_path, "all", 2, 3e-3, 1.5, weights=False)
    restored = _final_release(config, tmp_path, todo_final, lambda jobs: jobs, Run())()
    assert [j.key.dirname for j in restored] == ["all--r2--seed0", "all--r2--seed1"]
    assert [j.adopt_from for j in restored] == [None, None]


def test_runs_are_queued_resumed_first_then_longest_first_then_adopted(
    tiny_model_dir, tiny_data_file, tmp_path
):
    from loraplace.studies.runner import _longest_first
    from loraplace.studies.selection import Job

    config = load_study_config(tiny_sweep(tiny_model_dir, tiny_data_file))

    def timed(key, seconds):
        start = "2026-01-01T00:00:00+00:00"
        end = f"2026-01-01T00:{seconds // 60:02d}:{seconds % 60:02d}+00:00"
        store.write_result(
            key.run_dir(tmp_path),
            {"status": "finished", "started_at": start, "finished_at": end},
        )

    timed(store.RunKey("all", 0, 4, "selection", 1e-3), 600)
    timed(store.RunKey("top", 0, 2, "selection", 1e-3), 60)
    timed(store.RunKey("top", 0, 4, "selection", 1e-3), 120)
    timed(store.RunKey("top", 1, 4), 180)  # a final run times its condition too
    jobs = [
        Job(store.RunKey(name, 0, rank, "selection", 3e-3), None, 3e-3)
        for name, rank in [("top", 2), ("all", 4), ("top", 4), ("all", 2)]
    ]
    order = [j.key.condition for j in _longest_first(tmp_path, config, jobs)]
    # Untimed first (all r2), then by the mean time of the condition's finished runs.
    assert order == [("all", 2), ("all", 4), ("top", 4), ("top", 2)]
    # An interrupted run with a saved state goes first: it is finished before others start.
    resumable = jobs[0].key.run_dir(tmp_path)
    resumable.mkdir(parents=True)
    (resumable / store.RESUME_FILE).write_bytes(b"state")
    order = [j.key.condition for j in _longest_first(tmp_path, config, jobs)]
    assert order == [("top", 2), ("all", 2), ("all", 4), ("top", 4)]
    # Final runs: an adopted one only evaluates, so it goes after every run that trains.
    adopted = store.RunKey("all", 0, 4, "selection", 1e-3)
    finals = [
        Job(store.RunKey("all", 0, 4), None, 1e-3, adopt_from=adopted),
        Job(store.RunKey("top", 1, 2), None, 1e-3),
        Job(store.RunKey("all", 1, 4), None, 1e-3),
    ]
    order = [j.key for j in _longest_first(tmp_path, config, finals)]
    assert order == [finals[2].key, finals[1].key, finals[0].key]


def test_a_grid_can_grow_until_the_first_final_run(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    from loraplace.config.study import read_yaml
    from loraplace.errors import LoraplaceError
    from loraplace.studies.identity import prepare_study_dir, study_identity

    raw = tiny_sweep(tiny_model_dir, tiny_data_file)

    def with_grid(grid):
        return load_study_config({**raw, "training": {**raw["training"], "learning_rates": grid}})

    config = load_study_config(raw)
    identity = study_identity(config)
    prepare_study_dir(config, tmp_path, identity)
    _record(tmp_path, "all", 2, 1e-3, 2.0)
    wider = with_grid([1e-3, 3e-3, 1e-2])
    prepare_study_dir(wider, tmp_path, identity)
    assert "grows from 0.001, 0.003 by 0.01" in capsys.readouterr().out
    assert read_yaml(tmp_path / "study.yaml")["training"]["learning_rates"] == [1e-3, 3e-3, 1e-2]
    assert store.read_result(store.RunKey("all", 0, 2, "selection", 1e-3).run_dir(tmp_path))
    added = {k.relpath for k in wider.run_keys() if k.learning_rate == 1e-2}
    assert added == {
        f"selection/{name}--r{rank}--lr1e-02--seed0" for name in ("all", "top") for rank in (2, 4)
    }
    # Dropping or replacing a rate is another study.
    with pytest.raises(LoraplaceError, match="different config"):
        prepare_study_dir(with_grid([1e-3, 1e-2]), tmp_path, identity)
    # Once a final run is complete, its rate was chosen from the grid it saw: no growing.
    store.write_result(store.RunKey("all", 1, 2).run_dir(tmp_path), {"status": "finished"})
    with pytest.raises(LoraplaceError, match="only before the first final run"):
        prepare_study_dir(with_grid([1e-3, 3e-3, 1e-2, 3e-2]), tmp_path, identity)
    assert read_yaml(tmp_path / "study.yaml")["training"]["learning_rates"] == [1e-3, 3e-3, 1e-2]

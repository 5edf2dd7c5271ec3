"""Studies on a tiny model: validation, resume after kill -9, refusal, failure isolation."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from helpers import tiny_study

import loraplace
from loraplace.config.study import load_study_config
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.studies.runner import run_study

ROOT = Path(__file__).resolve().parents[1]


def test_every_config_problem_is_reported_at_once(tiny_model_dir, tiny_data_file):
    raw = tiny_study(tiny_model_dir, tiny_data_file, reference="basline", stratgies={})
    raw["training"] = {**raw["training"], "seeds": [0, "one"]}
    raw["strategies"] = {**raw["strategies"], "deep": "attn@0-9", "worse": "qq"}
    raw["report"] = {"lowest": "no"}
    with pytest.raises(ConfigError) as info:
        load_study_config(raw)
    message = str(info.value)
    assert "\n" not in message
    assert "unknown key 'stratgies' (did you mean 'strategies'?)" in message
    assert "training.seeds" in message and "'one'" in message
    assert "reference 'basline'" in message and "did you mean 'baseline'" in message
    assert "strategies.worse: unknown group 'qq'" in message
    assert "strategies.deep: layer 9 in '0-9' is out of range" in message
    assert "report.lowest" in message and "true or false" in message


def test_a_directory_of_other_files_is_refused_and_a_killed_start_is_taken_over(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(
        tiny_model_dir, tiny_data_file, strategies={"top": "mlp@last:1"}, reference="top"
    )
    raw["training"] = {**raw["training"], "seeds": [0]}
    raw["eval"] = {"accuracy_examples": 0}
    config = load_study_config(raw)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(LoraplaceError, match="exists and is not a loraplace study directory"):
        run_study(config, foreign, show_progress=False)
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert (foreign / "notes.txt").read_text() == "mine"
    # A start killed after its lock and identity but before study.yaml: the next one goes on.
    started = tmp_path / "started"
    started.mkdir()
    (started / ".lock").write_text("")
    (started / "identity.json").write_text("{}")
    assert run_study(config, started, show_progress=False) == 0
    assert (started / "runs" / "top--seed0" / "result.json").is_file()


def test_layers_out_of_range_are_caught_before_training(tiny_model_dir, tiny_data_file, tmp_path):
    raw = tiny_study(
        tiny_model_dir, tiny_data_file, strategies={"deep": "attn@5"}, reference="deep"
    )
    with pytest.raises(ConfigError, match="strategies.deep: layer 5 in '5' is out of range"):
        load_study_config(raw)
    config_file = tmp_path / "bad.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "loraplace", "study", str(config_file), "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1
    assert not out.exists()


def _rows(out: Path) -> list[dict]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def test_a_failed_run_is_recorded_and_the_study_goes_on(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.studies.executors as executors

    real = executors.train_one

    def flaky(bench, plan, key, out_dir, **kwargs):
        if plan.name == "attention-only" and key.seed == 1:
            raise RuntimeError("simulated crash in one run")
        return real(bench, plan, key, out_dir, **kwargs)

    monkeypatch.setattr(executors, "train_one", flaky)
    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    out = tmp_path / "study"
    code = loraplace.study(config, out=out, show_progress=False)
    assert code == 1
    rows = _rows(out)
    assert len(rows) == 6
    failed = [r for r in rows if r["status"] == "failed"]
    assert [(r["name"], r["seed"]) for r in failed] == [("attention-only", "1")]
    assert "simulated crash" in failed[0]["error"]
    assert (out / "runs" / "attention-only--seed1" / "traceback.txt").is_file()
    assert (out / "report" / "summary.csv").is_file()
    assert "simulated crash" in (out / "report" / "report.md").read_text()

    # A different config is refused in the same directory; nothing there changes.
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    other = load_study_config(
        tiny_study(tiny_model_dir, tiny_data_file, lora={"rank": 8, "alpha": 16, "dropout": 0.0})
    )
    with pytest.raises(LoraplaceError, match="different config.*lora.*--out"):
        run_study(other, out, show_progress=False)
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    # Rerunning the same config redoes nothing; --retry-failed reruns only the failure.
    monkeypatch.setattr(executors, "train_one", real)
    stamps = {r["run_dir"]: (out / r["run_dir"] / "result.json").stat().st_mtime_ns for r in rows}
    assert run_study(config, out, show_progress=False) == 1
    assert stamps == {
        r["run_dir"]: (out / r["run_dir"] / "result.json").stat().st_mtime_ns for r in rows
    }
    assert run_study(config, out, show_progress=False, retry_failed=True) == 0
    assert all(r["status"] == "finished" for r in _rows(out))

    # Changing only the seed list is allowed in place: runs are keyed by seed, nothing is redone.
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "seeds": [1]}
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    assert sorted(r["seed"] for r in _rows(out)) == ["1", "1", "1"]
    assert yaml.safe_load((out / "study.yaml").read_text())["training"]["seeds"] == [1]


def test_the_base_evaluation_is_stored_once_and_reused_on_resume(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.training.workbench as workbench

    calls = []
    real = workbench.eval_losses

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(workbench, "eval_losses", counting)
    raw = tiny_study(
        tiny_model_dir, tiny_data_file, strategies={"top": "mlp@last:1"}, reference="top"
    )
    raw["training"] = {**raw["training"], "seeds": [0]}
    out = tmp_path / "study"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    assert len(calls) == 1
    base = json.loads((out / "base.json").read_text())
    assert base["settings"]["device"] == "cpu" and base["eval_time_s"] > 0

    # A new process on the same study (here: one more seed) reads the record instead of evaluating.
    raw["training"] = {**raw["training"], "seeds": [0, 1]}
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    assert len(calls) == 1
    seed1 = json.loads((out / "runs" / "top--seed1" / "result.json").read_text())
    assert (seed1["base_eval_loss"], seed1["base_accuracy"]) == (
        base["eval_loss"],
        base["accuracy"],
    )

    # A record made under other settings (another device) is not trusted: evaluated again.
    (out / "base.json").write_text(
        json.dumps({**base, "settings": {**base["settings"], "device": "cuda"}, "eval_loss": 99.0})
    )
    raw["training"] = {**raw["training"], "seeds": [0, 1, 2]}
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    assert len(calls) == 2
    seed2 = json.loads((out / "runs" / "top--seed2" / "result.json").read_text())
    assert seed2["base_eval_loss"] == pytest.approx(base["eval_loss"], rel=1e-6)
    assert json.loads((out / "base.json").read_text())["settings"]["device"] == "cpu"


def _launch(config_file: Path, out: Path) -> subprocess.Popen:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "loraplace",
            "study",
            str(config_file),
            "--out",
            str(out),
            "--no-report",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not predicate():
        assert proc.poll() is None, "study finished before the kill point"
        assert time.time() < deadline, "kill point never reached"
        time.sleep(0.05)


def test_kill_9_at_several_points_then_resume_completes_without_duplicates(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"accuracy_examples": 0}
    raw["training"] = {**raw["training"], "steps": 12}  # a wider window for the first kill
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    runs = out / "runs"

    # Kill point 1: as soon as the first run's training has begun (its curve file is open).
    # On a fast machine the run may still complete first; the checks below hold either way.
    proc = _launch(config_file, out)
    _wait_for(lambda: (runs / "baseline--seed0" / "metrics.jsonl").is_file(), proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()

    # Kill point 2: right after a run completed, while the next one is under way.
    proc = _launch(config_file, out)
    _wait_for(lambda: len(list(runs.glob("*/result.json"))) >= 2, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.parent.name: p.read_text() for p in runs.glob("*/result.json")}
    assert len(done_before) >= 2

    proc = _launch(config_file, out)
    assert proc.wait(timeout=600) == 0
    rows = _rows(out)
    pairs = [(r["name"], r["seed"]) for r in rows]
    assert sorted(pairs) == sorted(
        (name, str(seed)) for name in raw["strategies"] for seed in (0, 1)
    )
    assert len(set(pairs)) == len(pairs) == 6
    # Finished runs were not redone: their records are byte-identical.
    assert all(
        (runs / name / "result.json").read_text() == text for name, text in done_before.items()
    )
    for row in rows:
        result = json.loads((out / row["run_dir"] / "result.json").read_text())
        assert result["status"] == "finished"
        lines = [
            json.loads(x) for x in (out / row["run_dir"] / "metrics.jsonl").read_text().splitlines()
        ]
        assert [r["step"] for r in lines if "loss" in r] == list(range(1, 13))


def test_a_lost_ray_worker_leaves_a_failed_result_with_the_plan(
    tiny_model_dir, tiny_data_file, tmp_path
):
    # When a Ray worker dies, no workbench is left to describe the run: the driver writes the
    # failed result from the plan it already holds, and the study treats it like any failure.
    from loraplace.store import RunKey
    from loraplace.studies.executors import make_executor
    from loraplace.studies.selection import Job

    config = load_study_config(tiny_study(tiny_model_dir, tiny_data_file))
    key = RunKey("top", 1)
    with make_executor("local", config, tmp_path, "token", False) as executor:
        executor.record_failure(
            Job(key, config.plan_for(key), 1e-3), "out_of_memory: worker killed"
        )
    result = json.loads((tmp_path / "runs" / "top--seed1" / "result.json").read_text())
    plan = config.plan_for(key)
    assert (result["status"], result["error"]) == ("failed", "out_of_memory: worker killed")
    assert (result["name"], result["seed"], result["spec"]) == ("top", 1, "mlp@last:1")
    assert result["trainable_params"] == plan.trainable_params > 0
    assert result["eval_loss"] is None and result["finished_at"]


def test_run_with_a_study_config_gives_the_study_runs_eval_loss(
    tiny_model_dir, tiny_data_file, tmp_path
):
    # One source of settings: `run --config` trains strategy S with seed k exactly as the study
    # does (same data, plan, batches, initialisation and code path).
    from loraplace.cli.main import main

    raw = tiny_study(tiny_model_dir, tiny_data_file)
    raw["eval"] = {"accuracy_examples": 0}
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "study"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    for name, seed in (("top", 1), ("baseline", 0)):
        single = tmp_path / f"single-{name}"
        args = ["run", "--config", str(config_file), "--strategy", name, "--seed", str(seed)]
        assert main([*args, "--out", str(single)]) == 0
        ours = json.loads((single / "result.json").read_text())
        theirs = json.loads((out / "runs" / f"{name}--seed{seed}" / "result.json").read_text())
        assert ours["eval_loss"] == theirs["eval_loss"]
        assert ours["spec"] == theirs["spec"] and ours["train_tokens"] == theirs["train_tokens"]

"""Fault injection: a study directory that nothing can corrupt.

Each test is one case a hostile or careless user hit: two processes on one directory, colliding
strategy names, data changed under a study, an interrupted ``run --force``, a full disk, paths
and names that would write elsewhere, and inputs that used to print a traceback instead of a
one-line error.
"""

from __future__ import annotations

import errno
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

from loraplace.config.study import load_study_config
from loraplace.errors import ConfigError, LoraplaceError
from loraplace.studies.runner import run_study


def _small(model_dir, data_file, **overrides) -> dict:
    raw = tiny_study(model_dir, data_file, **overrides)
    raw["eval"] = {"accuracy_examples": 0}
    raw["strategies"] = overrides.get("strategies", {"baseline": "all", "top": "mlp@last:1"})
    raw["reference"] = next(iter(raw["strategies"]))
    raw["training"] = {**raw["training"], "seeds": [0]}
    return raw


def _cli(*args, cwd=None, stdin=None) -> subprocess.CompletedProcess:
    env = {**os.environ, "TQDM_DISABLE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "loraplace", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        input=stdin,
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loraplace: error:"), proc.stderr
    assert "Traceback" not in proc.stderr
    return lines[0]


def _files(root: Path) -> dict:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} if root.exists() else {}


# --- 1. two processes on one study directory -------------------------------------------------


def test_a_second_process_is_refused_and_a_killed_holder_is_taken_over(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = _small(tiny_model_dir, tiny_data_file)
    raw["training"] = {**raw["training"], "steps": 40}
    config_file = tmp_path / "study.yaml"
    config_file.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    first = subprocess.Popen(
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
    try:
        deadline = time.time() + 300
        lock = out / ".lock"
        while not (lock.is_file() and lock.read_text().strip()):
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        # Freeze the holder with its lock held, so that it cannot finish before the second
        # process asks (a fast machine trains the tiny study in less than a process start).
        os.kill(first.pid, signal.SIGSTOP)
        assert first.poll() is None and lock.read_text().strip()
        second = _cli("study", config_file, "--out", out, "--no-report")
        message = _one_line_error(second)
        assert f"pid {first.pid}" in message and "in use" in message
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
    # The kernel released the dead holder's flock: the next process takes over and finishes.
    third = _cli("study", config_file, "--out", out, "--no-report")
    assert third.returncode == 0, third.stderr
    results = [json.loads(p.read_text()) for p in (out / "runs").glob("*/result.json")]
    assert sorted(r["name"] for r in results) == ["baseline", "top"]
    assert all(r["status"] == "finished" for r in results)
    for path in (out / "runs").glob("*/metrics.jsonl"):
        text = path.read_text()
        assert "\x00" not in text
        assert all(json.loads(line) for line in text.splitlines())


# --- 2. names that would share a run directory ------------------------------------------------


@pytest.mark.parametrize(
    "strategies, words",
    [
        ({"a/b": "all", "a_b": "attn"}, ["'a/b'", "'a_b'", "same run directory"]),
        ({"a b": "all", "a_b": "attn"}, ["'a b'", "'a_b'", "same run directory"]),
        (["attn", "attn"], ["'attn' is listed twice"]),
    ],
)
def test_colliding_or_duplicate_strategy_names_are_refused(
    tiny_model_dir, tiny_data_file, strategies, words
):
    raw = tiny_study(tiny_model_dir, tiny_data_file, strategies=strategies, reference=None)
    raw.pop("reference")
    with pytest.raises(ConfigError) as info:
        load_study_config(raw)
    assert all(w in str(info.value) for w in words), str(info.value)


def test_duplicate_yaml_keys_are_refused_at_the_command_line(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = tiny_study(tiny_model_dir, tiny_data_file)
    text = yaml.safe_dump(raw) + "strategies: {x: all}\n"
    (tmp_path / "dup.yaml").write_text(text)
    message = _one_line_error(_cli("study", tmp_path / "dup.yaml", "--out", tmp_path / "out"))
    assert "strategies" in message and "duplicate" in message.lower()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ""])
def test_a_study_name_must_be_a_plain_name(tiny_model_dir, tiny_data_file, name):
    with pytest.raises(ConfigError, match="plain name"):
        load_study_config(tiny_study(tiny_model_dir, tiny_data_file, name=name))


# --- 3. the data or the model changed under a study --------------------------------------------


def test_resume_after_the_data_changed_is_refused(tiny_model_dir, tiny_data_file, tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text(tiny_data_file.read_text())
    raw = _small(tiny_model_dir, data, strategies={"top": "mlp@last:1"})
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    with open(data, "a") as handle:
        handle.write(json.dumps({"instruction": "1 + 1?", "input": "", "output": "#### 2"}) + "\n")
    raw["training"] = {**raw["training"], "seeds": [0, 1]}
    before = _files(out)
    with pytest.raises(LoraplaceError, match="different data.*changed"):
        run_study(load_study_config(raw), out, show_progress=False)
    assert _files(out) == before


def test_resume_after_the_model_changed_is_refused(tiny_data_file, tmp_path):
    from conftest import make_tiny_model_dir

    model = make_tiny_model_dir(tmp_path / "model", seed=0)
    raw = _small(model, tiny_data_file, strategies={"top": "mlp@last:1"})
    out = tmp_path / "out"
    assert run_study(load_study_config(raw), out, show_progress=False) == 0
    make_tiny_model_dir(tmp_path / "model", seed=1)  # same config, other weights
    with pytest.raises(LoraplaceError, match="different model"):
        run_study(load_study_config(raw), out, show_progress=False)


# --- 4. an interrupted run --force --------------------------------------------------------------


def _run_args(model_dir, data_file, out, *extra) -> list[str]:
    return [
        "run",
        "--model",
        str(model_dir),
        "--dataset",
        str(data_file),
        "--train-examples",
        "24",
        "--eval-examples",
        "8",
        "--max-length",
        "96",
        "--steps",
        "2",
        "--strategy",
        "attn",
        "--out",
        str(out),
        *extra,
    ]


def test_an_interrupted_forced_run_leaves_no_stale_result(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.training.run as run
    from loraplace.cli.main import main

    out = tmp_path / "single"
    args = _run_args(tiny_model_dir, tiny_data_file, out)
    assert main(args) == 0
    (out / "generations.jsonl").write_text("{}\n")  # a file the new run would not write

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(run, "train_adapter", interrupted)
    assert main([*args, "--force"]) == 130
    assert not (out / "result.json").exists()
    assert not (out / "generations.jsonl").exists()


@pytest.mark.parametrize("force", [False, True])
def test_run_never_removes_what_a_run_did_not_write(
    tiny_model_dir, tiny_data_file, tmp_path, force
):
    # A directory with a user's file, and a study directory: refused, with or without --force.
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "precious.txt").write_text("keep")
    study = tmp_path / "study"
    (study / "runs").mkdir(parents=True)
    (study / "study.yaml").write_text("name: x\n")
    for out in (mine, study):
        before = _files(out)
        extra = ["--force"] if force else []
        proc = _cli(*_run_args(tiny_model_dir, tiny_data_file, out, *extra))
        assert "holds files no run writes" in _one_line_error(proc)
        assert _files(out) == before


def test_a_run_that_fails_to_load_removes_nothing(tiny_model_dir, tiny_data_file, tmp_path):
    out = tmp_path / "single"
    assert _cli(*_run_args(tiny_model_dir, tiny_data_file, out)).returncode == 0
    before = _files(out)
    proc = _cli(*_run_args(tiny_model_dir, tmp_path / "missing.jsonl", out, "--force"))
    assert "not found" in _one_line_error(proc)
    assert _files(out) == before


def test_run_into_an_unwritable_out_is_one_line(tiny_model_dir, tiny_data_file):
    proc = _cli(*_run_args(tiny_model_dir, tiny_data_file, "/proc/loraplace-x"))
    assert "cannot write to '/proc/loraplace-x'" in _one_line_error(proc)


# --- 5. the disk fills up -------------------------------------------------------------------------


def test_a_full_disk_stops_the_study_with_one_line_and_resume_finishes_it(
    tiny_model_dir, tiny_data_file, tmp_path, monkeypatch
):
    import loraplace.store as store

    raw = _small(tiny_model_dir, tiny_data_file)
    config = load_study_config(raw)
    out = tmp_path / "out"
    real = store.write_eval_examples

    def full(path, rows):
        if "runs" in Path(path).parts:  # the disk fills up during the first run
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(path, rows)

    monkeypatch.setattr(store, "write_eval_examples", full)
    with pytest.raises(store.DiskFullError, match="disk full"):
        run_study(config, out, show_progress=False)
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"
    first = json.loads((out / "runs" / "baseline--seed0" / "result.json").read_text())
    assert first["status"] == "failed" and first["error"].startswith("disk_full")
    assert not (out / "runs" / "top--seed0").exists(), "the study went on after a full disk"

    monkeypatch.setattr(store, "write_eval_examples", real)
    assert run_study(config, out, show_progress=False) == 0
    for name in ("baseline", "top"):
        result = json.loads((out / "runs" / f"{name}--seed0" / "result.json").read_text())
        assert result["status"] == "finished"


def test_a_full_disk_is_one_line_at_the_command_line(tmp_path):
    # The atomic writer turns ENOSPC into DiskFullError and removes its temporary file.
    import loraplace.store as store

    target = tmp_path / "x.json"

    class Full:
        def __init__(self, fd, *a, **k):
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    real = os.fdopen
    os.fdopen = Full
    try:
        with pytest.raises(store.DiskFullError, match="disk full while writing"):
            store.write_json_atomic(target, {"a": 1})
    finally:
        os.fdopen = real
    assert list(tmp_path.iterdir()) == []


# --- 6, 7 and the traceback list: one-line errors, nothing written ----------------------------


def test_out_pointing_at_a_file_is_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_small(tiny_model_dir, tiny_data_file)))
    (tmp_path / "file").write_text("x")
    message = _one_line_error(_cli("study", tmp_path / "s.yaml", "--out", tmp_path / "file"))
    assert "is a file" in message
    assert (tmp_path / "file").read_text() == "x"


def test_an_unwritable_out_is_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_small(tiny_model_dir, tiny_data_file)))
    # /proc refuses new directories even to root, unlike a chmod-ed directory.
    message = _one_line_error(_cli("study", tmp_path / "s.yaml", "--out", "/proc/loraplace-x"))
    assert "cannot create study directory" in message


@pytest.mark.parametrize("text", ["- a\n- b\n", "name: [unclosed\n", "a: &x 1\nb: *x\n"])
def test_a_study_yaml_that_is_not_a_mapping_is_one_line(text, tmp_path):
    (tmp_path / "s.yaml").write_text(text)
    _one_line_error(_cli("study", tmp_path / "s.yaml", "--out", tmp_path / "out"))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("seed", ["-1", str(2**32)])
def test_out_of_range_seeds_are_one_line(seed, tiny_model_dir, tiny_data_file, tmp_path):
    proc = _cli(
        "run",
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_data_file,
        "--strategy",
        "attn",
        "--seed",
        seed,
        "--out",
        tmp_path / "r",
    )
    assert "training.seeds" in _one_line_error(proc)
    assert not (tmp_path / "r").exists()


def test_fewer_train_examples_than_a_batch_is_one_line(tiny_model_dir, tiny_data_file, tmp_path):
    proc = _cli(
        "run",
        "--model",
        tiny_model_dir,
        "--dataset",
        tiny_data_file,
        "--strategy",
        "attn",
        "--train-examples",
        "3",
        "--eval-examples",
        "8",
        "--batch-size",
        "4",
        "--out",
        tmp_path / "r",
    )
    assert "a batch" in _one_line_error(proc)


def test_a_typo_in_the_data_path_writes_nothing(tiny_model_dir, tiny_data_file, tmp_path):
    raw = _small(tiny_model_dir, tmp_path / "typo.jsonl")
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert "not found" in _one_line_error(_cli("study", tmp_path / "s.yaml", "--out", out))
    assert not (out / "study.yaml").exists()
    # The corrected config is then accepted in the same directory.
    raw["data"]["dataset"] = str(tiny_data_file)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert _cli("study", tmp_path / "s.yaml", "--out", out, "--no-report").returncode == 0


def test_a_new_study_whose_data_fails_to_load_keeps_no_config(
    tiny_model_dir, tiny_data_file, tmp_path
):
    raw = _small(tiny_model_dir, tiny_data_file)
    raw["data"] = {**raw["data"], "max_length": 8}  # every example is too long
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    proc = _cli("study", tmp_path / "s.yaml", "--out", out)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("loraplace: error:")
    assert "max_length" in proc.stderr
    assert not (out / "study.yaml").exists() and not (out / "identity.json").exists()
    raw["data"]["max_length"] = 96
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(raw))
    assert _cli("study", tmp_path / "s.yaml", "--out", out, "--no-report").returncode == 0


def test_dropping_many_long_examples_is_one_warning_line_at_the_command_line(
    tiny_model_dir, tiny_data_file, tmp_path
):
    proc = _cli(*_run_args(tiny_model_dir, tiny_data_file, tmp_path / "r", "--max-length", "38"))
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "dropped" in line]
    assert warned and all(line.startswith("loraplace: warning: ") for line in warned)


def test_tqdm_disable_turns_the_bars_off(monkeypatch):
    from loraplace.progress import bar

    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert bar(3, "x").disable
    monkeypatch.delenv("TQDM_DISABLE")
    assert bar(3, "x", show=False).disable
    assert not bar(3, "x").disable


def test_dropping_many_long_examples_warns(tiny_model_dir, tiny_data_file):
    from loraplace.settings import DataConfig
    from loraplace.training.workbench import Workbench

    with pytest.warns(UserWarning, match="dropped"):
        Workbench.load(
            str(tiny_model_dir),
            DataConfig(
                dataset=str(tiny_data_file), train_examples=24, eval_examples=8, max_length=38
            ),
        )


def test_an_absurd_ray_section_is_refused(tiny_model_dir, tiny_data_file):
    raw = tiny_study(tiny_model_dir, tiny_data_file, ray={"cpus_per_run": -1, "gpus_per_run": "x"})
    with pytest.raises(ConfigError) as info:
        load_study_config(raw)
    assert "ray.cpus_per_run" in str(info.value) and "ray.gpus_per_run" in str(info.value)

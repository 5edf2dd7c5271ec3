"""Issue #44, the filesystem half: nothing outside the directory loraplace writes is touched,
and nothing inside is lost.

Each test is one case of a hostile round on a finished tiny study (two strategies, one seed): a
destination that holds someone else's files, two runs on one ``--out``, links and special files
planted in a study directory, records with a bad line or a field of the wrong type, a damaged
reuse donor, an interrupted export. The last test builds random study directories with links
and special files and checks that export, report and status write no byte outside.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from helpers import tiny_study
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loraplace import store
from loraplace.cli.main import main
from loraplace.config.study import load_study_config
from loraplace.errors import LoraplaceError
from loraplace.report.build import write_report
from loraplace.report.load import load_study, read_importance
from loraplace.studies import export as export_module
from loraplace.studies.export import export_study
from loraplace.studies.lock import StudyLock, lock_holder
from loraplace.studies.runner import run_study
from loraplace.studies.status import study_status

SECRET = b"not loraplace's\n"
#: What an outside file that a study directory hard-links holds: a hard link is the study's own
#: file too, so an export may carry its bytes (it must never write them).
SHARED = b"shared by a hard link\n"


def _raw(model_dir, data_file, **overrides) -> dict:
    raw = tiny_study(model_dir, data_file, **overrides)
    raw["eval"] = {"accuracy_examples": 0}
    raw["strategies"] = {"baseline": "all", "top": "mlp@last:1"}
    raw["reference"] = "baseline"
    raw["training"] = {**raw["training"], "seeds": [0]}
    return raw


@pytest.fixture(scope="module")
def golden(tmp_path_factory, tiny_model_dir, tiny_data_file) -> Path:
    """A finished tiny study with its report (copy it before changing it)."""
    out = tmp_path_factory.mktemp("golden") / "study"
    config = load_study_config(_raw(tiny_model_dir, tiny_data_file))
    assert run_study(config, out, show_progress=False) == 0
    write_report(out)
    return out


def _copy(golden: Path, where: Path) -> Path:
    shutil.copytree(golden, where, symlinks=True)
    return where


def _outside(root: Path) -> Path:
    """A directory that no command may change: a file and a directory holding one."""
    outside = root / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "secret.txt").write_bytes(SECRET)
    (outside / "dir" / "x.txt").write_bytes(SECRET)
    (outside / "shared.txt").write_bytes(SHARED)
    return outside


def _snapshot(root: Path) -> dict:
    """Every entry below ``root``, not following links: its kind, and a file's bytes and
    modification time."""
    out = {}
    for top, dirs, names in os.walk(root):
        for name in dirs + names:
            path = Path(top) / name
            info = os.lstat(path)
            data = path.read_bytes() if path.is_file() and not path.is_symlink() else None
            out[str(path.relative_to(root))] = (info.st_mode >> 12, info.st_mtime_ns, data)
    return out


def _cli(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _one_line_error(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loraplace: error:"), err
    return lines[0]


def _contents(root: Path) -> list[bytes]:
    return [p.read_bytes() for p in root.rglob("*") if p.is_file() and not p.is_symlink()]


# --- 1. export into a directory of someone else's files ---------------------------------------


def test_export_refuses_a_directory_that_holds_other_files(golden, tmp_path, capsys):
    user = tmp_path / "u"
    (user / "runs" / "myproject").mkdir(parents=True)
    (user / "report").mkdir()
    (user / "runs" / "myproject" / "important.txt").write_text("data\n")
    (user / "results.csv").write_text("mine\n")
    (user / "report" / "report.md").write_text("mine\n")
    before = _snapshot(user)
    message = _one_line_error(*_cli(capsys, "export", golden, user)[::2])
    assert "not empty" in message and "nothing was changed" in message
    assert _snapshot(user) == before


def _dest_file(tmp_path, src):
    (tmp_path / "file").write_bytes(SECRET)
    return tmp_path / "file", "not a directory"


def _dest_fifo(tmp_path, src):
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo", "not a directory"


def _dest_dangling(tmp_path, src):
    os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
    return tmp_path / "dangling", "not a directory"


def _dest_under_a_file(tmp_path, src):
    (tmp_path / "file").write_bytes(SECRET)
    return tmp_path / "file" / "sub", "Not a directory"


def _dest_itself(tmp_path, src):
    return src, "the study directory itself"


def _dest_link_to_itself(tmp_path, src):
    os.symlink(src, tmp_path / "link")
    return tmp_path / "link", "the study directory itself"


def _dest_inside(tmp_path, src):
    return src / "copy", "inside the study directory"


@pytest.mark.parametrize(
    "destination",
    [
        _dest_file,
        _dest_fifo,
        _dest_dangling,
        _dest_under_a_file,
        _dest_itself,
        _dest_link_to_itself,
        _dest_inside,
    ],
    ids=lambda f: f.__name__[6:],
)
def test_export_refuses_a_destination_it_cannot_write_with_one_line(
    golden, tmp_path, capsys, destination
):
    src = _copy(golden, tmp_path / "s")
    dst, words = destination(tmp_path, src)
    before = _snapshot(tmp_path)
    message = _one_line_error(*_cli(capsys, "export", src, dst)[::2])
    assert words in message
    assert _snapshot(tmp_path) == before


def test_export_refuses_an_earlier_export_with_a_link_among_its_directories(golden, tmp_path):
    outside = _outside(tmp_path)
    dst = tmp_path / "exp"
    export_study(golden, dst)
    shutil.rmtree(dst / "runs")
    os.symlink(outside / "dir", dst / "runs")
    before = _snapshot(outside)
    with pytest.raises(LoraplaceError, match="is a symbolic link"):
        export_study(golden, dst)
    assert _snapshot(outside) == before


def test_export_replaces_a_linked_file_of_an_earlier_export_and_keeps_other_files(golden, tmp_path):
    outside = _outside(tmp_path)
    dst = tmp_path / "exp"
    export_study(golden, dst)
    (dst / "RUNLOG.md").write_text("mine\n")  # a file no export writes stays
    for name in ("results.csv", "runs/top--seed0/result.json", store.EXPORT_MARKER):
        (dst / name).unlink(missing_ok=True)
        os.symlink(outside / "secret.txt", dst / name)
    before = _snapshot(outside)
    export_study(golden, dst)
    assert _snapshot(outside) == before
    assert (dst / "RUNLOG.md").read_text() == "mine\n"
    assert not (dst / "results.csv").is_symlink()
    assert (dst / "results.csv").read_bytes() == (golden / "results.csv").read_bytes()
    assert not os.path.lexists(dst / store.EXPORT_MARKER)


def test_export_refuses_a_destination_a_study_process_holds(golden, tmp_path):
    dst = tmp_path / "exp"
    export_study(golden, dst)
    with StudyLock(dst):
        with pytest.raises(LoraplaceError, match=f"in use by pid {os.getpid()}"):
            export_study(golden, dst)


# --- 2. two runs on one --out ------------------------------------------------------------------


def test_a_second_run_on_the_same_out_is_refused_with_its_holder(
    tiny_model_dir, tiny_data_file, tmp_path, capsys
):
    out = tmp_path / "run"
    config = tmp_path / "study.yaml"
    config.write_text(json.dumps(_raw(tiny_model_dir, tiny_data_file)))
    args = ["run", "--config", config, "--out", out, "--strategy", "mlp", "--steps", "2"]
    with StudyLock(out):  # another run, under way
        holder = lock_holder(out)
        before = _snapshot(out)
        message = _one_line_error(*_cli(capsys, *args)[::2])
        assert _snapshot(out) == before  # nothing trained, nothing removed
    assert f"run directory '{out}' is in use by pid {os.getpid()}" in message
    assert holder["host"] in message and holder["started_at"] in message
    # Once it is released, the run goes ahead and keeps its lock file beside its record.
    code, _, err = _cli(capsys, *args)
    assert code == 0, err
    assert store.read_result(out)["spec"] == "mlp"
    assert lock_holder(out) is None


# --- 4. links and special files where loraplace writes ----------------------------------------


@pytest.mark.parametrize("kind", ["link", "hard link", "fifo"])
def test_a_lock_file_that_is_not_the_directorys_own_is_refused(golden, tmp_path, kind):
    outside = _outside(tmp_path)
    study = _copy(golden, tmp_path / "s")
    (study / ".lock").unlink()
    if kind == "link":
        os.symlink(outside / "secret.txt", study / ".lock")
    elif kind == "hard link":
        os.link(outside / "secret.txt", study / ".lock")
    else:
        os.mkfifo(study / ".lock")
    before = _snapshot(outside)
    with pytest.raises(LoraplaceError, match="link|not a regular file"):
        StudyLock(study).acquire()
    assert lock_holder(study) is None  # status neither blocks nor follows it
    assert _snapshot(outside) == before


@pytest.mark.parametrize(
    "entry", ["runs", "runs/top--seed0", "runs/top--seed0/adapter", "report", "auto"]
)
def test_a_study_with_a_linked_directory_is_refused_before_anything_is_written(
    golden, tmp_path, tiny_model_dir, tiny_data_file, entry
):
    outside = _outside(tmp_path)
    study = _copy(golden, tmp_path / "s")
    if (study / entry).exists():
        shutil.move(study / entry, outside / "moved")
    os.symlink(outside / "dir", study / entry)
    before, inside = _snapshot(outside), _snapshot(study)
    config = load_study_config(_raw(tiny_model_dir, tiny_data_file))
    with pytest.raises(LoraplaceError, match="is a symbolic link"):
        run_study(config, study, show_progress=False)
    assert _snapshot(outside) == before
    assert {k: v for k, v in _snapshot(study).items() if k != ".lock"} == {
        k: v for k, v in inside.items() if k != ".lock"
    }


def test_report_refuses_a_linked_report_directory(golden, tmp_path, capsys):
    outside = _outside(tmp_path)
    study = _copy(golden, tmp_path / "s")
    shutil.rmtree(study / "report")
    os.symlink(outside / "dir", study / "report")
    before = _snapshot(outside)
    message = _one_line_error(*_cli(capsys, "report", study)[::2])
    assert "report' is a symbolic link" in message
    assert _snapshot(outside) == before


@pytest.mark.parametrize("kind", ["link", "hard link", "fifo"])
@pytest.mark.parametrize("name", ["pareto.png", "report.md", "summary.csv"])
def test_report_replaces_a_linked_or_special_report_file_without_writing_through_it(
    golden, tmp_path, capsys, kind, name
):
    outside = _outside(tmp_path)
    study = _copy(golden, tmp_path / "s")
    target = study / "report" / name
    target.unlink()
    if kind == "link":
        os.symlink(outside / "secret.txt", target)
    elif kind == "hard link":
        os.link(outside / "secret.txt", target)
    else:
        os.mkfifo(target)
    before = _snapshot(outside)
    code, _, err = _cli(capsys, "report", study)
    assert code == 0, err
    assert _snapshot(outside) == before
    assert target.is_file() and not target.is_symlink() and target.stat().st_nlink == 1


def test_figures_and_importance_files_are_written_atomically_never_through_a_link(tmp_path):
    import matplotlib.pyplot as plt

    from loraplace.autoplace.importance import write_importance
    from loraplace.placement.arch import classify
    from loraplace.report.figures import save_figure

    outside = _outside(tmp_path)
    before = _snapshot(outside)
    os.symlink(outside / "secret.txt", tmp_path / "figure.png")
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    save_figure(fig, tmp_path / "figure.png")
    assert (tmp_path / "figure.png").read_bytes().startswith(b"\x89PNG")

    from transformers import AutoModelForCausalLM, LlamaConfig

    model = AutoModelForCausalLM.from_config(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    )
    place = tmp_path / "place"
    place.mkdir()
    for name in ("importance.csv", "importance.png"):
        os.symlink(outside / "secret.txt", place / name)
    arch = classify(model)
    write_importance(place, arch, None, [arch.projections[0].name])
    assert _snapshot(outside) == before
    assert not (place / "importance.csv").is_symlink()
    assert read_importance(place / "importance.csv")[1]  # the chosen module is read back


def test_metrics_are_never_appended_through_a_link(tmp_path):
    outside = _outside(tmp_path)
    os.symlink(outside / "secret.txt", tmp_path / "metrics.jsonl")
    with pytest.raises(LoraplaceError, match="is a symbolic link"):
        store.open_append(tmp_path / "metrics.jsonl")
    os.unlink(tmp_path / "metrics.jsonl")
    os.link(outside / "secret.txt", tmp_path / "metrics.jsonl")
    with pytest.raises(LoraplaceError, match="another hard link"):
        store.open_append(tmp_path / "metrics.jsonl", truncate=True)
    assert (outside / "secret.txt").read_bytes() == SECRET


# --- 5. export and reuse copy regular files only -----------------------------------------------


def test_export_copies_regular_files_only_and_says_what_it_passed_over(golden, tmp_path, capsys):
    outside = _outside(tmp_path)
    study = _copy(golden, tmp_path / "s")
    metrics = study / "runs" / "top--seed0" / "metrics.jsonl"
    metrics.unlink()
    os.symlink(outside / "secret.txt", metrics)
    os.symlink(outside / "dir", study / "runs" / "top--seed0" / "extra")
    os.symlink(outside / "dir", study / "auto")
    os.mkfifo(study / "runs" / "baseline--seed0" / "pipe")
    before = _snapshot(outside)
    code, out, err = _cli(capsys, "export", study, tmp_path / "exp")
    assert code == 0, err
    assert _snapshot(outside) == before
    assert SECRET not in _contents(tmp_path / "exp")
    assert not (tmp_path / "exp" / "runs" / "top--seed0" / "metrics.jsonl").exists()
    assert not (tmp_path / "exp" / "auto").exists()
    (note,) = err.strip().splitlines()
    assert note.startswith("loraplace: note: 4 link(s) or special file(s)")
    assert note.endswith("auto, runs/baseline--seed0/pipe, runs/top--seed0/extra and 1 more")
    assert not os.path.lexists(tmp_path / "exp" / store.EXPORT_MARKER)


def _reuse_from(donor: Path, tmp_path, model_dir, data_file, capsys) -> tuple[Path, str, str]:
    config = load_study_config(_raw(model_dir, data_file, reuse=[str(donor)]))
    out = tmp_path / "taker"
    assert run_study(config, out, show_progress=False) == 0
    captured = capsys.readouterr()
    return out, captured.out, captured.err


def test_reuse_copies_regular_files_only(golden, tmp_path, tiny_model_dir, tiny_data_file, capsys):
    outside = _outside(tmp_path)
    donor = _copy(golden, tmp_path / "donor")
    run = donor / "runs" / "top--seed0"
    (run / "metrics.jsonl").unlink()
    os.symlink(outside / "secret.txt", run / "metrics.jsonl")
    os.symlink(outside / "dir", run / "linked")
    os.mkfifo(run / "adapter" / "pipe")
    before = _snapshot(outside)
    out, stdout, stderr = _reuse_from(donor, tmp_path, tiny_model_dir, tiny_data_file, capsys)
    assert _snapshot(outside) == before
    assert "2 runs copied" in stdout
    assert SECRET not in _contents(out)
    assert not (out / "runs" / "top--seed0" / "linked").exists()
    assert (out / "runs" / "top--seed0" / "adapter" / "adapter_model.safetensors").is_file()
    assert "loraplace: note: reuse copies regular files only" in stderr
    assert "metrics.jsonl" in stderr and "adapter/pipe" in stderr


# --- 9. a damaged donor record -----------------------------------------------------------------


@pytest.mark.parametrize(
    "field, value, kind", [("versions", "2.0", "a string"), ("hardware", ["cpu"], "a list")]
)
def test_a_damaged_donor_record_skips_that_run_with_a_note(
    golden, tmp_path, tiny_model_dir, tiny_data_file, capsys, field, value, kind
):
    donor = _copy(golden, tmp_path / "donor")
    path = donor / "runs" / "top--seed0" / "result.json"
    record = json.loads(path.read_text())
    record[field] = value
    path.write_text(json.dumps(record))
    out, stdout, _ = _reuse_from(donor, tmp_path, tiny_model_dir, tiny_data_file, capsys)
    assert f"reuse: skipping run '{path.parent}': its result.json is damaged ('{field}' is " in (
        stdout
    )
    assert f"is {kind})" in stdout
    assert "1 runs copied" in stdout  # the other run still is
    assert "reused_from" not in store.read_result(out / "runs" / "top--seed0")  # trained


def test_a_donor_config_with_a_section_of_the_wrong_type_is_skipped(
    golden, tmp_path, tiny_model_dir, tiny_data_file, capsys
):
    import yaml

    donor = _copy(golden, tmp_path / "donor")
    raw = yaml.safe_load((donor / "study.yaml").read_text())
    raw["training"] = 5
    (donor / "study.yaml").write_text(yaml.safe_dump(raw))
    _, stdout, _ = _reuse_from(donor, tmp_path, tiny_model_dir, tiny_data_file, capsys)
    assert "its runs were made differently (differs in: training)" in stdout


# --- every reader tolerates a bad line ---------------------------------------------------------


def _damage_records(study: Path) -> None:
    top = study / "runs" / "top--seed0"
    with open(top / "metrics.jsonl", "a") as handle:
        handle.write('[1, 2]\n"x"\n{"step": "a", "loss": "b"}\n{"step": 2, "loss": [1]}\n')
        handle.write('{"loss": 1.0}\n{"step": true, "loss": 1.0}\n')
    (top / "eval_examples.jsonl").write_text(
        '{"example": "a", "tokens": 1, "loss_sum": 1}\n'
        '{"example": 1.5, "tokens": true, "loss_sum": NaN}\n[1]\n'
    )
    base = study / "runs" / "baseline--seed0" / "result.json"
    record = json.loads(base.read_text())
    record.update({"eval_time_s": "x", "started_at": 5, "hardware": ["cpu"]})
    base.write_text(json.dumps(record))


def test_report_and_status_take_bad_lines_and_bad_fields_as_warnings(golden, tmp_path, capsys):
    study = _copy(golden, tmp_path / "s")
    _damage_records(study)
    code, out, err = _cli(capsys, "report", study)
    assert code == 0 and "Traceback" not in err, err
    assert "loraplace: warning:" in err and "not well-formed records were skipped" in err
    report = (study / "report" / "report.md").read_text()
    assert "runs/baseline--seed0" in report  # listed as a run without a readable record
    code, out, err = _cli(capsys, "status", study)
    assert code == 0 and "Traceback" not in err, err
    assert "in progress: baseline seed 0: result.json is damaged ('eval_time_s' is a string)" in out


@pytest.mark.parametrize(
    "name", ["runs/top--seed0/result.json", "runs/top--seed0/metrics.jsonl", ".lock"]
)
def test_a_special_file_in_a_study_is_never_waited_on(golden, tmp_path, name):
    study = _copy(golden, tmp_path / "s")
    (study / name).unlink()
    os.mkfifo(study / name)
    for command in ("status", "report"):
        proc = subprocess.run(
            [sys.executable, "-m", "loraplace", command, str(study)],
            capture_output=True,
            text=True,
            timeout=300,  # a reader that opened the FIFO would wait here forever
            env={**os.environ, "TQDM_DISABLE": "1"},
        )
        assert proc.returncode == 0, proc.stderr
        assert "Traceback" not in proc.stderr
    assert stat.S_ISFIFO(os.lstat(study / name).st_mode)  # never replaced by a reader


# --- an interrupted export ---------------------------------------------------------------------


def test_an_interrupted_export_is_marked_and_report_and_status_say_so(
    golden, tmp_path, monkeypatch, capsys
):
    copies = []
    copy = store.copy_file

    def interrupted(*args, **kwargs):
        if len(copies) == 4:
            raise KeyboardInterrupt
        copies.append(args[0])
        return copy(*args, **kwargs)

    monkeypatch.setattr(store, "copy_file", interrupted)
    dst = tmp_path / "exp"
    with pytest.raises(KeyboardInterrupt):
        export_module.export_study(golden, dst)
    assert store.export_incomplete(dst)
    assert {p.name for p in copies[:2]} == {"study.yaml", "identity.json"}  # copied first
    assert any("export that was interrupted" in note for note in load_study(dst).notes)
    assert "export: incomplete" in study_status(dst)
    monkeypatch.setattr(store, "copy_file", copy)
    code, _, err = _cli(capsys, "export", golden, dst)  # an interrupted export is taken up again
    assert code == 0, err
    assert not store.export_incomplete(dst)
    assert "export: incomplete" not in study_status(dst)


# --- no byte outside, whatever the study directory holds --------------------------------------

_PLACES = [
    "study.yaml",
    "identity.json",
    "base.json",
    "results.csv",
    ".lock",
    "runs",
    "auto",
    "report",
    "report/pareto.png",
    "report/report.md",
    "runs/top--seed0",
    "runs/top--seed0/result.json",
    "runs/top--seed0/metrics.jsonl",
    "runs/top--seed0/eval_examples.jsonl",
    "runs/top--seed0/adapter",
    "runs/baseline--seed0/metrics.jsonl",
    "runs/baseline--seed0/extra",
]
_KINDS = ["link to a file", "link to a directory", "fifo", "hard link"]


def _plant(study: Path, outside: Path, place: str, kind: str) -> None:
    path = study / place
    parent = study
    for part in Path(place).parts[:-1]:
        parent = parent / part
        if not os.path.lexists(parent) or not stat.S_ISDIR(os.lstat(parent).st_mode):
            return  # its directory was replaced by an earlier plant
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        path.unlink()
    if kind == "link to a file":
        os.symlink(outside / "secret.txt", path)
    elif kind == "link to a directory":
        os.symlink(outside / "dir", path)
    elif kind == "fifo":
        os.mkfifo(path)
    else:
        os.link(outside / "shared.txt", path)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(plants=st.lists(st.tuples(st.sampled_from(_PLACES), st.sampled_from(_KINDS)), max_size=5))
def test_export_report_and_status_write_no_byte_outside(golden, plants):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        outside = _outside(root)
        study = _copy(golden, root / "s")
        for place, kind in plants:
            _plant(study, outside, place, kind)
        before = _snapshot(outside)
        for action in (
            lambda: export_study(study, root / "exp"),
            lambda: export_study(study, root / "exp", states=True),
            lambda: write_report(study),
            lambda: study_status(study),
            lambda: write_report(root / "exp"),
        ):
            try:
                action()
            except LoraplaceError:
                pass  # a refusal is one line; anything else fails the test
        assert _snapshot(outside) == before
        if (root / "exp").exists():
            assert SECRET not in _contents(root / "exp")

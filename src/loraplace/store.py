"""The study directory: its layout, its records, the lock that keeps it consistent, and the
one way loraplace writes a file.

Every writer and reader of a study directory goes through this module: ``loraplace run``,
the study runner, the executors (Ray workers included), the report, ``loraplace status``,
export and reuse. A file is written by :func:`write_atomic` (or appended to through
:func:`open_append`), which never follows a link out of the directory it writes in; a file is
read only when it is a regular file, and a line that is not a well-formed record is skipped.
The formats are documented in docs/FORMATS.md.

```
OUT/
  study.yaml            the resolved config; a different config is refused
  identity.json         the model and data the study was started with; a change is refused
  .lock                 held (flock) by the one process running the study
  base.json             base-model eval metrics, keyed by model, data and eval settings
  base_eval_examples.jsonl   the base model's per-example eval losses
  base_eval_answers.jsonl, lm_eval_base.json   its answers on a task, its lm-eval scores
  results.csv           one row per complete run, regenerated from result.json
  runs/<run>/           final runs: result.json (written last), metrics.jsonl,
                        eval_examples.jsonl, adapter/, generations.jsonl, traceback.txt,
                        eval_answers.jsonl (a task's answers), lm_eval.json (lm-eval scores)
  selection/<run>/      learning-rate selection runs (validation split only)
  auto/<name>...json    resolved automatic strategies (and their importance files)
  report/
```

A run is complete exactly when its ``result.json`` exists with status ``finished`` or
``failed``; it is written atomically and last.
"""

from __future__ import annotations

import csv
import errno
import fcntl
import io
import json
import math
import os
import re
import secrets
import shutil
import socket
import stat
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from loraplace.errors import LoraplaceError, one_line

__all__ = [
    "AUTO_DIR",
    "BASE_FILE",
    "BASE_EXAMPLES_FILE",
    "IDENTITY_FILE",
    "LOCK_FILE",
    "RESULT_COLUMNS",
    "DiskFullError",
    "RunKey",
    "safe_name",
    "auto_stem",
    "format_lr",
    "is_disk_full",
    "now",
    "read_json",
    "read_text",
    "read_metrics",
    "write_atomic",
    "write_bytes_atomic",
    "write_json_atomic",
    "write_text_atomic",
    "open_append",
    "copy_file",
    "walk_files",
    "make_dirs",
    "check_layout",
    "DirectoryLock",
    "lock_holder",
    "EXPORT_MARKER",
    "export_incomplete",
    "record_problem",
    "read_result",
    "write_result",
    "failed_result",
    "read_jsonl",
    "write_eval_examples",
    "read_eval_examples",
    "write_results_csv",
    "is_study_dir",
    "default_study_dir",
    "has_study_config",
]

#: The study's resolved config, the first file of a study directory.
STUDY_FILE = "study.yaml"
#: One directory per final run, and one per learning-rate selection run.
RUNS_DIR = "runs"
SELECTION_DIR = "selection"
#: Where ``loraplace report`` writes, and the study's table of complete runs.
REPORT_DIR = "report"
RESULTS_CSV = "results.csv"
#: Where a study goes when no directory is given: ``runs/<name>``, beside the command.
DEFAULT_STUDIES_DIR = "runs"
AUTO_DIR = "auto"
BASE_FILE = "base.json"
BASE_EXAMPLES_FILE = "base_eval_examples.jsonl"
IDENTITY_FILE = "identity.json"
LOCK_FILE = ".lock"
RESULT_FILE = "result.json"
#: A run's saved training state while it trains (removed when the run is complete).
RESUME_FILE = "resume.pt"
EXAMPLES_FILE = "eval_examples.jsonl"
#: A run's training curve, one JSON line per logged step.
METRICS_FILE = "metrics.jsonl"
#: A final run's sample generations.
GENERATIONS_FILE = "generations.jsonl"
#: A final run's answer to each eval problem of a task scored by accuracy, and the base model's.
ANSWERS_FILE = "eval_answers.jsonl"
BASE_ANSWERS_FILE = "base_eval_answers.jsonl"
#: lm-evaluation-harness scores of a final run's adapter (``loraplace evaluate --lm-eval``), and
#: of the base model.
LMEVAL_FILE = "lm_eval.json"
LMEVAL_BASE_FILE = "lm_eval_base.json"
#: A final run's trained adapter (PEFT ``save_pretrained``).
ADAPTER_DIR = "adapter"
#: The adapter weights a run saves at its eval checkpoints, for a final run that adopts it.
CHECKPOINTS_DIR = "checkpoints"

RESULT_COLUMNS = [
    "name",
    "spec",
    "rank",
    "seed",
    "stage",
    "learning_rate",
    "status",
    "error",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "eval_loss",
    "perplexity",
    "validation_loss",
    "base_eval_loss",
    "accuracy",
    "base_accuracy",
    "train_time_s",
    "train_tokens",
    "tokens_per_s",
    "peak_memory_mb",
    "steps",
    "run_dir",
]
"""Columns of ``results.csv``: one row per complete run."""


class DiskFullError(LoraplaceError):
    """The disk filled up (ENOSPC/EDQUOT) while the study was writing."""


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` is a write that failed for want of space (or of quota)."""
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def now() -> str:
    """The current UTC time as an ISO 8601 string with seconds."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def safe_name(name: str) -> str:
    """A strategy name as it appears in a directory name: characters other than letters,
    digits and ``-_.,`` become ``_``. Config validation rejects names that collide here."""
    return "".join(c if c.isalnum() or c in "-_.," else "_" for c in name)


def format_lr(value: float) -> str:
    """A learning rate as it appears in a directory name (``3e-04``)."""
    return f"{value:.0e}" if float(f"{value:.0e}") == value else repr(float(value))


@dataclass(frozen=True, order=True)
class RunKey:
    """One run of a study: strategy, rank (in a rank sweep), seed and stage.

    Attributes:
        name: the strategy's name in the study.
        seed: the run's seed.
        rank: the sweep rank, or ``None`` when the study has no ``ranks`` list.
        stage: ``final`` (evaluated on the eval split) or ``selection`` (a learning-rate
            selection run, scored on the validation split only).
        learning_rate: the learning rate of a selection run; ``None`` for final runs, whose
            learning rate is chosen by the selection stage or fixed by the config.
    """

    name: str
    seed: int
    rank: int | None = None
    stage: str = "final"
    learning_rate: float | None = None

    @property
    def condition(self) -> tuple[str, int | None]:
        """``(name, rank)``: the runs of one condition differ only in seed (and stage)."""
        return (self.name, self.rank)

    @property
    def dirname(self) -> str:
        parts = [safe_name(self.name)]
        if self.rank is not None:
            parts.append(f"r{self.rank}")
        if self.stage == "selection":
            parts.append(f"lr{format_lr(self.learning_rate)}")
        parts.append(f"seed{self.seed}")
        return "--".join(parts)

    @property
    def relpath(self) -> str:
        """Path of the run directory inside the study directory."""
        return f"{SELECTION_DIR if self.stage == 'selection' else RUNS_DIR}/{self.dirname}"

    def run_dir(self, out: Path) -> Path:
        return Path(out) / self.relpath

    def label(self) -> str:
        """A short human label: ``attn r8 seed 1``, ``mlp lr 3e-04 seed 0 (selection)``."""
        text = self.name + (f" r{self.rank}" if self.rank is not None else "")
        if self.stage == "selection":
            text += f" lr {format_lr(self.learning_rate)}"
        return text + f" seed {self.seed}" + (" (selection)" if self.stage == "selection" else "")

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "rank": self.rank,
            "stage": self.stage,
            "learning_rate": self.learning_rate,
        }


_SEED_SUFFIX = re.compile(r"--seed(\d+)$")


def auto_stem(name: str, rank: int | None, seed: int) -> str:
    """File stem of a resolved automatic strategy under ``OUT/auto/``."""
    return "--".join([safe_name(name), *([f"r{rank}"] if rank is not None else []), f"seed{seed}"])


def dir_seed(dirname: str) -> int | None:
    """The seed encoded at the end of a run directory's name, or ``None``."""
    match = _SEED_SUFFIX.search(dirname)
    return int(match.group(1)) if match else None


# --- files inside a directory, never through a link -------------------------------------------
#
# Every file loraplace writes into a study, run, report, export or placement directory is made
# by write_atomic (or an append opened by open_append): a symbolic link, hard link or special
# file found where loraplace writes is never followed, so nothing outside the directory the user
# named is touched. That directory itself (``within``) may be reached through links; below it,
# every directory must be a real one.


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _link_error(path: Path, within: Path) -> LoraplaceError:
    return LoraplaceError(
        f"'{path}' is a symbolic link; loraplace writes only inside '{within}' and never through "
        "a link there: remove it (the directory you name may itself be a link)"
    )


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def make_dirs(path: Path, *, within: Path | None = None) -> Path:
    """Create the directory ``path`` and those between ``within`` and it, none through a link.

    Args:
        path: the directory to create (or find).
        within: the directory the user named, which ``path`` must stay inside (default:
            ``path`` itself). It may be reached through links and is created with its parents;
            below it, an existing component must be a real directory, and a missing one is made
            by ``mkdir``, which never follows a link.

    Returns:
        ``path``.

    Raises:
        LoraplaceError: a component below ``within`` is a link or not a directory, ``within``
            is not a directory, or the directory cannot be created (one line).
    """
    path = Path(path)
    root = Path(within) if within is not None else path
    rel = path.relative_to(root)  # a ValueError here is a bug of the caller
    if ".." in rel.parts:
        raise ValueError(f"{path} leaves {root}")
    if root.exists() and not root.is_dir():
        raise LoraplaceError(f"'{root}' is a file, not a directory; choose another directory")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        _raise_write_error(root, exc)
    current = root
    for part in rel.parts:
        current = current / part
        try:
            os.mkdir(current)
        except FileExistsError:
            pass
        except OSError as exc:
            _raise_write_error(current, exc)
        info = _lstat(current)
        if info is not None and stat.S_ISLNK(info.st_mode):
            raise _link_error(current, root)
        if info is None or not stat.S_ISDIR(info.st_mode):
            raise LoraplaceError(
                f"'{current}' is not a directory; loraplace needs one there: move it away"
            )
    if not _inside(path, root):  # a component swapped for a link since it was checked
        raise _link_error(path, root)
    return path


def _inside(path: Path, root: Path) -> bool:
    """Whether ``path``, with every link resolved, is ``root`` or inside it."""
    real, top = os.path.realpath(path), os.path.realpath(root)
    return real == top or real.startswith(top.rstrip(os.sep) + os.sep)


def write_atomic(path: Path, write, *, within: Path | None = None) -> Path:
    """Create or replace the file ``path`` with what ``write(handle)`` writes to a binary
    handle, so a reader sees the old file or the whole new one, never a partial one.

    The data goes to a temporary file in the same directory (a unique name, created
    exclusively, fsynced, with the permissions an ordinary new file would get) that is renamed
    over ``path``. A symbolic link, hard link or special file in ``path``'s place is replaced,
    never written through, and the directories below ``within`` are real ones
    (:func:`make_dirs`). The temporary file is removed whatever happens.

    Args:
        path: the file.
        write: called once with the open binary handle (``fig.savefig``, say).
        within: the directory the write must stay inside (default: ``path``'s directory).

    Returns:
        ``path``.

    Raises:
        DiskFullError: when the disk is full; nothing is left behind.
        LoraplaceError: ``path`` is a directory, or a directory below ``within`` is a link.
    """
    path = Path(path)
    make_dirs(path.parent, within=within if within is not None else path.parent)
    info = _lstat(path)
    if info is not None and stat.S_ISDIR(info.st_mode):
        raise LoraplaceError(f"'{path}' is a directory; loraplace writes a file there: move it")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _raise_write_error(path, exc)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            _raise_write_error(path, exc)
        raise
    return path


def write_bytes_atomic(path: Path, data: bytes, *, within: Path | None = None) -> None:
    """Write ``data`` atomically, as :func:`write_atomic`."""
    write_atomic(path, lambda handle: handle.write(data), within=within)


def write_text_atomic(path: Path, text: str, *, within: Path | None = None) -> None:
    """Write ``text`` (UTF-8) atomically, as :func:`write_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"), within=within)


def write_json_atomic(path: Path, obj, *, within: Path | None = None) -> None:
    """Write ``obj`` as JSON atomically, as :func:`write_atomic`."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n", within=within)


def _open_own_file(path: Path, flags: int, *, what: str) -> int:
    """A descriptor of ``path`` opened with ``flags`` and never through a link, refused unless
    it is a regular file with no other hard link (one that another directory shares)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _link_error(path, path.parent) from None
        if exc.errno == errno.ENXIO:  # a FIFO that nothing reads
            raise LoraplaceError(f"'{path}' is not a regular file; move it away") from None
        _raise_write_error(path, exc)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        kind = "has another hard link" if stat.S_ISREG(info.st_mode) else "is not a regular file"
        raise LoraplaceError(f"'{path}' {kind}; loraplace writes its {what} only to its own file")
    return fd


def open_append(path: Path, *, truncate: bool = False):
    """A text handle appending to ``path`` (created if missing; emptied first with
    ``truncate``), for a file that grows line by line (``metrics.jsonl``).

    Raises:
        LoraplaceError: ``path`` is a link, a special file or a file with another hard link:
            nothing is written.
    """
    path = Path(path)
    fd = _open_own_file(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, what="log")
    if truncate:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "a", encoding="utf-8")


def copy_file(source: Path, target: Path, *, within: Path) -> bool:
    """Copy the regular file ``source`` to ``target`` (atomically, inside ``within``, its
    modification time kept), never through a link.

    Returns:
        Whether it was copied: a link or a special file (FIFO, device, socket) in ``source``'s
        place, or a file that vanished, is not copied.
    """
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOENT, errno.ENXIO):
            return False
        raise
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return False
        write_atomic(target, lambda out: shutil.copyfileobj(handle, out, 1 << 20), within=within)
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns), follow_symlinks=False)
    return True


def walk_files(root: Path, *, prune=None) -> tuple[list[Path], list[Path]]:
    """The regular files below ``root``, never following a link.

    Args:
        prune: called with each directory's path relative to ``root``; a directory for which
            it returns true is not entered.

    Returns:
        ``(files, passed_over)``: the regular files, and the links and special files found
        (FIFOs, devices, sockets, which are never opened), as sorted paths relative to ``root``.
    """
    root = Path(root)
    files, passed = [], []
    for top, dirs, names in os.walk(root):  # a link to a directory is listed, never entered
        base = Path(top)
        for name in sorted(dirs):
            rel = (base / name).relative_to(root)
            info = _lstat(base / name)
            if info is None or not stat.S_ISDIR(info.st_mode):
                passed.append(rel)
                dirs.remove(name)
            elif prune is not None and prune(rel):
                dirs.remove(name)
        for name in names:
            info = _lstat(base / name)
            if info is not None:
                (files if stat.S_ISREG(info.st_mode) else passed).append(
                    (base / name).relative_to(root)
                )
    return sorted(files), sorted(passed)


def describe(paths: list[Path], limit: int = 3) -> str:
    """A few paths for a one-line message: ``a, b, c and 4 more`` (a newline or control code
    in a name is dropped, a long name cut)."""
    shown = ", ".join(one_line(p, 120) for p in paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


_PATH_ERRORS = (errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.ELOOP, errno.ENAMETOOLONG)
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _raise_write_error(path: Path, exc: OSError):
    """A full disk, an unwritable directory or a path that cannot be a file as a one-line
    error; anything else as it is."""
    if is_disk_full(exc):
        raise DiskFullError(
            f"disk full while writing {path}: free space, then run the same command again "
            "(finished runs are kept)"
        ) from None
    if exc.errno in _NOT_WRITABLE or exc.errno in _PATH_ERRORS:
        raise LoraplaceError(f"cannot write {path}: {exc.strerror}") from None
    raise exc


# --- reading: regular files only, a bad line skipped ------------------------------------------


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    """A ``loraplace: warning:`` about a file, once per process (a file is read several times,
    and an import in between may reset what :mod:`warnings` has shown)."""
    if message not in _WARNED:
        _WARNED.add(message)
        warnings.warn(message, stacklevel=3)


def _read_bytes(path: Path) -> bytes | None:
    """A regular file's bytes, or ``None`` when it is missing or unreadable. A FIFO, device or
    socket in its place is never waited on or read (a warning names it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        if not stat.S_ISDIR(mode):
            _warn_once(f"'{path}' is not a regular file; it is ignored")
        return None
    with os.fdopen(fd, "rb") as handle:
        try:
            return handle.read()
        except OSError:
            return None


def read_text(path: Path) -> str | None:
    """A regular file's text (UTF-8, undecodable bytes replaced), or ``None`` when it is
    missing, unreadable or not a regular file."""
    data = _read_bytes(path)
    return None if data is None else data.decode("utf-8", errors="replace")


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` when it is missing, unreadable, not a regular
    file or not an object."""
    data = _read_bytes(path)
    try:
        value = json.loads(data) if data is not None else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_jsonl(path: Path, *, valid=None) -> list[dict]:
    """The JSON objects of a JSON-lines file (a regular file; anything else reads as empty).

    Args:
        valid: a test of each object; one it rejects is skipped like a line that does not
            parse.

    A last line cut short by a kill is skipped silently; any other line that is not a (valid)
    object is skipped with one warning per file.
    """
    text = read_text(path)
    if text is None:
        return []
    out, bad = [], 0
    lines = text.split("\n")
    for number, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            bad += number != len(lines) - 1  # a last line without its newline: cut by a kill
            continue
        if isinstance(record, dict) and (valid is None or valid(record)):
            out.append(record)
        else:
            bad += 1
    if bad:
        _warn_once(f"'{path}': {bad} line(s) that are not well-formed records were skipped")
    return out


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: The fields of a ``metrics.jsonl`` line, each a number when present.
METRIC_FIELDS = (
    "loss",
    "learning_rate",
    "grad_norm",
    "tokens",
    "time_s",
    "eval_loss",
    "eval_tokens",
)


def is_metrics_row(row: dict) -> bool:
    """Whether ``row`` is a well-typed ``metrics.jsonl`` line: an integer ``step`` of at least
    0 and every field of :data:`METRIC_FIELDS` it has a number (or null)."""
    step = row.get("step")
    return (
        isinstance(step, int)
        and not isinstance(step, bool)
        and step >= 0
        and all(_number(row[k]) or row[k] is None for k in METRIC_FIELDS if k in row)
    )


def read_metrics(path: Path) -> list[dict]:
    """A run's training curve and checkpoint evals (``metrics.jsonl``), the well-typed lines
    only (:func:`is_metrics_row`)."""
    return read_jsonl(path, valid=is_metrics_row)


# --- run records ------------------------------------------------------------------------------

_NUMBER = (int, float, type(None))
_TEXT = (str, type(None))
_OBJECT = (dict, type(None))
#: The type of each field of a run's record that the runner, status, reuse or the report
#: relies on; a record with another type there is not a complete run's (it is run again).
_RESULT_TYPES = {
    "name": (str,),
    "status": (str,),
    "seed": (int,),
    "stage": (str,),
    "rank": (int, type(None)),
    "steps": (int, type(None)),
    "trainable_params": (int, type(None)),
    "eval_loss": _NUMBER,
    "validation_loss": _NUMBER,
    "learning_rate": _NUMBER,
    "train_time_s": _NUMBER,
    "eval_time_s": _NUMBER,
    "tokens_per_s": _NUMBER,
    "peak_memory_mb": _NUMBER,
    "spec": _TEXT,
    "error": _TEXT,
    "started_at": _TEXT,
    "finished_at": _TEXT,
    "adopted_from": _TEXT,
    "reused_from": _TEXT,
    "placement": _OBJECT,
    "hardware": _OBJECT,
    "versions": _OBJECT,
}
_JSON_KINDS = {bool: "true or false", int: "a number", float: "a number", str: "a string"}


def record_problem(record: dict | None) -> str | None:
    """Why ``record`` (a parsed ``result.json``) is not a complete run's record, in a few words,
    or ``None`` when it is one: it is missing or not an object, its ``status`` is neither
    ``finished`` nor ``failed``, or a field has the wrong type (``'hardware' is a list``)."""
    if record is None:
        return "not readable as a JSON object"
    if record.get("status") not in ("finished", "failed"):
        return "not complete (its status is neither finished nor failed)"
    for key, types in _RESULT_TYPES.items():
        value = record.get(key)
        if key in record and (not isinstance(value, types) or isinstance(value, bool)):
            kind = _JSON_KINDS.get(type(value)) or {list: "a list", dict: "an object"}.get(
                type(value), "null"
            )
            return f"'{key}' is {kind}"
    return None


def read_result(run_dir: Path) -> dict | None:
    """A run's complete record, or ``None`` when it is missing, unreadable, not complete, or has
    a field of the wrong type (:func:`record_problem`; such a run is treated as not complete)."""
    result = read_json(Path(run_dir) / RESULT_FILE)
    return result if record_problem(result) is None else None


def write_result(run_dir: Path, record: dict) -> None:
    """Write a run's ``result.json`` (atomically; its presence marks the run complete); a saved
    training state has no use after that and goes."""
    write_json_atomic(Path(run_dir) / RESULT_FILE, record)
    (Path(run_dir) / RESUME_FILE).unlink(missing_ok=True)


_NULL_METRICS = (
    "eval_loss",
    "perplexity",
    "validation_loss",
    "accuracy",
    "train_time_s",
    "train_tokens",
    "tokens_per_s",
)


def failed_result(record: dict, error: str) -> dict:
    """A failed run's record: what was known before the failure, the metrics ``None``."""
    return {
        **{k: None for k in _NULL_METRICS},
        **record,
        "status": "failed",
        "error": error,
        "finished_at": now(),
    }


def write_eval_examples(path: Path, rows: Iterable[tuple[int, int, float]]) -> None:
    """Per-example eval losses: one ``{"example", "tokens", "loss_sum"}`` line per example."""
    lines = [
        json.dumps({"example": int(i), "tokens": int(n), "loss_sum": float(s)}) + "\n"
        for i, n, s in rows
    ]
    write_text_atomic(path, "".join(lines))


def _count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _example_row(row: dict) -> bool:
    loss = row.get("loss_sum")
    return (
        _count(row.get("example"))
        and _count(row.get("tokens"))
        and _number(loss)
        and math.isfinite(loss)
    )


def read_eval_examples(path: Path) -> dict[int, tuple[int, float]]:
    """``{example index: (tokens, loss_sum)}`` from an ``eval_examples.jsonl`` file; a line
    without a whole index and token count and a finite loss is skipped (:func:`read_jsonl`)."""
    return {
        row["example"]: (row["tokens"], float(row["loss_sum"]))
        for row in read_jsonl(path, valid=_example_row)
    }


def write_results_csv(out: Path, results: list[dict]) -> None:
    """Regenerate ``results.csv`` (one row per complete run) atomically."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    for result in results:
        writer.writerow(
            {k: ("" if result.get(k) is None else result.get(k)) for k in RESULT_COLUMNS}
        )
    write_text_atomic(Path(out) / RESULTS_CSV, buffer.getvalue())


def can_resume(run_dir: Path) -> bool:
    """Whether an incomplete run left a saved training state to go on from."""
    return (Path(run_dir) / RESUME_FILE).is_file()


def clear_run_dir(run_dir: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Remove an incomplete or forced run's directory, leaving nothing stale behind; a link or
    a file in its place is removed, never followed.

    Args:
        keep: names of entries that stay, and with them the directory (``loraplace run`` keeps
            its lock).
    """
    info = _lstat(run_dir)
    if info is None:
        return
    if keep and run_dir.is_dir():  # the directory stays: a link to it is the one the user named
        for entry in os.scandir(run_dir):
            if entry.name in keep:
                continue
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path)
            else:
                os.unlink(entry.path)
    elif not stat.S_ISDIR(info.st_mode):
        run_dir.unlink()
    else:
        shutil.rmtree(run_dir)


#: Everything a run writes into its directory (see docs/FORMATS.md).
RUN_FILES = frozenset(
    {
        RESULT_FILE,
        EXAMPLES_FILE,
        "metrics.jsonl",
        "generations.jsonl",
        ANSWERS_FILE,
        LMEVAL_FILE,
        "traceback.txt",
        ADAPTER_DIR,
        CHECKPOINTS_DIR,
        RESUME_FILE,
        LOCK_FILE,  # loraplace run locks its run directory
    }
)


def is_temporary(name: str) -> bool:
    """Whether ``name`` is a temporary file of an atomic write (``.<name>.<random>.tmp``)."""
    return name.startswith(".") and name.endswith(".tmp")


def foreign_entries(run_dir: Path) -> list[str]:
    """The entries of ``run_dir`` that no run writes (temporary files excepted), sorted."""
    if not run_dir.is_dir():
        return []
    return sorted(
        p.name for p in run_dir.iterdir() if p.name not in RUN_FILES and not is_temporary(p.name)
    )


def check_writable(directory: Path) -> None:
    """Create ``directory`` if needed and check that a file can be written in it.

    Raises:
        LoraplaceError: it cannot be created or written (one line, naming the reason).
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=directory, prefix=".write-check-", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise LoraplaceError(f"cannot write to '{directory}': {exc.strerror}") from None


def is_study_dir(path: Path) -> bool:
    """Whether ``path`` is a study directory: it has ``study.yaml``, or the run directories of
    a study whose config is not there (yet). Every command that reads a study asks this."""
    return (Path(path) / STUDY_FILE).is_file() or (Path(path) / RUNS_DIR).is_dir()


def has_study_config(path: Path) -> bool:
    """Whether ``path`` is a study directory with its config (``study.yaml``), as every reader
    of a study's results needs."""
    return (Path(path) / STUDY_FILE).is_file()


def default_study_dir(name: str) -> Path:
    """Where a study named ``name`` goes when no directory is given: ``runs/<name>``."""
    return Path(DEFAULT_STUDIES_DIR) / name


# --- the layout a writer relies on, and the lock ----------------------------------------------

#: The directories of a study directory, and those of each run directory.
_STUDY_DIRS = (RUNS_DIR, SELECTION_DIR, AUTO_DIR, REPORT_DIR)
_RUN_DIRS = (ADAPTER_DIR, CHECKPOINTS_DIR)

#: Left in a directory while ``loraplace export`` copies into it, removed when it is done: a copy
#: that still has it was interrupted and may lack records.
EXPORT_MARKER = ".export-incomplete"


def export_incomplete(path: Path) -> bool:
    """Whether ``path`` is an export that was interrupted (it still has :data:`EXPORT_MARKER`)."""
    return _lstat(Path(path) / EXPORT_MARKER) is not None


def check_layout(root: Path) -> None:
    """Refuse a study or run directory whose own directories would take a writer elsewhere: a
    link, or anything but a directory, in the place of ``runs/``, ``selection/``, ``auto/``,
    ``report/``, a run's directory, or a run's ``adapter/`` or ``checkpoints/``. ``root``
    itself may be a link (it is the directory the user named).

    Raises:
        LoraplaceError: naming the first such entry and what to do.
    """
    root = Path(root)
    for name in _STUDY_DIRS + _RUN_DIRS:
        _real_dir(root / name, root)
    for part in (RUNS_DIR, SELECTION_DIR):
        if not _real_dir(root / part, root):
            continue
        for entry in sorted(os.scandir(root / part), key=lambda e: e.name):
            if entry.is_symlink():
                raise _link_error(Path(entry.path), root)
            if entry.is_dir(follow_symlinks=False):
                for name in _RUN_DIRS:
                    _real_dir(Path(entry.path) / name, root)


def _real_dir(path: Path, root: Path) -> bool:
    """Whether ``path`` is a directory (``False``: nothing there); a link or anything else in
    its place is refused."""
    info = _lstat(path)
    if info is None:
        return False
    if stat.S_ISLNK(info.st_mode):
        raise _link_error(path, root)
    if not stat.S_ISDIR(info.st_mode):
        raise LoraplaceError(f"'{path}' is not a directory; loraplace needs one there")
    return True


class DirectoryLock:
    """An exclusive lock on a study directory (or a ``loraplace run`` directory), held for as
    long as one process writes into it.

    It is an ``flock`` on ``DIR/.lock``, so the kernel releases it when the holder exits, even
    by ``kill -9``: a lock file left behind by a dead process is simply taken over. The file
    records the holder (pid, host, start time) for the error message a second process gets,
    and a random token that Ray workers check before writing into the directory. It is opened
    without following a link and must be the directory's own regular file. Taking the lock also
    checks the directory's layout (:func:`check_layout`), since the holder is about to write
    there. ``flock`` is reliable on local filesystems; on network filesystems see
    docs/STUDIES.md.

    Args:
        out: the directory.
        kind: what it is, for the messages (``study directory``, ``run directory``).
    """

    def __init__(self, out: Path, *, kind: str = "study directory"):
        self.path = Path(out) / LOCK_FILE
        self.kind = kind
        self.token = secrets.token_hex(8)
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        """Take the lock or raise a one-line :class:`LoraplaceError` naming its holder."""
        out = self.path.parent
        if out.exists() and not out.is_dir():
            raise LoraplaceError(f"'{out}' is a file, not a directory; choose another directory")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(f"disk full: cannot create {self.path}") from None
            raise LoraplaceError(f"cannot write to {self.kind} '{out}': {exc.strerror}") from None
        fd = _open_own_file(self.path, os.O_RDWR | os.O_CREAT, what="lock")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise LoraplaceError(
                f"{self.kind} '{out}' is in use by pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')} since {holder.get('started_at', '?')}; wait for "
                "it to finish or stop it (a killed process releases the lock by itself)"
            ) from None
        self._fd = fd
        try:
            check_layout(out)
            info = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "started_at": now(),
                "token": self.token,
            }
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
            os.fsync(fd)
        except BaseException as exc:
            self.release()
            if isinstance(exc, OSError):
                _raise_write_error(self.path, exc)
            raise
        return self

    def release(self) -> None:
        if self._fd is not None:
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> dict:
    """The holder a lock file records (empty when it records none)."""
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def lock_holder(out: Path) -> dict | None:
    """The process holding the lock on ``out`` (its pid, host and start time, as it recorded
    them), or ``None`` when none does: no study or run is writing ``out``.

    It tries a shared ``flock`` without waiting, so it never blocks and never takes the lock
    from a running process; a lock file left by a dead process is not held, and a link or a
    special file in its place is no lock.
    """
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)

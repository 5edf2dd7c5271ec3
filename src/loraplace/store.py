"""The study directory: its layout and its records (the lock that keeps it consistent is
:mod:`loraplace.study_lock`).

Every writer and reader of a study directory goes through this module: ``loraplace run``,
the study runner, the executors (Ray workers included), the report and ``loraplace status``.
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
import io
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from loraplace.errors import LoraplaceError

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
    "write_json_atomic",
    "write_text_atomic",
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


# --- atomic files -----------------------------------------------------------------------------


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) atomically, as :func:`write_bytes_atomic`."""
    write_bytes_atomic(path, text.encode("utf-8"))


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` so a reader sees the old file or the whole new one, never a partial one.

    The temporary file has a unique name, is fsynced, gets the permissions an ordinary new file
    would get, and is removed whatever happens (a full disk included).

    Raises:
        DiskFullError: when the disk is full; nothing is left behind.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        _raise_write_error(path, exc)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
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


_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def _raise_write_error(path: Path, exc: OSError):
    """A full disk or an unwritable directory as a one-line error; anything else as it is."""
    if is_disk_full(exc):
        raise DiskFullError(
            f"disk full while writing {path}: free space, then run the same command again "
            "(finished runs are kept)"
        ) from None
    if exc.errno in _NOT_WRITABLE:
        raise LoraplaceError(f"cannot write {path}: {exc.strerror}") from None
    raise exc


def write_json_atomic(path: Path, obj) -> None:
    """Write ``obj`` as JSON atomically (see :func:`write_text_atomic`)."""
    write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


def read_json(path: Path) -> dict | None:
    """A JSON object from ``path``, or ``None`` when it is missing, unreadable or not an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def read_jsonl(path: Path) -> list[dict]:
    """The JSON objects of a JSON-lines file; a line cut short by a kill is skipped."""
    out = []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            out.append(record)
    return out


# --- run records ------------------------------------------------------------------------------

_RESULT_TYPES = {
    "name": (str,),
    "status": (str,),
    "seed": (int,),
    "eval_loss": (int, float, type(None)),
    "trainable_params": (int, type(None)),
}


def read_result(run_dir: Path) -> dict | None:
    """A run's complete record, or ``None`` when it is missing, unreadable, not complete, or has
    a field of the wrong type (such a run is treated as not complete)."""
    result = read_json(Path(run_dir) / RESULT_FILE)
    if result is None or result.get("status") not in ("finished", "failed"):
        return None
    for key, types in _RESULT_TYPES.items():
        value = result.get(key)
        if key in result and (not isinstance(value, types) or isinstance(value, bool)):
            return None
    return result


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


def read_eval_examples(path: Path) -> dict[int, tuple[int, float]]:
    """``{example index: (tokens, loss_sum)}`` from an ``eval_examples.jsonl`` file."""
    out = {}
    for row in read_jsonl(path):
        try:
            out[int(row["example"])] = (int(row["tokens"]), float(row["loss_sum"]))
        except (KeyError, TypeError, ValueError):
            continue
    return out


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


def clear_run_dir(run_dir: Path) -> None:
    """Remove an incomplete or forced run's directory, leaving nothing stale behind."""
    if run_dir.is_symlink() or run_dir.is_file():
        run_dir.unlink()
    elif run_dir.exists():
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

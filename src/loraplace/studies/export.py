"""Exporting a study: its records, not its weights, copied to another directory (e.g. to
commit them)."""

from __future__ import annotations

import shutil
from pathlib import Path

from loraplace.errors import LoraplaceError
from loraplace.store import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    IDENTITY_FILE,
    LOCK_FILE,
    RESUME_FILE,
    RUNS_DIR,
    SELECTION_DIR,
    STUDY_FILE,
    can_resume,
    clear_run_dir,
    has_study_config,
    is_study_dir,
    is_temporary,
    read_json,
    read_result,
)
from loraplace.studies.identity import same_study

__all__ = ["export_study"]


#: What :func:`export_study` leaves out: weights, the lock, tracker stores, temporary files.
_NOT_EXPORTED = (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    LOCK_FILE,
    "mlflow.db",
    "mlartifacts",
    "tensorboard",
)


def export_study(src: Path, dst: Path, *, states: bool = False) -> int:
    """Copy a study directory's records, not its weights, e.g. to commit them.

    Everything ``loraplace report`` reads is copied (``study.yaml``, ``identity.json``,
    ``base*.json*``, ``results.csv``, every run's ``result.json``, ``metrics.jsonl``,
    ``eval_examples.jsonl``, ``generations.jsonl``, ``auto/``) and the report itself; adapters,
    selection checkpoints, the lock, tracker stores and runs without a result (in progress or
    interrupted) are not.

    With ``states``, a run in progress that has saved its training state is copied too: its
    ``resume.pt`` (adapter weights, optimizer and data order) and ``metrics.jsonl``, so that the
    study goes on from there once copied back (docs/STUDIES.md, "Moving a study"). A state in
    ``DEST`` that this export does not bring (its run is complete or started over, or
    ``states`` is off) is removed with the rest of that run's files in progress.

    Returns:
        The number of files copied.

    Raises:
        LoraplaceError: ``src`` is not a study directory, or ``dst`` holds another study: a
            config that differs beyond what a study may change in place (its seed list, a grown
            learning-rate grid, keys that change no run), or other model files or data.
    """
    src, dst = Path(src), Path(dst)
    if not is_study_dir(src):
        raise LoraplaceError(f"'{src}' is not a study directory (no study.yaml or runs/)")
    if has_study_config(dst):
        # An earlier export of this study, taken before its seeds, grid or report keys changed
        # in place, is the same study: it is brought up to date.
        identities = [read_json(d / IDENTITY_FILE) for d in (dst, src)]
        if not same_study(dst / STUDY_FILE, src / STUDY_FILE) or (
            None not in identities and identities[0] != identities[1]
        ):
            raise LoraplaceError(f"'{dst}' holds another study; choose another destination")
    copied = 0
    for path in sorted(src.rglob("*")):
        rel = path.relative_to(src)
        if not path.is_file() or any(part in _NOT_EXPORTED for part in rel.parts):
            continue
        if is_temporary(path.name):
            continue
        if rel.parts[0] in (RUNS_DIR, SELECTION_DIR) and len(rel.parts) > 2:
            run_dir = src / rel.parts[0] / rel.parts[1]
            if read_result(run_dir) is None and not _carries_state(run_dir, states):
                continue  # a run in progress or interrupted: it will be redone
        target = dst / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
        copied += 1
    _drop_stale_states(src, dst, kept=states)
    return copied


def _carries_state(run_dir: Path, states: bool) -> bool:
    """Whether an export with ``states`` brings ``run_dir``'s saved training state: the run is
    in progress (no result) and has one."""
    return states and read_result(run_dir) is None and can_resume(run_dir)


def _drop_stale_states(src: Path, dst: Path, *, kept: bool) -> None:
    """Remove from an export the files of each run in progress whose saved state is no longer
    the one to go on from: its run is complete, started over, or states are not exported."""
    for state in sorted(dst.glob(f"*/*/{RESUME_FILE}")):
        run_dir = state.parent
        rel = run_dir.relative_to(dst)
        if rel.parts[0] not in (RUNS_DIR, SELECTION_DIR) or _carries_state(src / rel, kept):
            continue
        state.unlink()
        if read_result(run_dir) is None:
            clear_run_dir(run_dir)

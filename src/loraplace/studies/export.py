"""Exporting a study: its records, not its weights, copied to another directory (e.g. to
commit them)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from loraplace import store
from loraplace.errors import LoraplaceError
from loraplace.store import (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    EXPORT_MARKER,
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


#: What :func:`export_study` leaves out: weights, the lock, tracker stores, its own marker.
_NOT_EXPORTED = (
    ADAPTER_DIR,
    CHECKPOINTS_DIR,
    LOCK_FILE,
    EXPORT_MARKER,
    "mlflow.db",
    "mlartifacts",
    "tensorboard",
)
#: Copied first, so that an interrupted export is still recognised as this study's.
_FIRST = (STUDY_FILE, IDENTITY_FILE)


def export_study(src: Path, dst: Path, *, states: bool = False) -> int:
    """Copy a study directory's records, not its weights, e.g. to commit them.

    Everything ``loraplace report`` reads is copied (``study.yaml``, ``identity.json``,
    ``base*.json*``, ``results.csv``, every run's ``result.json``, ``metrics.jsonl``,
    ``eval_examples.jsonl``, ``generations.jsonl``, ``auto/``) and the report itself; adapters,
    selection checkpoints, the lock, tracker stores and runs without a result (in progress or
    interrupted) are not. Only regular files are copied: a symbolic link (to a file or a
    directory) is never followed out of ``src``, and a FIFO, device or socket is never opened;
    each is passed over with one ``loraplace: note:`` line.

    With ``states``, a run in progress that has saved its training state is copied too: its
    ``resume.pt`` (adapter weights, optimizer and data order) and ``metrics.jsonl``, so that the
    study goes on from there once copied back (docs/STUDIES.md, "Moving a study"). A state in
    ``DEST`` that this export does not bring (its run is complete or started over, or
    ``states`` is off) is removed with the rest of that run's files in progress.

    ``dst`` must be new, empty, or an earlier export of the same study (which is brought up to
    date; files there that no export writes are left alone). While the copy runs, ``dst`` holds
    :data:`~loraplace.store.EXPORT_MARKER`; an interrupted export keeps it, and ``report`` and
    ``status`` on that copy say it is incomplete.

    Returns:
        The number of files copied.

    Raises:
        LoraplaceError: ``src`` is not a study directory; ``dst`` is a file, is ``src`` or
            inside it, is not empty and holds no export of this study, holds another study (a
            config that differs beyond what a study may change in place: its seed list, a grown
            learning-rate grid, keys that change no run; or other model files or data), is in
            use by a study process, or has a link among its directories. Nothing is written
            then.
    """
    src, dst = Path(src), Path(dst)
    if not is_study_dir(src):
        raise LoraplaceError(f"'{src}' is not a study directory (no study.yaml or runs/)")
    _check_destination(src, dst)
    files, passed = store.walk_files(src, prune=_pruned)
    files = [rel for rel in files if _exported(src, rel, states)]
    files.sort(key=lambda rel: (str(rel) not in _FIRST, rel))
    passed = [rel for rel in passed if not _pruned(rel)]
    store.check_layout(dst)
    store.make_dirs(dst)
    source_incomplete = store.export_incomplete(src)
    store.write_json_atomic(dst / EXPORT_MARKER, {"source": str(src), "started_at": store.now()})
    copied = 0
    for rel in files:
        if store.copy_file(src / rel, dst / rel, within=dst):
            copied += 1
        else:  # replaced by a link or a special file since it was listed
            passed.append(rel)
    _drop_stale_states(src, dst, kept=states)
    if passed:
        print(
            f"loraplace: note: {len(passed)} link(s) or special file(s) in '{src}' were not "
            f"copied (only regular files are): {store.describe(sorted(passed))}",
            file=sys.stderr,
            flush=True,
        )
    if source_incomplete:
        print(
            f"loraplace: note: '{src}' is itself an export that was interrupted; so is this copy",
            file=sys.stderr,
            flush=True,
        )
    else:
        (dst / EXPORT_MARKER).unlink(missing_ok=True)
    return copied


def _check_destination(src: Path, dst: Path) -> None:
    """Refuse a destination that is a file, the study itself or inside it, another study, a
    directory of other files, or one a study process is writing."""
    if os.path.lexists(dst) and not dst.is_dir():
        raise LoraplaceError(f"'{dst}' exists and is not a directory; choose another destination")
    inside = os.path.realpath(dst)
    source = os.path.realpath(src)
    if inside == source:
        raise LoraplaceError(f"'{dst}' is the study directory itself; choose another destination")
    if inside.startswith(source.rstrip(os.sep) + os.sep):
        raise LoraplaceError(
            f"'{dst}' is inside the study directory '{src}'; choose a destination outside it"
        )
    if not dst.is_dir() or not any(dst.iterdir()):
        return
    if not has_study_config(dst) and not store.export_incomplete(dst):
        raise LoraplaceError(
            f"'{dst}' is not empty and holds no export of this study; nothing was changed "
            "there: choose a new or empty directory"
        )
    if has_study_config(dst):
        # An earlier export of this study, taken before its seeds, grid or report keys changed
        # in place, is the same study: it is brought up to date.
        identities = [read_json(d / IDENTITY_FILE) for d in (dst, src)]
        if not same_study(dst / STUDY_FILE, src / STUDY_FILE) or (
            None not in identities and identities[0] != identities[1]
        ):
            raise LoraplaceError(f"'{dst}' holds another study; choose another destination")
    holder = store.lock_holder(dst)
    if holder is not None:
        raise LoraplaceError(
            f"'{dst}' is in use by pid {holder.get('pid', '?')} on {holder.get('host', '?')}; "
            "export once it has finished, or choose another destination"
        )


def _pruned(rel: Path) -> bool:
    """What the export does not enter or mention: weights, tracker stores, the lock."""
    return any(part in _NOT_EXPORTED for part in rel.parts)


def _exported(src: Path, rel: Path, states: bool) -> bool:
    """Whether the regular file ``src/rel`` belongs in an export."""
    if _pruned(rel) or is_temporary(rel.name):
        return False
    if rel.parts[0] in (RUNS_DIR, SELECTION_DIR) and len(rel.parts) > 2:
        run_dir = src / rel.parts[0] / rel.parts[1]
        if read_result(run_dir) is None and not _carries_state(run_dir, states):
            return False  # a run in progress or interrupted: it will be redone
    return True


def _carries_state(run_dir: Path, states: bool) -> bool:
    """Whether an export with ``states`` brings ``run_dir``'s saved training state: the run is
    in progress (no result) and has one."""
    return states and read_result(run_dir) is None and can_resume(run_dir)


def _drop_stale_states(src: Path, dst: Path, *, kept: bool) -> None:
    """Remove from an export the files of each run in progress whose saved state is no longer
    the one to go on from: its run is complete, started over, or states are not exported.
    Only the export's own run directories are looked at, never through a link."""
    for part in (RUNS_DIR, SELECTION_DIR):
        if not (dst / part).is_dir() or (dst / part).is_symlink():
            continue
        for entry in sorted(os.scandir(dst / part), key=lambda e: e.name):
            run_dir = Path(entry.path)
            state = run_dir / RESUME_FILE
            if not entry.is_dir(follow_symlinks=False) or not os.path.lexists(state):
                continue
            if _carries_state(src / part / entry.name, kept):
                continue
            state.unlink()
            if read_result(run_dir) is None:
                clear_run_dir(run_dir)

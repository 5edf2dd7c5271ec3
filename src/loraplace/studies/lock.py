"""The lock that keeps a study directory consistent: one process runs a study at a time.

``OUT/.lock`` (:data:`loraplace.store.LOCK_FILE`) is held with ``flock`` by the process running
the study; ``loraplace status`` reads who holds it, and Ray workers check its token before
writing a run. The lock itself is :class:`loraplace.store.DirectoryLock`, which ``loraplace
run`` takes on its run directory too; this module adds the token check of the Ray workers.
"""

from __future__ import annotations

from pathlib import Path

from loraplace.errors import LoraplaceError
from loraplace.store import LOCK_FILE, DirectoryLock, lock_holder, read_json

__all__ = ["StudyLock", "check_lock_token", "lock_holder"]

#: The lock on a study directory (its messages say "study directory").
StudyLock = DirectoryLock


def check_lock_token(out: Path, token: str | None) -> None:
    """Refuse to write into ``out`` unless the study lock is still held by ``token``'s owner.

    Ray workers call this before writing a run: a study directory taken over by another
    process (after the driver died) must not receive results from the old driver's tasks.
    """
    if token is None:
        return
    holder = read_json(Path(out) / LOCK_FILE) or {}
    if holder.get("token") != token:
        raise LoraplaceError(
            f"study directory '{out}' is no longer held by the process that started this task "
            f"(now held by pid {holder.get('pid', '?')} on {holder.get('host', '?')}); "
            "the result is not written"
        )

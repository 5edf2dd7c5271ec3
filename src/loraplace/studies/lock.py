"""The lock that keeps a study directory consistent: one process runs a study at a time.

``OUT/.lock`` (:data:`loraplace.store.LOCK_FILE`) is held with ``flock`` by the process running
the study; ``loraplace status`` reads who holds it, and Ray workers check its token before
writing a run.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import socket
from pathlib import Path

from loraplace.errors import LoraplaceError
from loraplace.store import LOCK_FILE, DiskFullError, is_disk_full, now, read_json

__all__ = ["StudyLock", "check_lock_token", "lock_holder"]


class StudyLock:
    """An exclusive lock on a study directory, held for as long as a study process runs.

    It is an ``flock`` on ``OUT/.lock``, so the kernel releases it when the holder exits, even
    by ``kill -9``: a lock file left behind by a dead process is simply taken over. The file
    records the holder (pid, host, start time) for the error message a second process gets,
    and a random token that Ray workers check before writing into the directory. ``flock`` is
    reliable on local filesystems; on network filesystems see docs/STUDIES.md.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.token = secrets.token_hex(8)
        self._fd: int | None = None

    def acquire(self) -> StudyLock:
        """Take the lock or raise a one-line :class:`LoraplaceError` naming its holder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFullError(f"disk full: cannot create {self.path}") from None
            raise LoraplaceError(
                f"cannot write to study directory '{self.path.parent}': {exc.strerror}"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = read_json(self.path) or {}
            raise LoraplaceError(
                f"study directory '{self.path.parent}' is in use by pid {holder.get('pid', '?')} "
                f"on {holder.get('host', '?')} since {holder.get('started_at', '?')}; wait for "
                "it to finish or stop it (a killed process releases the lock by itself)"
            ) from None
        info = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": now(),
            "token": self.token,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
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

    def __enter__(self) -> StudyLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_holder(out: Path) -> dict | None:
    """The process holding the study lock on ``out`` (its pid, host and start time, as it
    recorded them), or ``None`` when none does: no study is running in ``out``.

    It tries a shared ``flock`` without waiting, so it never blocks and never takes the lock
    from a running study; a lock file left by a dead process is not held.
    """
    path = Path(out) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return read_json(path) or {}
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


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

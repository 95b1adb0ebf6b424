"""Atomic file writes: a kill during the write never leaves a broken file behind.

A file system that refuses the bytes (a full disk, a quota, a file-size limit, a read-only
folder) is a one-line :class:`WriteRefused`, whatever the writer's own words for it, and the
target stays as it was.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

from medssl.errors import MedsslError
from medssl.interrupts import deferred

#: names of the temporary files of :func:`atomic_write`: ``.<target name>.<8 characters>.tmp``
#: (older versions used ``tempfile.mkstemp``, whose 8 random characters are ``[a-z0-9_]``)
TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.tmp$")

#: errno values of a file system that takes no more bytes
_FULL = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
#: ... or none at all in that folder
_REFUSED = _FULL | {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR}
_PROBE_BYTES = 1 << 16
_RUST_ERRNO = re.compile(r"\(os error (\d+)\)")


class WriteRefused(MedsslError):
    """The file system refused a file :func:`atomic_write` was writing; the target is as it
    was and no temporary file is left."""


def atomic_write(path: str | os.PathLike[str], write: Callable[[str], None]) -> Path:
    """Run ``write(tmp_path)``, fsync ``tmp_path`` and move it over ``path``.

    The temporary file lives in the target's directory so ``os.replace`` is a same-filesystem
    rename (atomic on POSIX). On any error the temporary file is removed and the target is
    left untouched. SIGINT and SIGTERM wait until the target is written or left as it was
    (:func:`medssl.interrupts.deferred`). Only a kill leaves the temporary file behind
    (:func:`remove_stale_temp_files` clears it). A file system that refuses the bytes raises
    :class:`WriteRefused` (one line naming ``path``), whatever the writer raised.
    """
    with deferred():
        return _atomic_write(Path(path), write)


def _atomic_write(target: Path, write: Callable[[str], None]) -> Path:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp_file(target)
    except OSError as exc:
        if exc.errno in _REFUSED:
            raise _refused(target, exc.errno) from exc
        raise
    mode = stat.S_IMODE(os.stat(tmp).st_mode)
    try:
        write(str(tmp))
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:  # a writer that re-created it (0600)
            os.chmod(tmp, mode)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        code = _refusal(exc, tmp) if isinstance(exc, Exception) else None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if code is not None:
            raise _refused(target, code) from exc
        raise
    _fsync_dir(target.parent)
    return target


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """:func:`atomic_write` of bytes already in memory.

    For writers that fail badly on a full disk (``torch.jit.save`` to a path aborts the
    process in C++): serialise to memory first, then a plain Python write reports the disk.
    """

    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    return atomic_write(path, write)


def _refusal(exc: BaseException, tmp: Path) -> int | None:
    """The errno of a file system refusing the write behind ``exc``, else None (a bug).

    An ``OSError`` in the exception's chain says so itself, and so does Rust's "(os error
    N)" (safetensors). Writers that report a short write in their own words (torch's C++
    writer: "unexpected pos"; numpy: "requested and written") are asked the file system: if
    it takes no more bytes at the end of the partial file, that was the failure.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _REFUSED:
            return cause.errno
        rust = _RUST_ERRNO.search(str(cause))
        if rust and int(rust.group(1)) in _REFUSED:
            return int(rust.group(1))
        cause = cause.__cause__ or cause.__context__
    try:
        with open(tmp, "ab") as fh:
            fh.write(bytes(_PROBE_BYTES))
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as probe:
        return probe.errno if probe.errno in _FULL else None
    return None


def _refused(target: Path, code: int) -> WriteRefused:
    hint = " (over the file-size limit: ulimit -f)" if code == errno.EFBIG else ""
    state = "the existing file is unchanged" if target.is_file() else "nothing was written"
    return WriteRefused(f"cannot write {target}: {os.strerror(code)}{hint}; {state}")


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

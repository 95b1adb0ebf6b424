"""Checks on the files a command writes where the user said, made before any work starts.

A command that writes a file the user named (``predict --out``/``--case-out``, ``export
--out``) first calls :func:`check_outputs` with every file it will write or remove and every
file it reads. It refuses, with one line naming the option:

- an output that is a folder, or whose folder cannot be created or written;
- an output that is an input (the same file by any path: relative, through symlinks, a hard
  link), e.g. ``predict --images list.csv --out list.csv``, or a file of the run it reads;
- an output with an image extension inside an input image folder (it would overwrite one of
  the images, or be read as one next time);
- two outputs that are the same file (``--out X --case-out X``).

Writing itself goes through :func:`medssl.fileio.atomic_write`, so a failure later (a full
disk) still leaves every existing file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from medssl.data.files import IMAGE_EXTENSIONS
from medssl.errors import MedsslError

#: (how a message names it, its path): ``("--out", "p.csv")``
Named = tuple[str, "str | os.PathLike[str]"]


def check_outputs(
    outputs: Sequence[Named],
    inputs: Iterable[Named] = (),
    image_folders: Sequence[Named] = (),
) -> None:
    """Refuse (:class:`MedsslError`) writing ``outputs`` when it would destroy an input or
    another output, or cannot succeed (see the module docstring).

    ``outputs`` are ``(option, path)``; ``inputs`` are files the command reads, each with
    how a message names it (``("--images list.csv", path)``; missing files are ignored);
    ``image_folders`` are folders whose image files it reads, named likewise.
    """
    named = [(what, Path(path).expanduser()) for what, path in outputs]
    for what, path in named:
        if path.is_dir():
            raise MedsslError(f"{what} {path} is a folder; give a file name")
    _refuse_duplicates(named)
    existing = {_identity(path): (what, path) for what, path in named if path.is_file()}
    if existing:
        for source, file in inputs:
            hit = existing.get(_identity(Path(file).expanduser()))
            if hit is not None:
                what, path = hit
                raise MedsslError(
                    f"{what} {path} is the input {source}: writing it would destroy it; "
                    "give another file name"
                )
    for what, path in named:
        _refuse_inside_image_folder(what, path, image_folders)
    for what, path in named:
        check_writable(what, path)


def run_files(run: str | os.PathLike[str], option: str = "--model") -> list[Named]:
    """Every file of a run directory, as inputs of :func:`check_outputs` (an output there
    would replace the run's config, checkpoint or metrics)."""
    folder = Path(run).expanduser()
    return [
        (f"{option} {folder} (its {Path(dirpath, name).relative_to(folder)})", Path(dirpath, name))
        for dirpath, _, names in os.walk(folder)
        for name in names
    ]


def check_writable(what: str, path: str | os.PathLike[str]) -> None:
    """Refuse an output whose folder is a file, lies below one, or cannot be created or
    written: tried by creating (and removing) an empty folder in its nearest existing
    ancestor, since permission bits do not tell (root, read-only mounts)."""
    path = Path(path).expanduser()
    _check_folder(what, path, path.parent)


def check_writable_folder(what: str, folder: str | os.PathLike[str]) -> None:
    """:func:`check_writable` for an output folder (a sweep's ``--out`` or ``--record``)."""
    folder = Path(folder).expanduser()
    _check_folder(what, folder, folder)


def _check_folder(what: str, named: Path, folder: Path) -> None:
    """Refuse ``folder`` (where the output ``named`` goes) unless it can be written in."""
    existing = next(p for p in (folder, *folder.parents) if p.exists() or p.is_symlink())
    if not existing.is_dir():
        raise MedsslError(
            f"{what} {named}: cannot create the folder {folder}: {existing} is a file"
        )
    try:
        probe = tempfile.mkdtemp(prefix=".medssl-write-test-", dir=existing)
    except OSError as exc:
        action = "write in" if existing == folder else "create folders in"
        raise MedsslError(
            f"{what} {named}: cannot {action} {existing} ({exc.strerror or exc})"
        ) from None
    with contextlib.suppress(OSError):
        os.rmdir(probe)


def _identity(path: Path) -> tuple[int, int] | str:
    """What makes two paths the same file: device and inode when it exists (hard links,
    symlinks, relative paths), else the path with every existing symlink resolved."""
    try:
        st = os.stat(path)
    except OSError:
        return os.path.realpath(path)
    return st.st_dev, st.st_ino


def _refuse_duplicates(named: list[tuple[str, Path]]) -> None:
    seen: dict[object, tuple[str, Path]] = {}
    for what, path in named:
        for key in {_identity(path), os.path.realpath(path)}:
            if key in seen:
                other, first = seen[key]
                raise MedsslError(
                    f"{what} {path} is also {other} {first}: give each output a file of its own"
                )
        for key in {_identity(path), os.path.realpath(path)}:
            seen[key] = (what, path)


def _refuse_inside_image_folder(what: str, path: Path, folders: Sequence[Named]) -> None:
    if not path.name.lower().endswith(tuple(e.lower() for e in IMAGE_EXTENSIONS)):
        return
    real = Path(os.path.realpath(path))
    for source, folder in folders:
        root = Path(os.path.realpath(Path(folder).expanduser()))
        if real.is_relative_to(root):
            raise MedsslError(
                f"{what} {path} has an image extension inside the input folder {source}: "
                "it would overwrite or add an image there; give another file name"
            )

"""A sweep's record (``medssl sweep --record DIR``): what a sweep must keep to resume on a
machine that has none of its folder, without the training state that makes the folder large.

A long sweep can outlive the machine it started on (a preemptible cloud instance, a lab
workstation shared by the week). Copying the whole sweep folder moves every checkpoint; the
record holds only:

* the top-level outputs (protocol.yaml, results.csv, selection.csv, pretraining.csv,
  paired.csv, the report and its figures, embedding maps);
* every finished **shared** pretraining run (one run that every seed starts from, e.g. the
  natural-image stage 1) with its ``backbone.safetensors``: later seeds start from it;
* every run of each **finished seed** -- its pretraining runs and every fine-tune -- without
  weights (configs, logs, metrics, evaluations and stored predictions stay: results.csv,
  the learning-rate choice and paired.csv are rebuilt from them).

A seed's runs enter the record only once all of that seed's work is done, so a record never
holds a seed half-made from a pretraining run it cannot restore (a per-seed pretraining run
redone on another machine is another run). Training state (``checkpoints/``), fine-tuned
weights (``best.pt``) and the ``backbone.pt`` copy beside ``backbone.safetensors`` are left
out. :func:`restore_record` copies the record into a sweep folder, never over a file the
folder already has; the sweep then reuses every recorded run (they are complete) and makes
what is missing.
"""

from __future__ import annotations

import filecmp
import shutil
from pathlib import Path

from medssl.errors import MedsslError
from medssl.fileio import atomic_write_bytes
from medssl.outputs import check_writable_folder

#: files and folders of a run that the record leaves out wherever they are
_TRAINING_STATE = ("checkpoints", "best.pt", "backbone.pt")
#: the exported backbone: kept for shared pretraining runs only
_BACKBONE = "backbone.safetensors"


def check_record_dir(record: Path, out_dir: Path) -> None:
    """A record folder may be neither the sweep folder nor inside it, nor hold it, and must
    be writable (checked before any work: the record is written after each finished seed)."""
    record, out_dir = record.resolve(), out_dir.resolve()
    if record == out_dir or out_dir in record.parents or record in out_dir.parents:
        raise MedsslError(
            f"--record {record} must be a folder of its own, not the sweep folder {out_dir}, "
            "inside it or above it"
        )
    if record.exists() and not record.is_dir():
        raise MedsslError(f"--record {record} is a file, not a folder")
    check_writable_folder("--record", record)


def _copy_if_changed(src: Path, dst: Path) -> bool:
    """Copy ``src`` to ``dst`` atomically unless ``dst`` already holds the same bytes."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and filecmp.cmp(
        src, dst, shallow=False
    ):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(dst, src.read_bytes())
    shutil.copystat(src, dst)
    return True


def _run_files(run: Path, keep_backbone: bool) -> list[Path]:
    """The files of a finished run that the record keeps."""
    files = []
    for path in sorted(run.rglob("*")):
        if not path.is_file() or any(part in _TRAINING_STATE for part in
                                     path.relative_to(run).parts):  # fmt: skip
            continue
        if path.name == _BACKBONE and not keep_backbone:
            continue
        files.append(path)
    return files


def save_record(
    out_dir: Path, record: Path, shared_runs: list[Path], seed_runs: dict[int, list[Path]]
) -> tuple[int, list[int]]:
    """Bring ``record`` up to date with the sweep folder ``out_dir``.

    ``shared_runs``: the shared pretraining runs (kept with their backbone once finished);
    ``seed_runs``: each seed's runs (pretraining and fine-tunes), all finished when a seed is
    done (the caller decides; see :func:`medssl.sweep.finished_seeds`). Returns the number of
    files written and the seeds recorded.
    """
    from medssl.train.run import is_complete

    check_record_dir(record, out_dir)
    written = 0
    for path in sorted(out_dir.iterdir()):  # the top-level outputs
        if path.is_file() and not path.name.endswith(".tmp"):
            written += _copy_if_changed(path, record / path.name)
    for run in shared_runs:
        if is_complete(run):
            for f in _run_files(run, keep_backbone=True):
                written += _copy_if_changed(f, record / f.relative_to(out_dir))
    for runs in seed_runs.values():
        for run in runs:
            for f in _run_files(run, keep_backbone=False):
                written += _copy_if_changed(f, record / f.relative_to(out_dir))
    return written, sorted(seed_runs)


def record_holds(record: Path, out_dir: Path, runs: list[Path]) -> bool:
    """Whether ``record`` holds every one of ``runs`` (folders of the sweep ``out_dir``)."""
    return bool(runs) and all((record / run.relative_to(out_dir)).is_dir() for run in runs)


def restore_record(record: Path, out_dir: Path) -> int:
    """Copy every file of ``record`` that ``out_dir`` lacks into it (an existing file is the
    sweep's own and stays); returns the number of files copied."""
    check_record_dir(record, out_dir)
    if not record.is_dir():
        return 0
    copied = 0
    for src in sorted(record.rglob("*")):
        dst = out_dir / src.relative_to(record)
        if src.is_file() and not dst.exists():
            dst.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(dst, src.read_bytes())
            shutil.copystat(src, dst)
            copied += 1
    return copied

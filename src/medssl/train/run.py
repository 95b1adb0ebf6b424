"""A run directory: resolved config, checkpoints, logs, metrics, and the rules that protect it.

Layout of ``RUN/``::

    config.yaml        the resolved configuration (every default filled in)
    checkpoints/last.pt   model, optimiser, scheduler, epoch and RNG state (atomic writes)
    log.csv            one row per epoch
    tb/                TensorBoard events
    metrics.json       final figures; its ``status: complete`` marks a finished run
    .lock              while a process writes the run: its PID and host (see :class:`RunLock`)

A finished run is never overwritten; an unfinished one continues only with ``--resume``
and the same configuration (the number of epochs may grow, the folder may have moved). An
extension of a finished run (``--resume`` with more epochs) first marks it unfinished
(``status: extending``), so a killed extension is resumed like any unfinished run and is never
mistaken for the finished one. Nothing is written before a trainer's set-up has succeeded
(:meth:`RunDir.begin`): a failed start leaves no new files, nor a folder it created.
"""

from __future__ import annotations

import atexit
import contextlib
import csv
import errno
import json
import os
import random
import shutil
import socket
import sys
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import yaml

from medssl.errors import MedsslError
from medssl.fileio import TEMP_NAME, atomic_write, remove_stale_temp_files
from medssl.interrupts import Interrupted, stopped
from medssl.models.checkpoint import read_checkpoint, save_state_dict_atomic
from medssl.options import spelled
from medssl.train import distributed as dist

CONFIG = "config.yaml"
METRICS = "metrics.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
LOCK = ".lock"
#: config keys that may differ between the original run and ``--resume`` (``out``: a moved
#: run resumes at its new place; ``device`` and ``pin_memory``, whose default follows the
#: device: a run started on a GPU resumes on the CPU and the other way round)
RESUMABLE_CHANGES = {
    "epochs", "num_workers", "resume", "log_every", "progress", "device", "pin_memory", "out",
}  # fmt: skip

try:
    import fcntl
except ImportError:  # not POSIX: runs are not locked
    fcntl = None


def field_default(f: Field) -> Any:
    """A dataclass field's default value (MISSING for a required field)."""
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


def field_defaults(config_class: type) -> dict[str, Any]:
    """Every field's default of a configuration dataclass."""
    return {f.name: field_default(f) for f in fields(config_class)}


def write_json_atomic(data: Any, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))


def write_text_atomic(text: str, path: Path) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


#: settings renamed since a run could have been made: old key -> (new key, old value -> new)
RENAMED_SETTINGS = {"augment_on": ("augment_mode", {"cpu": "per-sample", "gpu": "batch"})}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config in today's form (a run made before a change reads as if after).

    Renamed settings take their new names; a data spec that left its dataset's default
    shift sources implicit (HAM10000 runs before they were recorded) names them.
    """
    from medssl.data.adapters import DATASETS

    config = dict(config)
    for old, (new, values) in RENAMED_SETTINGS.items():
        if old in config:
            value = config.pop(old)
            if value and new not in config:
                config[new] = values.get(value, value)
    data = config.get("data")
    if isinstance(data, dict) and data.get("shift_sources") is None:
        info = DATASETS.get(str(data.get("dataset")))
        if info is not None and info.shift_sources:
            config["data"] = {**data, "shift_sources": list(info.shift_sources)}
    return config


def read_config(run: str | Path) -> dict[str, Any]:
    """A run's ``config.yaml`` (upgraded to today's names); a damaged file is one error line."""
    path = Path(run) / CONFIG
    if not path.is_file():
        raise MedsslError(f"{run} is not a medssl run directory (no {CONFIG})")
    try:
        config = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise MedsslError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0]
        raise MedsslError(f"{path} is damaged: not valid YAML ({first})") from None
    if not isinstance(config, dict):
        raise MedsslError(f"{path} is damaged: expected a mapping of settings")
    return upgrade_config(config)


def adopt_resumed_choices(config: Any, keys: tuple[str, ...]) -> None:
    """On ``--resume``, automatic settings (``auto`` or None) take the run's earlier choice.

    A run keeps what it started with (say fp32 on a machine where ``auto`` now means bf16),
    so that its resumed epochs train like its first ones and its config stays true.
    """
    if not config.resume or not (Path(config.out) / CONFIG).is_file():
        return
    previous = read_config(config.out)
    for key in keys:
        if getattr(config, key) in ("auto", None) and previous.get(key) not in (None, "auto"):
            setattr(config, key, previous[key])


def read_result(path: str | Path) -> dict[str, Any] | None:
    """The JSON object a run wrote to ``path`` (metrics.json, eval_*.json); None when the file
    is missing or damaged (not a JSON object): its work is redone."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):  # ValueError: JSONDecodeError, UnicodeDecodeError
        return None
    return data if isinstance(data, dict) else None


def is_complete(run: str | Path) -> bool:
    return (read_result(Path(run) / METRICS) or {}).get("status") == "complete"


def checkpoint_epoch(run: str | Path) -> int | None:
    """The number of epochs ``RUN/checkpoints/last.pt`` holds (None: no readable checkpoint)."""
    path = Path(run) / CHECKPOINT
    if not path.is_file():
        return None
    try:  # memory-mapped: only the epoch is read, not the weights
        return int(torch.load(path, map_location="cpu", weights_only=True, mmap=True)["epoch"])
    except Exception:  # noqa: BLE001 - an unreadable checkpoint has no epoch
        return None


def rng_state() -> dict[str, Any]:
    """Global RNG states in types that ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    random.setstate(state["python"])


class RunLock:
    """``RUN/.lock``: at most one process writes a run directory.

    ``fcntl.flock`` on the file is what excludes. The kernel drops the lock when its holder
    ends however it ends, so the file a killed process leaves behind is taken over by the next
    start (with one warning line). The file names the holder (PID and host) for the error
    message. :meth:`release` unlinks the file before unlocking it, and :meth:`_acquire` checks
    that the file it locked is still the one at the path, so two starts never both win.
    """

    held: ClassVar[set[RunLock]] = set()  # released at exit (atexit)

    def __init__(self, run: Path) -> None:
        self.run = run
        self.path = run / LOCK
        self._owner = os.getpid()  # forked DataLoader workers inherit the object, not the lock
        self._fd: int | None = None
        if fcntl is None:
            return
        run.mkdir(parents=True, exist_ok=True)
        self._fd = self._acquire()
        RunLock.held.add(self)

    def _acquire(self) -> int | None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.read(fd, 4096).decode(errors="replace").split()
                os.close(fd)
                if exc.errno not in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES):
                    _warn(f"cannot lock {self.path} ({exc.strerror}); nothing stops a second "
                          "process from writing this run")  # fmt: skip
                    return None
                raise MedsslError(
                    f"{spelled('out')} {self.run} is being written by {_holder_text(holder)}; "
                    "wait for it or choose another --out"
                ) from None
            with contextlib.suppress(FileNotFoundError):
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            os.close(fd)  # its holder released it (unlinked) between our open and flock
        left = os.read(fd, 4096).decode(errors="replace").split()
        if left:
            _warn(f"{self.path} was left by {_holder_text(left)}, which has ended; taking it over")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {socket.gethostname()}\n".encode(), 0)
        return fd

    def release(self) -> None:
        if self._fd is None or os.getpid() != self._owner:
            return
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)  # still locked here: see _acquire
        os.close(self._fd)
        self._fd = None
        RunLock.held.discard(self)


def _holder_text(holder: list[str]) -> str:
    if not holder:
        return "another process"
    host = f" on host {holder[1]}" if len(holder) > 1 else ""
    return f"process {holder[0]}{host}"


def _warn(message: str) -> None:
    print(f"medssl: {message}", file=sys.stderr, flush=True)


@atexit.register
def _release_locks() -> None:
    for lock in list(RunLock.held):
        lock.release()


def check_out(path: str | Path, what: str = "") -> None:
    """Refuse an output folder that is a file, or lies below one, before any work starts."""
    path, what = Path(path), what or spelled("out")
    for folder in (path, *path.parents):
        if folder.is_dir():
            return
        # is_dir again: another rank may have created the folder since the first look
        if (folder.exists() or folder.is_symlink()) and not folder.is_dir():
            where = "" if folder == path else f": {folder} is a file"
            raise MedsslError(f"{what} {path} is not a folder{where}")


def _missing_dirs(path: Path) -> list[Path]:
    """``path`` and its ancestors that do not exist yet, innermost first."""
    missing = []
    for folder in (path, *path.parents):
        if folder.exists():
            break
        missing.append(folder)
    return missing


def _before(rows: list[dict[str, Any]], epoch: int) -> list[dict[str, Any]]:
    """The log.csv rows of epochs before ``epoch``."""
    return [r for r in rows if int(float(r.get("epoch", -1))) < epoch]


def _parse_logged(value: str) -> Any:
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


class RunDir:
    """Owns one run directory for one training job (only rank 0 writes).

    Life cycle: the constructor locks the folder (creating it if needed) and checks it;
    :meth:`begin` once the trainer's set-up has succeeded (the first write);
    :meth:`finish` or :meth:`close` at the end; :meth:`abandon` when the set-up failed.
    """

    def __init__(
        self,
        path: str | Path,
        config: dict[str, Any],
        resume: bool,
        defaults: dict[str, Any] | None = None,
    ) -> None:
        """``defaults``: the configuration's default values. A setting missing from a run
        made by an older medssl then counts as unchanged on ``--resume`` when the new value
        is its default."""
        self.path = Path(path)
        self.config = config
        self.defaults = defaults or {}
        self.writes = dist.is_main_process()
        self._tb = None
        self._lock: RunLock | None = None
        self._created: list[Path] = []
        self.extending = False
        if self.writes:  # one process locks and checks; the others wait for it
            check_out(self.path)
            self._created = _missing_dirs(self.path)
            self._lock = RunLock(self.path)
            try:
                self.resume = resume and (self.path / CHECKPOINT).is_file()
                self._check(resume)
                self.extending = is_complete(self.path)  # passed the check: more epochs
            except BaseException:
                self.abandon()
                raise
        dist.barrier()
        self.resume = resume and (self.path / CHECKPOINT).is_file()

    def begin(self) -> None:
        """The trainer's set-up succeeded: clear stale temp files, drop log.csv's rows past
        the checkpoint (resumed), write config.yaml.

        An extension first marks the finished run unfinished (``status: extending``), before
        anything else changes.
        """
        if not self.writes:
            return
        if self.extending:
            old = json.loads((self.path / METRICS).read_text())
            write_json_atomic({**old, "status": "extending"}, self.path / METRICS)
        for folder in (self.path, self.path / "checkpoints"):
            remove_stale_temp_files(folder)
        if self.resume:
            self._forget_unsaved_epochs()
        write_text_atomic(yaml.safe_dump(self.config, sort_keys=False), self.path / CONFIG)
        (self.path / "checkpoints").mkdir(exist_ok=True)
        self._created = []  # a run now: abandon() keeps it

    def abandon(self) -> None:
        """The start failed: release the lock and remove the folders this start created."""
        self.close()
        if self._created:
            shutil.rmtree(self._created[0], ignore_errors=True)
            for folder in self._created[1:]:  # parents: only while empty (others may use them)
                with contextlib.suppress(OSError):
                    folder.rmdir()
            self._created = []

    def stopped(self, exc: BaseException, epochs: int) -> Interrupted:
        """The interruption ``exc`` (SIGINT, SIGTERM) saying where this run of ``epochs``
        epochs stopped and how to continue it (a trainer raises it on the way out)."""
        saved = checkpoint_epoch(self.path) or 0
        where = (
            f"stopped in epoch {saved + 1} of {epochs}"
            if saved < epochs
            else f"stopped after its last epoch ({epochs}), before its results were written"
        )
        return stopped(
            exc,
            f"{self.path}: {where}; {saved} epoch{'' if saved == 1 else 's'} saved in "
            f"{CHECKPOINT}: run the same command with --resume to continue",
        )

    def close(self) -> None:
        """Close TensorBoard and release the lock (also after a failure; idempotent)."""
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _check(self, resume: bool) -> None:
        if is_complete(self.path) and not (resume and self._extends_epochs()):
            raise MedsslError(
                f"{spelled('out')} {self.path} already holds a finished run; choose another --out "
                "(or --resume with more --epochs to extend it)"
            )
        if (self.path / CHECKPOINT).is_file() and not resume:
            raise MedsslError(
                f"{spelled('out')} {self.path} holds an unfinished run; pass --resume to continue "
                "it or choose another --out"
            )
        foreign = (
            self.path.is_dir()
            and not (self.path / CONFIG).is_file()
            and any(p.name not in ("tb", LOCK) and not TEMP_NAME.match(p.name)
                    for p in self.path.iterdir())
        )  # fmt: skip
        if foreign:
            raise MedsslError(
                f"{spelled('out')} {self.path} exists and is not a medssl run directory"
            )
        if self.resume:
            old = read_config(self.path)
            changed = sorted(
                k for k in set(old) | set(self.config)
                if k not in RESUMABLE_CHANGES and self._differs(k, old)
            )  # fmt: skip
            if changed:
                diffs = ", ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in changed)
                raise MedsslError(f"--resume {self.path} with a different configuration ({diffs})")
            done = checkpoint_epoch(self.path)
            if done is not None and int(self.config.get("epochs", done)) < done:
                raise MedsslError(
                    f"--resume {self.path}: the run has trained {done} epochs already; "
                    f"--epochs must be at least {done}"
                )

    def _differs(self, key: str, old: dict[str, Any]) -> bool:
        new = self.config.get(key)
        if key not in old and key in self.defaults:  # added to medssl after the run began
            return new != self.defaults[key]
        value = old.get(key)
        relative = isinstance(value, str) and not Path(value).expanduser().is_absolute()
        if key == "init" and relative and value not in ("", "random"):
            return str(Path(value).expanduser().resolve()) != new  # stored as given (older runs)
        return value != new

    def _extends_epochs(self) -> bool:
        try:
            return int(self.config.get("epochs", 0)) > int(read_config(self.path).get("epochs", 0))
        except MedsslError:
            return False

    # --- checkpoints -----------------------------------------------------------------

    def save_training_state(
        self,
        epoch: int,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: Any,
        **extra: Any,
    ) -> None:
        """Write ``checkpoints/last.pt`` atomically: weights, optimiser, schedule, RNG, extras."""
        if self.writes:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "rng": rng_state(),
                **extra,
            }
            save_state_dict_atomic(state, self.path / CHECKPOINT)

    def restore_training_state(
        self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any
    ) -> dict[str, Any] | None:
        """On ``--resume``, load ``last.pt`` into the three objects and the global RNGs.

        Returns the checkpoint (``epoch`` and any extras), or None for a fresh run.
        """
        if not self.resume:
            return None
        state = read_checkpoint(self.path / CHECKPOINT)  # weights only; one line if not
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        set_rng_state(state["rng"])
        return state

    # --- logs --------------------------------------------------------------------------

    def log(self, row: dict[str, Any]) -> None:
        """Append one row to log.csv and to TensorBoard."""
        if not self.writes:
            return
        rows, header = self._read_log()
        header += [k for k in row if k not in header]
        step = int(row.get("epoch", len(rows)))
        self._write_log([*_before(rows, step), row], header)
        writer_tb = self._tensorboard()
        if writer_tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    writer_tb.add_scalar(key, value, step)
            writer_tb.flush()

    def _read_log(self) -> tuple[list[dict[str, Any]], list[str]]:
        """The rows of log.csv as written (strings) and its columns; none before the first."""
        path = self.path / "log.csv"
        if not path.is_file():
            return [], []
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            return list(reader), list(reader.fieldnames or [])

    def _write_log(self, rows: list[dict[str, Any]], header: list[str]) -> None:
        def write(tmp: str) -> None:
            with open(tmp, "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=header)
                writer.writeheader()
                writer.writerows(rows)

        atomic_write(self.path / "log.csv", write)  # rewritten whole: a kill must not truncate it

    def _forget_unsaved_epochs(self) -> None:
        """Drop log.csv's rows of epochs past the checkpoint: a run stopped between logging
        an epoch and saving it resumes before that epoch, and may end there (fewer --epochs)."""
        rows, header = self._read_log()
        saved = _before(rows, (checkpoint_epoch(self.path) or 0) + 1)
        if len(saved) < len(rows):
            self._write_log(saved, header)

    def logged(self, until_epoch: int) -> list[dict[str, Any]]:
        """The rows of log.csv up to epoch ``until_epoch`` (numbers parsed, empty cells left
        out), for a resumed run to report the whole run; [] on the processes that do not write.
        """
        path = self.path / "log.csv"
        if not self.writes or not path.is_file():
            return []
        with path.open(newline="") as fh:
            rows = [
                {k: _parse_logged(v) for k, v in row.items() if v not in ("", None)}
                for row in csv.DictReader(fh)
            ]
        return [r for r in rows if "epoch" in r and float(r["epoch"]) <= until_epoch]

    def _tensorboard(self):  # noqa: ANN202 - optional dependency
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                return None
            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def finish(self, metrics: dict[str, Any]) -> None:
        if self.writes:
            write_json_atomic({**metrics, "status": "complete"}, self.path / METRICS)
        self.close()

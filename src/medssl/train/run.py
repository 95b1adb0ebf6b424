"""A run directory: resolved config, checkpoints, logs, metrics, and the rules that protect it.

Layout of ``RUN/``::

    config.yaml        the resolved configuration (every default filled in)
    checkpoints/last.pt   model, optimiser, scheduler, epoch and RNG state (atomic writes)
    log.csv            one row per epoch
    tb/                TensorBoard events
    metrics.json       final figures; its ``status: complete`` marks a finished run

A finished run is never overwritten; an unfinished one continues only with ``--resume``
and the same configuration (the number of epochs may grow).
"""

from __future__ import annotations

import csv
import json
import random
from dataclasses import MISSING, Field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from medssl.errors import MedsslError
from medssl.fileio import atomic_write
from medssl.models.checkpoint import save_state_dict_atomic
from medssl.train import distributed as dist

CONFIG = "config.yaml"
METRICS = "metrics.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
#: config keys that may differ between the original run and ``--resume``
RESUMABLE_CHANGES = {"epochs", "num_workers", "resume", "log_every", "progress", "device"}


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


#: settings renamed since a run could have been made: old key -> (new key, old value -> new)
RENAMED_SETTINGS = {"augment_on": ("augment_mode", {"cpu": "per-sample", "gpu": "batch"})}


def upgrade_config(config: dict[str, Any]) -> dict[str, Any]:
    """A run's config in today's setting names (a run made before a rename reads as if after)."""
    config = dict(config)
    for old, (new, values) in RENAMED_SETTINGS.items():
        if old in config:
            value = config.pop(old)
            if value and new not in config:
                config[new] = values.get(value, value)
    return config


def read_config(run: str | Path) -> dict[str, Any]:
    path = Path(run) / CONFIG
    if not path.is_file():
        raise MedsslError(f"{run} is not a medssl run directory (no {CONFIG})")
    return upgrade_config(yaml.safe_load(path.read_text()))


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


def is_complete(run: str | Path) -> bool:
    path = Path(run) / METRICS
    if not path.is_file():
        return False
    try:
        return json.loads(path.read_text()).get("status") == "complete"
    except json.JSONDecodeError:
        return False


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


class RunDir:
    """Owns one run directory for one training job (only rank 0 writes)."""

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
        if self.writes:  # one process checks and creates; the others wait for it
            self.resume = resume and (self.path / CHECKPOINT).is_file()
            self._check(resume)
            (self.path / "checkpoints").mkdir(parents=True, exist_ok=True)
            text = yaml.safe_dump(config, sort_keys=False)
            (self.path / CONFIG).write_text(text)
        dist.barrier()
        self.resume = resume and (self.path / CHECKPOINT).is_file()

    def _check(self, resume: bool) -> None:
        if is_complete(self.path) and not (resume and self._extends_epochs()):
            raise MedsslError(
                f"--out {self.path} already holds a finished run; choose another --out "
                "(or --resume with more --epochs to extend it)"
            )
        if (self.path / CHECKPOINT).is_file() and not resume:
            raise MedsslError(
                f"--out {self.path} holds an unfinished run; pass --resume to continue it "
                "or choose another --out"
            )
        foreign = (
            self.path.is_dir()
            and not (self.path / CONFIG).is_file()
            and any(p.name != "tb" for p in self.path.iterdir())
        )
        if foreign:
            raise MedsslError(f"--out {self.path} exists and is not a medssl run directory")
        if self.resume:
            old = read_config(self.path)
            changed = sorted(
                k for k in set(old) | set(self.config)
                if k not in RESUMABLE_CHANGES and self._differs(k, old)
            )  # fmt: skip
            if changed:
                diffs = ", ".join(f"{k}: {old.get(k)!r} -> {self.config.get(k)!r}" for k in changed)
                raise MedsslError(f"--resume {self.path} with a different configuration ({diffs})")

    def _differs(self, key: str, old: dict[str, Any]) -> bool:
        new = self.config.get(key)
        if key not in old and key in self.defaults:  # added to medssl after the run began
            return new != self.defaults[key]
        return old.get(key) != new

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
        try:
            state = torch.load(self.path / CHECKPOINT, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - any unpickling failure is a bad file
            raise MedsslError(f"cannot read checkpoint {self.path / CHECKPOINT}: {exc}") from None
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
        path = self.path / "log.csv"
        rows: list[dict[str, Any]] = []
        header: list[str] = []
        if path.is_file():
            with path.open() as fh:
                reader = csv.DictReader(fh)
                rows = list(reader)
                header = list(reader.fieldnames or [])
        header += [k for k in row if k not in header]
        step = int(row.get("epoch", len(rows)))
        rows = [r for r in rows if int(float(r.get("epoch", -1))) < step] + [row]
        with path.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)
        writer_tb = self._tensorboard()
        if writer_tb is not None:
            for key, value in row.items():
                if isinstance(value, int | float) and key != "epoch":
                    writer_tb.add_scalar(key, value, step)
            writer_tb.flush()

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
        if self._tb is not None:
            self._tb.close()

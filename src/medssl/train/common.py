"""What pretraining and fine-tuning share: device, precision, data loading, initialisation."""

from __future__ import annotations

import os
import re
import sys
import warnings
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.data.cache import decoded_images, eval_images
from medssl.data.manifest import Manifest
from medssl.data.notices import announce
from medssl.data.spec import DataSpec
from medssl.data.splits import Splits
from medssl.errors import MedsslError
from medssl.models.checkpoint import LoadReport, load_backbone_weights
from medssl.options import spelled
from medssl.train import distributed as dist
from medssl.train.run import CONFIG, LOCK, METRICS, checkpoint_epoch, is_complete, read_config


def resolve_device(name: str) -> torch.device:
    """``auto`` is this process's GPU when there is one, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())
    if name == "auto":
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsslError(f"{spelled('device')} {name}: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MedsslError(f"{spelled('device')} {name!r} is not a device name") from None


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX-BF16).

    Without it oneDNN emulates bf16 and autocast is slower than fp32, so ``auto`` keeps fp32.
    """
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh
                          if line.startswith("flags")), [])  # fmt: skip
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


#: The smallest image side (with the ImageNet stem; the small stem counts 4x) at which
#: ``--precision auto`` takes bf16 on a CPU with native bf16. Measured for ResNet-18 MICLe
#: pretraining on the 2-core AVX512-BF16 VM (bench/precision.py, docs/PERFORMANCE.md):
#: bf16 / fp32 pairs/s 1.06 at 16 px (0.89-1.29 over five interleaved rounds, so not faster),
#: 1.30 at 24 px (1.25-1.36), 1.30 at 32 px, 1.86 at 64 px.
CPU_BF16_MIN_SIDE = 24


def resolve_precision(
    precision: str, device: torch.device, image_size: int, small_stem: bool = False
) -> str:
    """``--precision auto``: bf16 autocast where it is faster, else fp32 (fp16 on GPUs
    without bf16).

    GPUs: bf16 where supported, else fp16. CPUs: bf16 only with native bf16 (without it
    oneDNN emulates bf16 and autocast is slower than fp32) and only from
    :data:`CPU_BF16_MIN_SIDE` px up: below that the network's matrices are too small for
    bf16 to pay for its conversions (at 16 px it measured no faster than fp32). The small
    stem (3x3 stride 1, no max-pool) keeps 4x larger maps than the ImageNet stem, so its
    image side counts 4x. Both precisions are safe at every size: the convolutions over 1x1
    maps whose bf16 gradients were garbage at 16 px are routed around the faulty kernel
    (:mod:`medssl.models.single_pixel`). bf16 runs' losses and k-NN scores stay within the
    seed-to-seed noise of fp32 (docs/PERFORMANCE.md); NT-Xent is always computed in fp32.
    """
    if precision not in PRECISIONS:
        raise MedsslError(
            f"{spelled('precision')} {precision!r} is not one of {', '.join(PRECISIONS)}"
        )
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if device.type != "cpu" or not cpu_has_native_bf16():
        return "fp32"
    side = image_size * (4 if small_stem else 1)
    return "bf16" if side >= CPU_BF16_MIN_SIDE else "fp32"


def resolve_num_workers(num_workers: int | None, augment_mode: str, device: torch.device) -> int:
    """DataLoader workers for ``None`` (automatic).

    Batch views on the CPU: 0. The loader then only gathers uint8 rows from the memory-mapped
    cache, which is cheap, and worker processes would compete with the model for the cores.
    Otherwise one per core, at most 8.
    """
    if num_workers is not None:
        if num_workers < 0:
            raise MedsslError(f"{spelled('num_workers')} must be >= 0, got {num_workers}")
        return num_workers
    if augment_mode == "batch" and device.type == "cpu":
        return 0
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                      else os.cpu_count() or 1))  # fmt: skip


def autocast(device: torch.device, precision: str):  # noqa: ANN201 - a context manager
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


class FiniteStepGuard:
    """Applies an optimiser step only when every gradient is finite; scales fp16 losses.

    A step with a NaN or infinite gradient would write it into the weights and ruin the run
    for good. Such gradients come from divergence (too high a learning rate) or, rarely,
    from low-precision kernels: oneDNN's bf16 CPU backward returned garbage weight gradients
    for strided convolutions over 1x1 maps (16 px), which skipped about half the steps of a
    16 px run until the trainers routed those convolutions around it
    (:mod:`medssl.models.single_pixel`). The guard skips such a step and counts it (log.csv
    per epoch, metrics.json for the run); ``limit`` skipped steps in a row mean the run has
    diverged, which is a user-facing error.

    fp16 (what ``--precision auto`` picks on GPUs without bf16) also needs loss scaling, or
    small gradients underflow to zero: :meth:`for_precision` gives the guard a
    ``torch.amp.GradScaler``, :meth:`backward` scales the loss, :meth:`step` unscales the
    gradients before checking them. While the scale calibrates, overflowing steps are
    skipped as GradScaler's own are, so the limit is raised by the number of halvings from
    its initial scale 2**16 to 1. The scaler's state travels in checkpoints
    (:meth:`state_dict`).

    Usage, once per batch::

        guard.backward(loss)
        guard.step(model, optimizer, scheduler)
    """

    def __init__(self, limit: int = 10, scaler: torch.amp.GradScaler | None = None) -> None:
        self.scaler = scaler
        self.limit = limit + (16 if scaler is not None else 0)
        self.skipped = 0  # this epoch; see :meth:`end_epoch`
        self._in_a_row = 0

    @classmethod
    def for_precision(cls, precision: str, device: torch.device) -> FiniteStepGuard:
        """The guard a run at ``precision`` (resolved: fp32, bf16 or fp16) needs."""
        return cls(scaler=torch.amp.GradScaler(device.type) if precision == "fp16" else None)

    def backward(self, loss: torch.Tensor) -> None:
        """``loss.backward()``, through the fp16 loss scale when there is one."""
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def state_dict(self) -> dict[str, Any]:
        """Extra checkpoint entries (the loss scale for fp16; nothing otherwise)."""
        return {} if self.scaler is None else {"grad_scaler": self.scaler.state_dict()}

    def load_state_dict(self, checkpoint: dict[str, Any] | None) -> None:
        """Restore what :meth:`state_dict` saved, from a checkpoint (None: a fresh run)."""
        if self.scaler is not None and checkpoint and "grad_scaler" in checkpoint:
            self.scaler.load_state_dict(checkpoint["grad_scaler"])

    def step(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
    ) -> bool:
        """``optimizer.step()`` if the gradients of ``model`` are finite, then
        ``scheduler.step()`` either way (the schedule stays aligned with the epochs); whether
        the optimiser stepped."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        total = torch.nn.utils.get_total_norm(grads) if grads else torch.zeros(())
        stepped = bool(torch.isfinite(total))
        if stepped:
            if self.scaler is None:
                optimizer.step()
            else:
                self.scaler.step(optimizer)
            self._in_a_row = 0
        else:
            optimizer.zero_grad(set_to_none=True)
            self.skipped += 1
            self._in_a_row += 1
            if self._in_a_row >= self.limit:
                raise MedsslError(
                    f"{self.limit} optimiser steps in a row had NaN or infinite gradients: the "
                    "run has diverged (try a lower --lr, or --precision fp32)"
                )
        if self.scaler is not None:
            self.scaler.update()  # halves the scale after an overflow, grows it slowly
        with warnings.catch_warnings():
            # torch warns when a schedule moves before the optimiser's first step; after a
            # skipped first step that is intended.
            warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()`"))
            scheduler.step()
        return stepped

    def end_epoch(self, epoch: int) -> int:
        """The number of steps skipped in this epoch (for log.csv), said on stderr if any."""
        count, self.skipped = self.skipped, 0
        if count and dist.is_main_process():
            why = " (fp16: the loss scale adjusting, expected)" if self.scaler else ""
            print(
                f"warning: epoch {epoch + 1}: skipped {count} optimiser step(s) whose "
                f"gradients were NaN or infinite{why}",
                file=sys.stderr, flush=True,
            )  # fmt: skip
        return count


def load_data(
    spec: dict[str, Any],
    image_size: int,
    cache_dir: str | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
    source_scale: float = 1.0,
    needs_labels: str = "",
) -> tuple[Manifest, Splits, np.ndarray]:
    """Manifest, splits and decoded pixels for a run's data spec: the sources training
    views are cut from (``(N, S, S, 3)`` at ``source_scale`` 1, larger above it; see
    :mod:`medssl.data.cache`). ``needs_labels``: what needs them (``"fine-tuning"``):
    unlabeled data is then refused before any image is decoded.

    The one place every command loads data through, so it is also where the data layer's
    warnings (the manifest's and the split's) are shown: once per process, on stderr, by
    the main process (:mod:`medssl.data.notices`).
    """
    data = DataSpec.from_dict(spec)
    manifest, splits = data.load(keep_missing=skip_unreadable)  # a missing file: unreadable
    if needs_labels:
        manifest.require_labels(needs_labels)
    reduced, pixels = decoded_images(
        manifest,
        image_size,
        cache_dir,
        skip_unreadable,
        progress=progress and dist.is_main_process(),
        source_scale=source_scale,
    )
    if len(reduced) != len(manifest):  # unreadable rows dropped: split the remaining cases
        splits = data.splits(reduced)
    if dist.is_main_process():
        announce([*reduced.warnings, *splits.warnings])
    return reduced, splits, pixels


def load_eval_data(
    spec: dict[str, Any],
    image_size: int,
    source_scale: float = 1.0,
    cache_dir: str | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
    needs_labels: str = "",
) -> tuple[Manifest, Splits, np.ndarray]:
    """:func:`load_data` with un-augmented ``(N, S, S, 3)`` images (evaluation, prediction
    references): the cache itself at ``source_scale`` 1, else
    :func:`~medssl.data.cache.eval_images` of the sources."""
    manifest, splits, pixels = load_data(
        spec, image_size, cache_dir, skip_unreadable, progress, source_scale, needs_labels
    )
    return manifest, splits, eval_images(pixels, image_size)


def _init_path(init: str) -> Path | None:
    """The checkpoint file or run directory named by ``--init``; None for ``random``.

    A medssl run must be finished: an unfinished one (killed, or an extension under way)
    may hold no backbone yet, or the backbone of its earlier, shorter run.
    """
    if init in ("", "random"):
        return None
    path = Path(init).expanduser()
    if not path.exists():
        raise MedsslError(f"{spelled('init')} {init}: no such file or run directory")
    if path.is_dir() and (path / CONFIG).is_file() and not is_complete(path):
        done, total = checkpoint_epoch(path) or 0, read_config(path).get("epochs", "?")
        raise MedsslError(
            f"{spelled('init')} {init} is an unfinished run (epoch {done} of {total}); finish it "
            "with --resume"
        )
    if path.is_dir() and not (path / CONFIG).is_file() and _started_run(path):
        raise MedsslError(
            f"{spelled('init')} {init} is an unfinished run (starting, or stopped before it "
            f"saved its {CONFIG}); wait for it or start it again"
        )
    return path


def _started_run(path: Path) -> bool:
    """Whether a folder without config.yaml holds what only a starting medssl run leaves."""
    return any((path / name).exists() for name in (LOCK, "checkpoints", "log.csv", METRICS))


def resolve_init(init: str) -> str:
    """``--init`` as a run records it: ``random``, or the absolute path (checked as above)."""
    path = _init_path(init)
    return init if path is None else str(path.resolve())


def init_source(init: str) -> dict[str, Any] | None:
    """The config of a medssl run given as ``--init``, or None for files and ``random``."""
    path = _init_path(init)
    return read_config(path) if path is not None and path.is_dir() else None


def checkpoint_resnet(init: str) -> tuple[str, bool] | None:
    """The torchvision ResNet (name, small stem) of an ``--init`` checkpoint file, read from
    its shapes (:func:`~medssl.models.backbones.resnet_of_state`); None for ``random``, a
    medssl run (its config says), or a file that is no torchvision ResNet."""
    path = _init_path(init)
    if path is None or path.is_dir():
        return None
    stat = path.stat()
    return _checkpoint_resnet(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


@cache
def _checkpoint_resnet(path: str, mtime_ns: int, size: int) -> tuple[str, bool] | None:
    from medssl.models.backbones import resnet_of_state
    from medssl.models.checkpoint import load_backbone_state

    try:
        return resnet_of_state(load_backbone_state(path))
    except MedsslError:  # unreadable or not a state dict: loading it says so
        return None


def initialise_backbone(backbone: torch.nn.Module, init: str) -> LoadReport | None:
    """Load ``init`` (a checkpoint file or a medssl run) into ``backbone`` unless random;
    what was loaded (None: random)."""
    path = _init_path(init)
    if path is None:
        return None
    return load_backbone_weights(backbone, path)

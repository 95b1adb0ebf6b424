"""What pretraining and fine-tuning share: device, precision, data loading, initialisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.data.cache import decoded_images
from medssl.data.manifest import Manifest
from medssl.data.spec import DataSpec
from medssl.data.splits import Splits, canonical_splits
from medssl.errors import MedsslError
from medssl.models.checkpoint import load_backbone_state, load_into_backbone
from medssl.train import distributed as dist
from medssl.train.run import read_config


def resolve_device(name: str) -> torch.device:
    """``auto`` is this process's GPU when there is one, else the CPU."""
    if name in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", dist.local_rank())
    if name == "auto":
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MedsslError(f"--device {name}: no CUDA device is available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MedsslError(f"--device {name!r} is not a device name") from None


def autocast(device: torch.device, precision: str):  # noqa: ANN201 - a context manager
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def load_data(
    spec: dict[str, Any],
    image_size: int,
    cache_dir: str | None = None,
    skip_unreadable: bool = False,
    progress: bool = True,
) -> tuple[Manifest, Splits, np.ndarray]:
    """Manifest, canonical splits and decoded pixels for a run's data spec."""
    data = DataSpec.from_dict(spec)
    manifest, splits = data.load()
    reduced, pixels = decoded_images(
        manifest,
        image_size,
        cache_dir,
        skip_unreadable,
        progress=progress and dist.is_main_process(),
    )
    if len(reduced) != len(manifest):  # unreadable rows dropped: split the remaining cases
        splits = canonical_splits(reduced, data.split_seed, data.shift_sources)
    return reduced, splits, pixels


def _init_path(init: str) -> Path | None:
    """The checkpoint file or run directory named by ``--init``; None for ``random``."""
    if init in ("", "random"):
        return None
    path = Path(init).expanduser()
    if not path.exists():
        raise MedsslError(f"--init {init}: no such file or run directory")
    return path


def init_source(init: str) -> dict[str, Any] | None:
    """The config of a medssl run given as ``--init``, or None for files and ``random``."""
    path = _init_path(init)
    return read_config(path) if path is not None and path.is_dir() else None


def initialise_backbone(backbone: torch.nn.Module, init: str) -> None:
    """Load ``init`` (a checkpoint file or a medssl run) into ``backbone`` unless random."""
    path = _init_path(init)
    if path is None:
        return
    load_into_backbone(backbone, load_backbone_state(path), str(path), drop_mismatched_conv1=True)

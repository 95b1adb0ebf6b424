"""What a trainer says before its first epoch and after its last (stderr, unless ``--quiet``).

The start banner names what the run rests on: the ``--init`` checkpoint as loaded (tensors,
head keys dropped, embeddings resampled), the data (:func:`describe_data`, the one place
that line is made), the device and precision, and a warm-up cut by the run's length. The
closing summary names the files written and the next command.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medssl.options import spelled

if TYPE_CHECKING:
    from medssl.data.manifest import Manifest
    from medssl.data.splits import Splits
    from medssl.models.checkpoint import LoadReport


def describe_data(manifest: Manifest, splits: Splits | None = None) -> str:
    """The banner's data line: images, cases and multi-image cases (MICLe's bags), then the
    images per split. Extend the line here (one source for every trainer)."""
    s = manifest.summary()
    line = (
        f"data: {manifest.name}: {s['images']} images, {s['cases']} cases "
        f"({s['multi_image_cases']} with several images)"
    )
    if splits is not None:
        line += "; images per split: " + ", ".join(
            f"{name} {len(splits[name])}" for name in splits.names()
        )
    return line


def describe_init(init: str, report: LoadReport | None) -> str:
    """The ``--init`` line: random, or what the checkpoint gave (:class:`LoadReport`)."""
    if report is None:
        return "init: random weights" if init in ("", "random") else f"init: {init}"
    return report.describe()


def describe_setup(cfg: Any) -> str:
    """The model, device and precision line of a resolved trainer config."""
    stem = ", small stem" if cfg.small_stem else ""
    return (
        f"model: {cfg.backbone} at {cfg.image_size} px{stem}; device {cfg.device}, "
        f"precision {cfg.precision}; {cfg.epochs} epochs of batch {cfg.batch_size}"
    )


def warmup_warning(warmup_epochs: float, epochs: int) -> str | None:
    """A warning when the warm-up is as long as the run or longer (the scheduler cuts it to
    end one step before the last, so the learning rate never decays); None otherwise."""
    if warmup_epochs < epochs or warmup_epochs == 0:
        return None
    return (
        f"warning: {spelled('warmup_epochs')} {warmup_epochs:g} is not shorter than the run's "
        f"{epochs} epoch(s): the warm-up is cut to the run's length (the learning rate peaks "
        f"at its last step and never decays); lower {spelled('warmup_epochs')} or raise "
        f"{spelled('epochs')}"
    )


def start_banner(cfg: Any, data: list[str], init: LoadReport | None) -> list[str]:
    """The start banner's lines for a resolved trainer config; ``data``: its data lines
    (:func:`describe_data`, or pretraining's bags and sources)."""
    lines = [describe_init(cfg.init, init), *data, describe_setup(cfg)]
    warning = warmup_warning(cfg.warmup_epochs, cfg.epochs)
    return [*lines, warning] if warning else lines


def _quoted(path: str | Path) -> str:
    return shlex.quote(str(path))


def pretrain_summary(run: Path, files: list[str]) -> list[str]:
    """The closing lines of a pretraining run: its files and the next command."""
    return [
        f"wrote {run}: {', '.join(files)}",
        f"next: medssl finetune --init {_quoted(run)} --label-fraction 0.1 "
        f"--out {_quoted(str(run) + '-ft10')}",
    ]


def finetune_summary(
    run: Path, files: list[str], best_epoch: int | None, epochs: int, metric: str,
    best: float | None,
) -> list[str]:  # fmt: skip
    """The closing lines of a fine-tuning run: which epoch is best.pt, files, next command."""
    if best is None:
        chosen = f"best.pt: epoch {best_epoch} of {epochs} (the last: validation was not scored)"
    else:
        chosen = f"best.pt: epoch {best_epoch} of {epochs} (val {metric} {best:.4f})"
    written = f"wrote {run}: {', '.join(files)}"
    return [chosen, written, f"next: medssl evaluate --model {_quoted(run)}"]

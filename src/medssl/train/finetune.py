"""``medssl finetune``: supervised fine-tuning (or a linear probe) with a fraction of labels.

Multi-class tasks train with cross-entropy; multi-label tasks with binary cross-entropy in
which NaN targets (uncertain or missing findings) are masked out. The labeled subset is the
nested case-level fraction of :func:`medssl.data.splits.label_fraction`. After every epoch
the model is scored on the validation split and the best epoch's weights are kept as
``best.pt``; ``medssl evaluate`` uses those.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler
from tqdm import tqdm

from medssl.augment import (
    AUGMENT_MODES,
    PRESETS,
    dataset_preset,
    finetune_augment,
    resolve_augment_mode,
    view_transform,
)
from medssl.data.cache import MAX_IMAGE_SIZE, eval_images
from medssl.data.datasets import LabeledImages, unchanged
from medssl.data.manifest import Manifest
from medssl.data.spec import checked_data
from medssl.data.splits import label_fraction
from medssl.errors import MedsslError
from medssl.metrics import multiclass_metrics, multilabel_metrics
from medssl.models.backbones import backbone_from_config, backbone_traits
from medssl.models.checkpoint import export_backbone, save_state_dict_atomic
from medssl.models.heads import Classifier
from medssl.models.single_pixel import route_single_pixel_convs
from medssl.options import MAX_SEED, check_fields, default_of, option, spelled
from medssl.train.banner import describe_data, finetune_summary, start_banner
from medssl.train.common import (
    PRECISIONS,
    FiniteStepGuard,
    autocast,
    checkpoint_resnet,
    init_source,
    initialise_backbone,
    load_data,
    resolve_device,
    resolve_init,
    resolve_num_workers,
    resolve_precision,
)
from medssl.train.monitor import model_outputs
from medssl.train.optim import OPTIMIZERS, build_optimizer, epoch_scheduler
from medssl.train.pretrain import SOURCE_SCALE_HELP, PretrainConfig
from medssl.train.run import RunDir, adopt_resumed_choices, check_out, field_defaults

BEST = "best.pt"


_ARCHITECTURE = ("backbone", "small_stem", "image_size", "patch_size")


def _from_init(name: str) -> str:
    return f"default: the --init run's, else {default_of(PretrainConfig, name)}"
#: model selection metrics (validation scores of :func:`score`)
VAL_METRICS = ("accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected")


def inherited_data(
    data: dict[str, Any] | None, init: str, source: dict[str, Any]
) -> dict[str, Any]:
    """A fine-tuning run's data spec: ``data`` when it names a dataset; else the data of
    its ``--init`` run (``source``: that run's config), with what ``data`` gives over it
    (say a moved ``root``)."""
    data = dict(data or {})
    if "dataset" in data:
        return data
    inherited = source.get("data")
    if not isinstance(inherited, dict) or "dataset" not in inherited:
        raise MedsslError(
            f"{spelled('dataset')} is required: {spelled('init')} {init} is not a medssl run "
            "whose data could be inherited"
        )
    options = {**(inherited.get("options") or {}), **(data.pop("options", None) or {})}
    return {**inherited, **data, "options": options}


def describe_inherited(init: str, data: dict[str, Any]) -> str:
    """The line that says a run took its data from its ``--init`` run."""
    root = f" at {data['root']}" if data.get("root") else ""
    return (
        f"data: {data['dataset']}{root}, as the {spelled('init')} run {init} used (no "
        f"{spelled('dataset')} given)"
    )


@dataclass
class FinetuneConfig:
    """Every option of ``medssl finetune`` (flags, config-file keys and protocol keys are
    these fields: see :mod:`medssl.options`)."""

    #: without a dataset, the data spec is the ``--init`` run's (:func:`inherited_data`)
    inherits_data: ClassVar[bool] = True

    data: dict[str, Any] = option(user=False)  # a DataSpec dict, read from the data options
    out: str = option(help="run directory")
    init: str = option("random", help="random, a checkpoint file, or a run")
    label_fraction: float = option(
        1.0, above=0, maximum=1, help="share of the training cases whose labels are used"
    )
    seed: int = option(0, minimum=0, maximum=MAX_SEED)
    backbone: str = option("", help=_from_init("backbone"))
    small_stem: bool | None = option(None, help=_from_init("small_stem"))
    image_size: int = option(0, minimum=8, maximum=MAX_IMAGE_SIZE, help=_from_init("image_size"))
    patch_size: int = option(
        0, minimum=1, help="patch side of a timm transformer such as ViT (default: the --init "
        "run's when it has the same backbone, else the model's)",
    )  # fmt: skip
    source_scale: float = option(1.0, minimum=1, help=SOURCE_SCALE_HELP)
    epochs: int = option(30, minimum=1)
    min_steps: int = option(
        0, minimum=0,
        help="at least this many optimiser steps in all: with few labels an epoch passes over "
        "the labelled images more than once (0: one pass per epoch)",
    )  # fmt: skip
    batch_size: int = option(128, minimum=2)
    optimizer: str = option("adamw", choices=OPTIMIZERS)
    lr: float = option(1e-3, above=0, help="learning rate")
    weight_decay: float = option(1e-4, minimum=0)
    warmup_epochs: float = option(1.0, minimum=0)
    linear_probe: bool = option(False, help="freeze the backbone")
    export_backbone: bool = option(
        False, help="also write the best epoch's backbone as backbone.safetensors / .pt, so "
        "the run can be another run's --init (supervised pretraining)",
    )  # fmt: skip
    val_metric: str = option(
        "auto", choices=VAL_METRICS, help="model selection metric (auto: auc_macro)"
    )
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    precision: str = option(
        "auto", choices=PRECISIONS,
        help="auto: bf16 autocast on GPUs, and on CPUs with native bf16 from 24 px up "
        "(small stem: always), else fp32 (fp16 on GPUs without bf16)",
    )  # fmt: skip
    augment_mode: str = option(
        "auto", choices=AUGMENT_MODES,
        help="per-sample: torchvision views in DataLoader workers; batch: kornia views of "
        "whole batches on the training device; auto: batch where kornia is installed",
    )  # fmt: skip
    num_workers: int | None = option(
        None, minimum=0,
        help="DataLoader worker processes (default: 0 for batch views on the CPU, else one "
        "per core up to 8)",
    )  # fmt: skip
    cache_dir: str | None = option(None, help="decoded-image cache (default ~/.cache/medssl)")
    skip_unreadable: bool = option(
        False, help="drop images that are missing or cannot be decoded (and report how many) "
        "instead of stopping"
    )
    progress: bool = option(True, user=False)  # the command line's --quiet
    resume: bool = option(False, help="continue the run in --out")
    class_names: list[str] = option(factory=list, user=False)  # filled from the data
    #: (height, width) of the cached sources when source_scale > 1 (``medssl predict`` fits
    #: new images to it); empty: S x S
    source_shape: list[int] = option(factory=list, user=False)
    task: str = option("", user=False)

    def resolved(self) -> FinetuneConfig:
        """Check every option, fill automatic choices (the saved config says what ran)."""
        cfg = FinetuneConfig(**asdict(self))
        check_fields(cfg)
        check_out(cfg.out)
        cfg.init = resolve_init(cfg.init)
        source = init_source(cfg.init) or {}
        cfg.data = checked_data(inherited_data(cfg.data, cfg.init, source))
        # the architecture of the --init run, else a pretraining run's defaults
        arch = {k: source.get(k, default_of(PretrainConfig, k)) for k in _ARCHITECTURE}
        found = None if cfg.backbone else checkpoint_resnet(cfg.init)
        if found:  # a checkpoint file: the ResNet its shapes say
            arch["backbone"], arch["small_stem"] = found
        cfg.backbone = cfg.backbone or arch["backbone"]
        cfg.small_stem = bool(arch["small_stem"]) if cfg.small_stem is None else cfg.small_stem
        cfg.image_size = cfg.image_size or int(arch["image_size"])
        same = cfg.backbone == arch["backbone"]  # the --init run's patch is its backbone's
        patch = cfg.patch_size or (int(arch["patch_size"] or 0) if same else 0)
        cfg.patch_size = backbone_traits(cfg.backbone, cfg.image_size, patch).patch_size
        adopt_resumed_choices(cfg, ("augment_mode", "precision"))
        cfg.augment_mode = resolve_augment_mode(cfg.augment_mode)
        device = resolve_device(cfg.device)
        cfg.device = device.type
        cfg.precision = resolve_precision(
            cfg.precision, device, cfg.image_size, bool(cfg.small_stem)
        )
        cfg.num_workers = resolve_num_workers(cfg.num_workers, cfg.augment_mode, device)
        return cfg


def masked_bce(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over the known (non-NaN) targets only."""
    known = ~torch.isnan(targets)
    if not known.any():
        return logits.sum() * 0.0
    return F.binary_cross_entropy_with_logits(logits[known], targets[known])


def task_loss(task: str, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    if task == "multiclass":
        return F.cross_entropy(logits, targets.long())
    return masked_bce(logits, targets.float())


def probabilities(task: str, logits: torch.Tensor) -> np.ndarray:
    probs = logits.softmax(1) if task == "multiclass" else logits.sigmoid()
    return probs.float().numpy()


def score(task: str, probs: np.ndarray, targets: np.ndarray, names: list[str]) -> dict:
    if task == "multiclass":
        return multiclass_metrics(probs, targets, names)
    return multilabel_metrics(probs, targets, names, None)


def check_trainable(manifest: Manifest, rows: np.ndarray, dataset: str, fraction: float) -> None:
    """Refuse a labelled training set no classifier can learn from, before any training:
    one image (batch norm cannot train on a batch of one) or one class (nothing to tell
    apart; the run would finish with a null AUC)."""
    share = "" if fraction == 1 else f" at {spelled('label_fraction')} {fraction}"
    if len(rows) < 2:
        raise MedsslError(
            f"{dataset}: {len(rows)} labelled training image(s){share}; fine-tuning needs at "
            "least 2 (more data, or a larger label fraction)"
        )
    targets = manifest.targets[rows]
    if manifest.task == "multiclass":
        present = np.unique(targets)
        if len(present) < 2:
            name = manifest.class_names[int(present[0])]
            raise MedsslError(
                f"{dataset}: every one of the {len(rows)} labelled training images{share} is "
                f"of the only class '{name}'; fine-tuning needs at least 2 classes"
            )
    elif not any(len(np.unique(col[~np.isnan(col)])) > 1 for col in np.asarray(targets).T):
        raise MedsslError(
            f"{dataset}: no finding is both present and absent in the {len(rows)} labelled "
            f"training images{share}; fine-tuning needs at least one that is"
        )


class Finetuner:
    def __init__(self, config: FinetuneConfig) -> None:
        self.cfg = cfg = config.resolved()
        if "dataset" not in (config.data or {}):
            self._say(describe_inherited(cfg.init, cfg.data))
        if not config.backbone and checkpoint_resnet(cfg.init):
            stem = " with the small stem" if cfg.small_stem else ""
            self._say(
                f"backbone: {cfg.backbone}{stem}, as the {spelled('init')} checkpoint's shapes "
                f"say (no {spelled('backbone')} given)"
            )
        self.device = resolve_device(cfg.device)
        self.manifest, self.splits, self.pixels = load_data(
            cfg.data, cfg.image_size, cfg.cache_dir, cfg.skip_unreadable, cfg.progress,
            source_scale=cfg.source_scale, needs_labels="fine-tuning",
        )  # fmt: skip
        self.eval_pixels = eval_images(self.pixels, cfg.image_size)  # validation: S x S
        m = self.manifest
        cfg.class_names, cfg.task = list(m.class_names), m.task
        shape = list(self.pixels.shape[1:3])
        cfg.source_shape = [] if shape == [cfg.image_size] * 2 else shape
        self.run = RunDir(cfg.out, asdict(cfg), cfg.resume, field_defaults(FinetuneConfig))
        try:  # a failed set-up leaves nothing behind
            self._set_up()
        except BaseException:
            self.run.abandon()
            raise
        self.run.begin()

    def _set_up(self) -> None:
        cfg, m = self.cfg, self.manifest
        self.train_rows = label_fraction(m, self.splits["train"], cfg.label_fraction, cfg.seed)
        check_trainable(m, self.train_rows, cfg.data["dataset"], cfg.label_fraction)
        preset = PRESETS[dataset_preset(cfg.data["dataset"])]
        augment = finetune_augment(preset.rotation_degrees)
        self.batch_augment = None
        if cfg.augment_mode == "batch":  # the loader only hands over uint8 images
            from medssl.batch_augment import BatchViewAugment

            self.batch_augment = BatchViewAugment(augment, cfg.image_size).to(self.device)
            transform = unchanged
        else:
            transform = view_transform(augment, cfg.image_size)
        self.dataset = LabeledImages(
            self.pixels, m.targets, self.train_rows, transform, seed=cfg.seed
        )
        self.batch_size = min(cfg.batch_size, len(self.train_rows))
        torch.manual_seed(cfg.seed)
        backbone, feat_dim = backbone_from_config(asdict(cfg))
        self.init_report = initialise_backbone(backbone, cfg.init)
        route_single_pixel_convs(backbone)  # bf16 CPU gradients on 1x1 maps: see there
        model = Classifier(backbone, feat_dim, m.num_classes, freeze_backbone=cfg.linear_probe)
        self.model = model.to(self.device).to(memory_format=torch.channels_last)
        trainable = model.fc if cfg.linear_probe else model
        self.optimizer = build_optimizer(cfg.optimizer, trainable, cfg.lr, cfg.weight_decay)
        self.guard = FiniteStepGuard.for_precision(cfg.precision, self.device)
        self.steps_per_epoch = max(
            1,
            len(self.train_rows) // self.batch_size,
            math.ceil(cfg.min_steps / cfg.epochs),
        )
        self.scheduler = epoch_scheduler(
            self.optimizer, cfg.epochs, self.steps_per_epoch, cfg.warmup_epochs
        )
        self.val_metric = self._val_metric()
        state = self.run.restore_training_state(self.model, self.optimizer, self.scheduler)
        self.guard.load_state_dict(state)
        self.start_epoch, self.best = (
            (int(state["epoch"]), float(state["best"])) if state else (0, -math.inf)
        )

    def _val_metric(self) -> str:
        if self.cfg.val_metric != "auto":
            return self.cfg.val_metric
        return "auc_macro"

    def _loader(self, epoch: int) -> DataLoader:
        self.dataset.epoch = epoch
        generator = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
        # steps_per_epoch batches of shuffled images: one pass, or (--min-steps with few
        # labels) several passes, each a new permutation. The loader and the sampler share the
        # generator, as with shuffle=True, so one pass draws exactly the batches that
        # shuffle=True with drop_last=True draws.
        sampler = RandomSampler(
            self.dataset, num_samples=self.steps_per_epoch * self.batch_size, generator=generator
        )
        return DataLoader(
            self.dataset, batch_size=self.batch_size, sampler=sampler, generator=generator,
            num_workers=self.cfg.num_workers, drop_last=True,
            pin_memory=self.device.type == "cuda",
        )  # fmt: skip

    def train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        losses, seen, start = [], 0, time.perf_counter()
        bar = tqdm(
            self._loader(epoch), desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
            disable=not self.cfg.progress, file=sys.stderr, leave=False,
        )  # fmt: skip
        for step, (images, targets, _) in enumerate(bar):
            images = images.to(self.device, non_blocking=True)
            if self.batch_augment is not None:
                seed = hash((self.cfg.seed, epoch, step)) & (2**62 - 1)
                images = self.batch_augment(images, generator=torch.Generator().manual_seed(seed))
            images = images.contiguous(memory_format=torch.channels_last)
            with autocast(self.device, self.cfg.precision):
                logits = self.model(images)
            targets = targets.to(self.device, non_blocking=True)
            loss = task_loss(self.manifest.task, logits.float(), targets)
            self.optimizer.zero_grad(set_to_none=True)
            self.guard.backward(loss)
            self.guard.step(self.model, self.optimizer, self.scheduler)
            losses.append(loss.detach())
            seen += len(images)
            if step % 5 == 0 and self.cfg.progress:  # .item() waits for a GPU: not every step
                bar.set_postfix(loss=f"{loss.item():.3f}")
        seconds = time.perf_counter() - start
        return {
            "loss": torch.stack(losses).nanmean().item(),
            "images_per_s": seen / seconds,
            "skipped_steps": self.guard.end_epoch(epoch),
        }

    def validate(self) -> dict[str, Any]:
        rows = self.splits["val"]
        if len(rows) == 0:  # nothing to select on: the last epoch is kept (see _fit)
            return {}
        logits = model_outputs(
            self.model, self.eval_pixels, rows, self.device, precision=self.cfg.precision
        )
        m = self.manifest
        return score(m.task, probabilities(m.task, logits), m.targets[rows], m.class_names)

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: say where, then stop
            raise self.run.stopped(exc, self.cfg.epochs) from None
        finally:
            self.run.close()  # releases the run's lock, also when killed (KeyboardInterrupt)

    def _fit(self) -> dict[str, Any]:
        cfg, started = self.cfg, time.perf_counter()
        data = [describe_data(self.manifest, self.splits)]
        for line in start_banner(cfg, data, self.init_report):
            self._say(line)
        logged = self.run.logged(self.start_epoch) if self.start_epoch else []  # resumed
        skipped = sum(int(row.get("skipped_steps", 0)) for row in logged)
        for epoch in range(self.start_epoch, cfg.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            skipped += row["skipped_steps"]
            val = self.validate()
            value = val.get(self.val_metric)
            row.update({f"val_{k}": val.get(k) for k in ("accuracy", "auc_macro") if k in val})
            if value is not None and value > self.best:
                self.best = float(value)
                save_state_dict_atomic(
                    {"model": self.model.state_dict(), "epoch": epoch + 1},
                    self.run.path / BEST,
                )
            self.run.log(row)
            self.run.save_training_state(
                epoch + 1, self.model, self.optimizer, self.scheduler, best=self.best,
                **self.guard.state_dict(),
            )
            done = epoch + 1 - self.start_epoch
            eta = (time.perf_counter() - started) / done * (cfg.epochs - epoch - 1)
            self._say(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, "
                f"val {self.val_metric} {value if value is None else round(value, 4)}, "
                f"{row['images_per_s']:.0f} img/s, ETA {eta / 60:.1f} min"
            )
        if not (self.run.path / BEST).is_file():  # validation never scored: keep the last
            save_state_dict_atomic({"model": self.model.state_dict(), "epoch": cfg.epochs},
                                   self.run.path / BEST)  # fmt: skip
        if cfg.export_backbone:
            self._export_best_backbone()
        best = self.best if math.isfinite(self.best) else None
        best_epoch = int(
            torch.load(self.run.path / BEST, map_location="cpu", weights_only=True, mmap=True)[
                "epoch"
            ]
        )
        metrics = {
            f"best_val_{self.val_metric}": best,
            "best_epoch": best_epoch,
            "train_images": int(len(self.train_rows)),
            "train_cases": int(len(set(self.manifest.table["case_id"].iloc[self.train_rows]))),
            "label_fraction": cfg.label_fraction,
            "skipped_steps": skipped,  # over the whole run (per epoch in log.csv)
        }
        self.run.finish(metrics)
        files = [BEST, "log.csv", "metrics.json"]
        if cfg.export_backbone:
            files.insert(1, "backbone.safetensors")
        summary = finetune_summary(
            self.run.path, files, best_epoch, cfg.epochs, self.val_metric, best
        )
        for line in summary:
            self._say(line)
        return metrics

    def _say(self, message: str) -> None:
        if self.cfg.progress:
            print(message, file=sys.stderr, flush=True)


    def _export_best_backbone(self) -> None:
        """The best epoch's backbone in the layout pretraining exports (``--init`` reads it)."""
        best = torch.load(self.run.path / BEST, map_location="cpu", weights_only=True)
        self.model.load_state_dict(best["model"])
        meta = {"backbone": self.cfg.backbone, "small_stem": str(self.cfg.small_stem)}
        export_backbone(self.model.backbone, self.run.path, metadata=meta)


def finetune(config: FinetuneConfig) -> dict[str, Any]:
    """Run (or resume) a fine-tuning job and return its summary."""
    return Finetuner(config).fit()

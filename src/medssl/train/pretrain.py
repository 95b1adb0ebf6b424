"""``medssl pretrain``: SimCLR and MICLe pretraining, resumable and distributed.

The method is only the choice of partner image (see :mod:`medssl.data.pairs`): SimCLR pairs
two views of one image, MICLe two views of two different images of one case. Everything
else -- model, NT-Xent with global negatives, LARS with warmup and cosine decay -- is shared.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from medssl.augment import (
    AUGMENT_MODES,
    DEPRECATED_AUGMENT_ON,
    PRESETS,
    AugmentConfig,
    dataset_preset,
    expand_augment_block,
    preset,
    resolve_augment_mode,
    view_transform,
)
from medssl.data.cache import MAX_IMAGE_SIZE, eval_images
from medssl.data.datasets import PairViews, unchanged
from medssl.data.exclusion import describe_exclusion
from medssl.data.manifest import Manifest
from medssl.data.pairs import METHODS, CaseBags, PairSampler, bag_statistics, describe_bags
from medssl.data.spec import checked_data, spec_at
from medssl.data.splits import Splits
from medssl.errors import MedsslError
from medssl.losses import NTXentLoss
from medssl.models.backbones import backbone_from_config, backbone_traits
from medssl.models.checkpoint import export_backbone
from medssl.models.heads import SimCLRModel
from medssl.models.single_pixel import route_single_pixel_convs
from medssl.options import MAX_SEED, Given, check_fields, option, spelled
from medssl.train import distributed as dist
from medssl.train.banner import pretrain_summary, start_banner
from medssl.train.common import (
    PRECISIONS,
    FiniteStepGuard,
    autocast,
    initialise_backbone,
    load_data,
    load_eval_data,
    resolve_device,
    resolve_init,
    resolve_num_workers,
    resolve_precision,
)
from medssl.train.monitor import backbone_knn_scores, feature_spread, knn_metrics
from medssl.train.optim import (
    OPTIMIZERS,
    PRETRAIN_DEFAULTS,
    build_optimizer,
    epoch_scheduler,
    pretrain_optimizer,
    scaled_lr,
)
from medssl.train.run import RunDir, adopt_resumed_choices, check_out, field_defaults

SOURCE_SCALE_HELP = (
    "training views are cut from each image cached with its shorter side at source_scale x "
    "image_size (aspect kept), then resized to image_size; 1: a centre-cropped "
    "image_size square (as before); 2 is the paper-like setting"
)


def _by_optimizer(name: str) -> str:
    """An optimiser's default for help texts: ``0.075 for lars/sgd, 0.0005 for adamw``."""
    values: dict[Any, list[str]] = {}
    for optimizer, defaults in PRETRAIN_DEFAULTS.items():
        values.setdefault(defaults[name], []).append(optimizer)
    return ", ".join(f"{v} for {'/'.join(names)}" for v, names in values.items())


_WORKERS_HELP = (
    "DataLoader worker processes (default: 0 for batch views on the CPU, else one per core up to 8)"
)


#: options whose default follows the backbone (unset or ``auto``: see ``PretrainConfig.resolved``)
_BY_BACKBONE = ("optimizer", "lr", "lr_scaling", "weight_decay")


@dataclass
class PretrainConfig:
    """Every option of ``medssl pretrain`` (flags, config-file keys and protocol keys are
    these fields: see :mod:`medssl.options`)."""

    data: dict[str, Any] = option(user=False)  # a DataSpec dict, read from the data options
    out: str = option(help="run directory")
    extra_data: list[Any] = option(
        factory=list, metavar="RUN|SPEC.yaml",
        help="more pretraining data (repeatable): a run directory's data or a YAML data spec; "
        "a labelled set adds its train split, unlabeled data all its images, each with its "
        "own cases",
    )  # fmt: skip
    method: str = option("micle", choices=METHODS, help="positive pairs: two views of one "
                         "image (simclr) or of two images of one case (micle)")  # fmt: skip
    backbone: str = option(
        "resnet18", help="resnet18/34/50/101/152, resnet50_2x/_4x, resnet152_2x (torchvision), or "
        "timm:<name> for a timm model (random weights; pretrained ones come from --init)",
    )  # fmt: skip
    small_stem: bool = option(
        False, help="3x3 stride-1 stem without max-pool (CIFAR-style; ~16x the compute at 64 px)"
    )
    image_size: int = option(64, minimum=8, maximum=MAX_IMAGE_SIZE, help="image side in pixels")
    patch_size: int = option(
        0, minimum=1, help="patch side of a timm transformer such as ViT (default: the model's)"
    )
    source_scale: float = option(1.0, minimum=1, help=SOURCE_SCALE_HELP)
    epochs: int = option(100, minimum=1)
    batch_size: int = option(256, minimum=2, help="global batch (all processes)")
    optimizer: str = option(
        "auto", choices=OPTIMIZERS,
        help="auto: lars for batch-norm backbones (ResNets, EfficientNets), adamw for "
        "layer-norm ones (ViT, DeiT, Swin, ConvNeXt)",
    )  # fmt: skip
    lr: float | None = option(
        None, above=0, help=f"base learning rate (default: {_by_optimizer('lr')})"
    )
    lr_scaling: str = option(
        "auto", choices=("sqrt", "linear"),
        help=f"sqrt: lr*sqrt(batch); linear: lr*batch/256 (default: {_by_optimizer('lr_scaling')})",
    )  # fmt: skip
    weight_decay: float | None = option(
        None, minimum=0, help=f"default: {_by_optimizer('weight_decay')}"
    )
    warmup_epochs: float = option(10.0, minimum=0)
    temperature: float = option(0.1, above=0, help="NT-Xent temperature")
    proj_dim: int = option(128, minimum=1, help="projection head output size")
    head_output_bn: bool = option(
        False, help="batch norm (no bias) on the projection head's output layer too, as "
        "SimCLR's reference code has it (default off: today's head; which is better is not "
        "yet measured)",
    )  # fmt: skip
    augment: str = option("", choices=tuple(PRESETS), help="preset (default: the dataset's)")
    augment_overrides: dict[str, float] = option(
        factory=dict, flag="", nested=AugmentConfig,
        help="augmentation parameters over the preset's (--aug key=value; a config file's "
        "augment: block)",
    )  # fmt: skip
    init: str = option("random", help="random, a checkpoint file, or a run")
    seed: int = option(0, minimum=0, maximum=MAX_SEED)
    num_workers: int | None = option(None, minimum=0, help=_WORKERS_HELP)
    prefetch_factor: int = option(4, minimum=1, help="batches queued per worker")
    pin_memory: bool | None = option(None, help="page-locked host batches (default: on with a GPU)")
    augment_mode: str = option(
        "auto", choices=AUGMENT_MODES,
        help="per-sample: torchvision views in DataLoader workers; batch: kornia views of "
        "whole batches on the training device; auto: batch where kornia is installed",
    )  # fmt: skip
    augment_on: str = option(
        "", choices=tuple(DEPRECATED_AUGMENT_ON),
        help="deprecated: use --augment-mode (cpu = per-sample, gpu = batch)",
    )  # fmt: skip
    knn_every: int = option(0, minimum=0, help="k-NN validation scores every N epochs (0: off)")
    knn_k: int = option(20, minimum=1, help="neighbours of the k-NN monitor")
    device: str = option("auto", help="auto, cpu, cuda, cuda:N")
    precision: str = option(
        "auto", choices=PRECISIONS,
        help="auto: bf16 autocast on GPUs, and on CPUs with native bf16 from 24 px up "
        "(small stem: always), else fp32 (fp16 on GPUs without bf16)",
    )  # fmt: skip
    channels_last: bool | None = option(None, help="channels-last memory format (default: on)")
    compile: bool = option(False, help="torch.compile the model")
    cache_dir: str | None = option(None, help="decoded-image cache (default ~/.cache/medssl)")
    skip_unreadable: bool = option(
        False, help="drop images that are missing or cannot be decoded (and report how many) "
        "instead of stopping"
    )
    progress: bool = option(True, user=False)  # the command line's --quiet
    resume: bool = option(False, help="continue the run in --out")

    @staticmethod
    def __expand_options__(given: Given) -> None:
        """An ``augment:`` mapping (config files, protocols) is a block of augmentation
        parameters, with the preset under ``preset``."""
        expand_augment_block(given)

    def resolved(self) -> PretrainConfig:
        """Check every option, fill automatic choices (the saved config says what ran)."""
        cfg = PretrainConfig(**asdict(self))
        check_fields(cfg)
        check_out(cfg.out)
        cfg.data = checked_data(cfg.data)
        cfg.extra_data = [
            checked_data(d) if isinstance(d, dict)
            else spec_at(Path(d).expanduser().resolve(), spelled("extra_data"))
            for d in cfg.extra_data
        ]  # fmt: skip
        if not cfg.augment:
            cfg.augment = dataset_preset(cfg.data["dataset"])
        preset(cfg.augment, cfg.augment_overrides)  # the combination is valid too
        cfg.init = resolve_init(cfg.init)
        if cfg.augment_on:
            cfg.augment_mode, cfg.augment_on = cfg.augment_on, ""
        adopt_resumed_choices(cfg, ("augment_mode", "precision", *_BY_BACKBONE))
        cfg.augment_mode = resolve_augment_mode(cfg.augment_mode)
        traits = backbone_traits(cfg.backbone, cfg.image_size, cfg.patch_size)
        cfg.patch_size = traits.patch_size
        if cfg.optimizer == "auto":
            cfg.optimizer = pretrain_optimizer(traits.batch_norm)
        for key, value in PRETRAIN_DEFAULTS[cfg.optimizer].items():
            if getattr(cfg, key) in (None, "auto"):
                setattr(cfg, key, value)
        device = resolve_device(cfg.device)
        if cfg.pin_memory is None:
            cfg.pin_memory = device.type == "cuda"
        cfg.device = device.type
        cfg.precision = resolve_precision(
            cfg.precision, device, cfg.image_size, bool(cfg.small_stem)
        )
        cfg.num_workers = resolve_num_workers(cfg.num_workers, cfg.augment_mode, device)
        if cfg.channels_last is None:  # faster on GPUs and, measured, ~20% on CPU too
            cfg.channels_last = True
        return cfg


@dataclass(frozen=True)
class _TrainingSource:
    """One data source of a pretraining run: its rows that pretrain, and their pixels."""

    manifest: Manifest
    rows: np.ndarray
    pixels: np.ndarray

    def describe(self) -> str:
        m, rows = self.manifest, self.rows
        cases = len(set(m.table["case_id"].iloc[rows]))
        part = "all its images (unlabeled)" if not m.labelled else "its train split"
        return f"{m.name}: {len(rows):,} images of {cases:,} cases, {part}{describe_exclusion(m)}"


def _combine(sources: list[_TrainingSource]) -> tuple[np.ndarray, np.ndarray]:
    """The sources' training images in one array, and a case code per image (a case never
    spans two sources: each source's codes are offset past the previous ones')."""
    first = sources[0].pixels.shape[1:]
    for source in sources[1:]:
        if source.pixels.shape[1:] != first:
            raise MedsslError(
                f"{spelled('extra_data')}: {source.manifest.name}'s images are cached at "
                f"{source.pixels.shape[1:3]}, the main data's at {first[:2]} (--source-scale "
                "above 1 keeps each dataset's aspect): use --source-scale 1 to mix them"
            )
    pixels, codes, offset = [], [], 0
    for source in sources:
        case_codes, _ = source.manifest.case_codes()
        local = np.unique(case_codes[source.rows], return_inverse=True)[1]
        codes.append(local + offset)
        offset += int(local.max()) + 1 if local.size else 0
        pixels.append(np.asarray(source.pixels[source.rows]))
    if len(pixels) == 1:
        return pixels[0], codes[0]
    return np.concatenate(pixels), np.concatenate(codes)


def _knn_text(scores: dict[str, float]) -> str:
    return ", ".join(f"{k.replace('_', ' ')} {v:.4f}" for k, v in scores.items())


class Pretrainer:
    """One pretraining job: data, model, optimiser, loop, checkpoints, export."""

    def __init__(self, config: PretrainConfig) -> None:
        self.cfg = config.resolved()
        self.device = resolve_device(self.cfg.device)
        dist.init_from_env("nccl" if self.device.type == "cuda" else "gloo")
        self.run = RunDir(
            self.cfg.out, asdict(self.cfg), self.cfg.resume, field_defaults(PretrainConfig)
        )
        try:  # a failed set-up (bad data, batch too large, ...) leaves nothing behind
            self._load_data()
            self._build_model()
        except BaseException:
            self.run.abandon()
            raise
        self.run.begin()

    # --- set-up ------------------------------------------------------------------------

    def _load_data(self) -> None:
        cfg = self.cfg
        manifest, splits, pixels = load_data(
            cfg.data, cfg.image_size, cfg.cache_dir, cfg.skip_unreadable, cfg.progress,
            source_scale=cfg.source_scale,
        )  # fmt: skip
        self.manifest, self.splits, self.pixels = manifest, splits, pixels
        self._eval_pixels: np.ndarray | None = None
        self._labelled: tuple[Manifest, Splits, np.ndarray] | None = None
        self.train_rows = splits["train"]
        sources = [_TrainingSource(manifest, self.train_rows, pixels)]
        for spec in cfg.extra_data:
            m, s, px = load_data(
                spec, cfg.image_size, cfg.cache_dir, cfg.skip_unreadable, cfg.progress,
                source_scale=cfg.source_scale,
            )  # fmt: skip
            sources.append(_TrainingSource(m, s["train"], px))
        train_pixels, case_codes = _combine(sources)
        self.sources = sources
        world = dist.world_size()
        if cfg.batch_size % world:
            raise MedsslError(
                f"{spelled('batch_size')} {cfg.batch_size} is not divisible by {world} ranks"
            )
        if len(train_pixels) < cfg.batch_size:
            raise MedsslError(
                f"{spelled('batch_size')} {cfg.batch_size} exceeds the {len(train_pixels)} "
                "training images"
            )
        self.bags = CaseBags(case_codes)
        self.sampler = PairSampler(
            self.bags, cfg.method, seed=cfg.seed, rank=dist.rank(), world_size=world,
            global_batch_size=cfg.batch_size,
        )  # fmt: skip
        augment = preset(cfg.augment, cfg.augment_overrides)
        self.batch_augment = None
        if cfg.augment_mode == "batch":  # the loader only hands over uint8 images
            from medssl.batch_augment import BatchViewAugment

            self.batch_augment = BatchViewAugment(augment, cfg.image_size).to(self.device)
            view = unchanged
        else:
            view = view_transform(augment, cfg.image_size)
        dataset = PairViews(train_pixels, view, view, seed=cfg.seed)
        self.loader = DataLoader(
            dataset,
            batch_size=cfg.batch_size // world,
            sampler=self.sampler,
            num_workers=cfg.num_workers,
            pin_memory=bool(cfg.pin_memory),
            persistent_workers=cfg.num_workers > 0,
            prefetch_factor=cfg.prefetch_factor if cfg.num_workers > 0 else None,
            drop_last=True,
        )

    def _build_model(self) -> None:
        cfg = self.cfg
        torch.manual_seed(cfg.seed)
        backbone, feat_dim = backbone_from_config(asdict(cfg))
        self.init_report = initialise_backbone(backbone, cfg.init)
        route_single_pixel_convs(backbone)  # bf16 CPU gradients on 1x1 maps: see there
        model = SimCLRModel(
            backbone, feat_dim, out_dim=cfg.proj_dim, output_bn=bool(cfg.head_output_bn)
        )
        if dist.is_distributed():
            model = dist.convert_batchnorm_for_distributed(model)
        model = model.to(self.device)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.ddp = (
            torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
            if dist.is_distributed()
            else model
        )
        self.forward = torch.compile(self.ddp) if cfg.compile else self.ddp
        self.criterion = NTXentLoss(cfg.temperature)
        lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling)
        self.optimizer = build_optimizer(cfg.optimizer, model, lr, cfg.weight_decay)
        self.guard = FiniteStepGuard.for_precision(cfg.precision, self.device)
        self.scheduler = epoch_scheduler(
            self.optimizer, cfg.epochs, len(self.loader), cfg.warmup_epochs
        )
        state = self.run.restore_training_state(model, self.optimizer, self.scheduler)
        self.guard.load_state_dict(state)
        self.start_epoch = int(state["epoch"]) if state else 0

    # --- the loop ------------------------------------------------------------------------

    def _augment_batch(
        self, images: torch.Tensor, epoch: int, step: int, view: int
    ) -> torch.Tensor:
        """Batch mode: random views of a whole batch, seeded by (seed, epoch, step, view, rank)."""
        seed = (self.cfg.seed, epoch, step, view, dist.rank())
        generator = torch.Generator().manual_seed(hash(seed) & (2**62 - 1))
        return self.batch_augment(images.to(self.device, non_blocking=True), generator=generator)

    def _step(self, view_a: torch.Tensor, view_b: torch.Tensor) -> torch.Tensor:
        memory = torch.channels_last if self.cfg.channels_last else torch.contiguous_format
        x = torch.cat([view_a, view_b]).to(self.device, non_blocking=True)
        x = x.contiguous(memory_format=memory)
        with autocast(self.device, self.cfg.precision):
            z = self.forward(x)
        z_a, z_b = z.float().chunk(2)
        loss = self.criterion(z_a, z_b)
        self.optimizer.zero_grad(set_to_none=True)
        self.guard.backward(loss)
        self.guard.step(self.model, self.optimizer, self.scheduler)
        return loss.detach()

    def train_epoch(self, epoch: int, max_steps: int | None = None) -> dict[str, float]:
        """One epoch (or its first ``max_steps`` steps, for benchmarks)."""
        self.sampler.set_epoch(epoch)
        self.model.train()
        losses, distinct, seen = [], 0, 0
        start = time.perf_counter()
        bar = tqdm(
            self.loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
            disable=not (self.cfg.progress and dist.is_main_process()), file=sys.stderr,
            leave=False,
        )  # fmt: skip
        for step, (view_a, view_b, is_distinct) in enumerate(bar):
            if max_steps is not None and step >= max_steps:
                break
            if self.batch_augment is not None:
                view_a = self._augment_batch(view_a, epoch, step, 0)
                view_b = self._augment_batch(view_b, epoch, step, 1)
            loss = self._step(view_a, view_b)
            losses.append(loss)
            distinct += int(is_distinct.sum())
            seen += len(is_distinct)
            if len(losses) % 5 == 1:
                rate = seen * dist.world_size() / (time.perf_counter() - start)
                bar.set_postfix(
                    loss=f"{loss.item():.3f}", lr=f"{self.scheduler.get_last_lr()[0]:.3g}",
                    pairs_s=f"{rate:.0f}",
                )  # fmt: skip
        seconds = time.perf_counter() - start
        mean_loss = dist.all_reduce_mean(torch.stack(losses).nanmean()).item()
        counts = dist.all_reduce_sum(torch.tensor([distinct, seen], dtype=torch.float64))
        return {
            "loss": mean_loss,
            "lr": self.scheduler.get_last_lr()[0],
            "pairs_per_s": seen * dist.world_size() / seconds,
            "distinct_pair_share": float(counts[0] / max(counts[1], 1)),
            "epoch_seconds": seconds,
            "skipped_steps": self.guard.end_epoch(epoch),
        }

    def knn_monitor(self) -> dict[str, float]:
        """k-NN scores of the validation split from the train split's backbone features.

        Multiclass: top-1 accuracy, balanced accuracy and macro AUC (top-1 alone mostly
        tracks the majority class on imbalanced data); multilabel: macro AUC.
        """
        if self._eval_pixels is None:  # un-augmented S x S images of the sources
            self._eval_pixels = eval_images(self.pixels, self.cfg.image_size)
        if not self.manifest.labelled:  # a pool: the collapse check, and a labelled set's k-NN
            spread = feature_spread(
                self.model.backbone, self._eval_pixels, self.train_rows, self.device
            )
            return {**self._labelled_knn(), "feature_std": spread}
        if "val" not in self.splits or not len(self.splits["val"]):
            return {}
        return self._knn(self.manifest, self.splits, self._eval_pixels)

    def _knn(self, m: Manifest, splits: Splits, pixels: np.ndarray) -> dict[str, float]:
        val_rows = splits["val"]
        scores = backbone_knn_scores(
            self.model.backbone, pixels, splits["train"], val_rows, m.targets,
            m.num_classes, self.device, k=self.cfg.knn_k,
        )  # fmt: skip
        found = knn_metrics(m.task, scores, m.targets[val_rows], m.class_names)
        return {f"knn_{k}": v for k, v in found.items() if v is not None}

    def _labelled_knn(self) -> dict[str, float]:
        """k-NN scores of an unlabeled pool's run on the labelled set its exclusion names
        (train split as references, val split as queries); {} without one."""
        exclusion = self.cfg.data.get("exclude")
        if not exclusion:
            return {}
        if self._labelled is None:
            self._labelled = load_eval_data(
                exclusion["data"], self.cfg.image_size, cache_dir=self.cfg.cache_dir,
                progress=self.cfg.progress,
            )  # fmt: skip
        manifest, splits, pixels = self._labelled
        if not manifest.labelled or "val" not in splits or not len(splits["val"]):
            return {}
        return self._knn(manifest, splits, pixels)

    def _data_lines(self) -> list[str]:
        """The banner's data lines: MICLe's bags over every source, each source, and how a
        run without labels is monitored."""
        lines = [f"data: {describe_bags(self.bags)}"]
        lines += [f"  {source.describe()}" for source in self.sources]
        if not self.manifest.labelled:
            knn = ", and k-NN on the excluded labelled set" if self.cfg.data.get("exclude") else ""
            lines.append(
                "no labels: the monitor logs loss, distinct-pair share and the feature spread "
                f"(collapse check, 0 = collapsed){knn}"
            )
        return lines

    def fit(self) -> dict[str, Any]:
        try:
            return self._fit()
        except KeyboardInterrupt as exc:  # SIGINT or SIGTERM: say where, then stop
            raise self.run.stopped(exc, self.cfg.epochs) from None
        finally:
            self.run.close()  # releases the run's lock, also when killed (KeyboardInterrupt)

    def _fit(self) -> dict[str, Any]:
        cfg, metrics, skipped = self.cfg, {}, 0
        for line in start_banner(cfg, self._data_lines(), self.init_report):
            self._say(line)
        for row in self.run.logged(self.start_epoch) if self.start_epoch else []:
            epoch = row.pop("epoch")  # resumed: the metrics describe the whole run
            metrics.update({f"{k}_init" if epoch == 0 else k: v for k, v in row.items()})
            skipped += int(row.get("skipped_steps", 0))
        if cfg.knn_every and self.start_epoch == 0 and dist.is_main_process():
            initial = self.knn_monitor()
            metrics.update({f"{k}_init": v for k, v in initial.items()})
            self.run.log({"epoch": 0, **initial})
            self._say(f"epoch 0 (initial): {_knn_text(initial)}")
        started = time.perf_counter()
        for epoch in range(self.start_epoch, cfg.epochs):
            row: dict[str, Any] = {"epoch": epoch + 1, **self.train_epoch(epoch)}
            if not math.isfinite(row["loss"]):
                raise MedsslError(
                    f"loss became {row['loss']} in epoch {epoch + 1}; lower {spelled('lr')}"
                )
            last = epoch + 1 == cfg.epochs
            due = cfg.knn_every and ((epoch + 1) % cfg.knn_every == 0 or last)
            if due and dist.is_main_process():
                row.update(self.knn_monitor())
            self.run.log(row)
            self.run.save_training_state(
                epoch + 1, self.model, self.optimizer, self.scheduler, **self.guard.state_dict()
            )
            done = epoch + 1 - self.start_epoch
            eta = (time.perf_counter() - started) / done * (cfg.epochs - epoch - 1)
            knn = {k: v for k, v in row.items() if k.startswith("knn_") or k == "feature_std"}
            extra = f", {_knn_text(knn)}" if knn else ""
            self._say(
                f"epoch {epoch + 1}/{cfg.epochs}: loss {row['loss']:.4f}, "
                f"{row['pairs_per_s']:.0f} pairs/s, distinct pairs "
                f"{row['distinct_pair_share']:.2f}{extra}, ETA {eta / 60:.1f} min"
            )
            metrics.update({k: v for k, v in row.items() if k != "epoch"})
            skipped += row["skipped_steps"]
        if dist.is_main_process():
            meta = {
                "backbone": cfg.backbone, "small_stem": str(cfg.small_stem),
                "image_size": str(cfg.image_size), "patch_size": str(cfg.patch_size),
            }  # fmt: skip
            export_backbone(self.model.backbone, self.run.path, metadata=meta)
        # the whole run's skipped steps (log.csv has them per epoch): a result that rests on
        # a shortened training says so
        metrics.update({"epochs": cfg.epochs, "method": cfg.method, "skipped_steps": skipped})
        metrics.update(bag_statistics(self.bags))
        excluded = [s.manifest.excluded for s in self.sources if s.manifest.excluded]
        if excluded:  # config.yaml says what was excluded, this how much
            metrics["excluded_images"] = sum(e["images"] for e in excluded)
            metrics["excluded_cases"] = sum(e["cases"] for e in excluded)
        self.run.finish(metrics)
        files = ["backbone.safetensors", "backbone.pt", "log.csv", "metrics.json"]
        for line in pretrain_summary(self.run.path, files):
            self._say(line)
        dist.barrier()
        return metrics

    def _say(self, message: str) -> None:
        if dist.is_main_process() and self.cfg.progress:
            print(message, file=sys.stderr, flush=True)


def pretrain(config: PretrainConfig) -> dict[str, Any]:
    """Run (or resume) a pretraining job and return its final metrics."""
    return Pretrainer(config).fit()

"""Does a pretrained backbone beat a random one on this data, with no training? (``medssl
knn``, ``medssl.knn``)

Each backbone (a random initialisation, always included as the reference, and every
``--init``) embeds the train split and a query split; each query image is scored by a
weighted vote of its k nearest train images (:func:`medssl.train.monitor.knn_scores`). The
differences to the random backbone come with paired case-level bootstrap intervals: both
backbones are scored on the same resampled cases, so the interval is about the difference
itself, not two overlapping marginal intervals.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.errors import MedsslError
from medssl.metrics import bootstrap_cis
from medssl.models.backbones import backbone_from_config
from medssl.options import check_seed
from medssl.train.common import (
    checkpoint_resnet,
    init_source,
    initialise_backbone,
    load_data,
    resolve_device,
)
from medssl.train.monitor import KNN_METRICS, backbone_knn_scores, knn_metrics


def _label(init: str) -> str:
    path = Path(init)
    return path.name if path.is_dir() else path.stem


def _architecture(
    inits: list[str], backbone: str, image_size: int, small_stem: bool | None, patch_size: int = 0
) -> tuple[str, int, bool, int]:
    """Backbone, image size, stem and patch size: from the init runs (which must agree), else
    the options."""
    found: dict[tuple[str, int, bool, int], list[str]] = {}
    for init in inits:
        config = init_source(init)
        if config is not None:
            key = (config["backbone"], int(config["image_size"]), bool(config["small_stem"]),
                   int(config.get("patch_size") or 0))  # fmt: skip
            found.setdefault(key, []).append(init)
    if len(found) > 1:
        listed = "; ".join(f"{', '.join(v)}: {k[0]} at {k[1]} px" for k, v in found.items())
        raise MedsslError(f"--init runs were trained with different architectures ({listed})")
    if found:
        run_backbone, run_size, run_stem, run_patch = next(iter(found))
        for option, given, used in (
            ("--backbone", backbone, run_backbone),
            ("--image-size", image_size, run_size),
            ("--patch-size", patch_size, run_patch),
        ):
            if given and given != used:
                raise MedsslError(f"{option} {given} differs from the --init run's {used}")
        stem = run_stem if small_stem is None else bool(small_stem)
        return run_backbone, run_size, stem, run_patch
    from medssl.options import default_of
    from medssl.train.pretrain import PretrainConfig  # a pretraining run's defaults

    shapes = {checkpoint_resnet(init) for init in inits} - {None}
    if not backbone and len(shapes) == 1:  # checkpoint files of one torchvision ResNet
        backbone, file_stem = next(iter(shapes))
        small_stem = file_stem if small_stem is None else small_stem

    return (
        backbone or default_of(PretrainConfig, "backbone"),
        image_size or default_of(PretrainConfig, "image_size"),
        bool(small_stem),
        patch_size,
    )


def compare_backbones(
    data: dict[str, Any],
    inits: list[str],
    split: str = "val",
    backbone: str = "",
    image_size: int = 0,
    small_stem: bool | None = None,
    patch_size: int = 0,
    k: int = 20,
    n_boot: int = 1000,
    seed: int = 0,
    device: str = "auto",
    cache_dir: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """k-NN scores of a random backbone and of each ``inits`` entry on ``split``.

    The random reference is ``torch.manual_seed(seed)`` followed by the torchvision builder,
    the same initialisation a pretraining run with that seed starts from (its epoch-0 k-NN).
    """
    if k < 1:
        raise MedsslError(f"--k must be at least 1, got {k}")
    seed = check_seed(seed, "--seed")
    labels = {"random": "random"}
    for init in inits:
        label = _label(init)
        if label in labels:
            raise MedsslError(f"--init {init}: two backbones would both be called {label!r}")
        labels[label] = init
    arch, size, stem, patch = _architecture(inits, backbone, image_size, small_stem, patch_size)
    architecture = {"backbone": arch, "image_size": size, "small_stem": stem, "patch_size": patch}
    manifest, splits, pixels = load_data(
        data, size, cache_dir, progress=progress, needs_labels="the k-NN comparison"
    )
    if split not in splits.indices or split == "train":
        choices = ", ".join(s for s in splits.indices if s != "train")
        raise MedsslError(f"--split {split}: not a query split of this dataset ({choices})")
    train_rows, query_rows = splits["train"], splits[split]
    if not len(query_rows):
        raise MedsslError(f"--split {split} is empty")
    dev = resolve_device(device)
    codes, _ = manifest.case_codes()
    targets, names, task = manifest.targets, manifest.class_names, manifest.task
    keys = KNN_METRICS[task]

    def say(message: str) -> None:
        if progress:
            print(message, file=sys.stderr, flush=True)

    scores: dict[str, np.ndarray] = {}
    for i, (label, init) in enumerate(labels.items(), 1):
        say(
            f"k-NN {i}/{len(labels)}: {label}: embedding {len(train_rows)} train and "
            f"{len(query_rows)} {split} images on {dev.type}"
        )
        started = time.perf_counter()
        torch.manual_seed(seed)
        net, _ = backbone_from_config(architecture)
        initialise_backbone(net, init)
        scores[label] = backbone_knn_scores(
            net.to(dev), pixels, train_rows, query_rows, targets, manifest.num_classes, dev, k=k
        )
        say(f"k-NN {i}/{len(labels)}: {label}: done in {time.perf_counter() - started:.1f} s")
    if len(labels) > 1:
        say(f"k-NN: differences to random, {n_boot} bootstrap resamples by case")

    query_targets = targets[query_rows]
    result: dict[str, Any] = {
        "dataset": manifest.name, "split": split, "n": int(len(query_rows)),
        "n_cases": int(len(np.unique(codes[query_rows]))), "k": min(k, len(train_rows)),
        "backbone": arch, "image_size": size, "small_stem": stem, "seed": seed,
        "n_boot": n_boot, "inits": labels,
        "scores": {}, "vs_random": {},
    }  # fmt: skip
    for label, s in scores.items():
        result["scores"][label] = knn_metrics(task, s, query_targets, names)
    reference = scores["random"]
    for label, s in scores.items():
        if label == "random":
            continue

        def differences(rows: np.ndarray, s: np.ndarray = s) -> dict[str, float | None]:
            a = knn_metrics(task, s[rows], query_targets[rows], names)
            b = knn_metrics(task, reference[rows], query_targets[rows], names)
            return {k: None if a[k] is None or b[k] is None else a[k] - b[k] for k in keys}

        point = differences(np.arange(len(query_rows)))
        cis = bootstrap_cis(differences, keys, codes[query_rows], n_boot=n_boot, seed=seed)
        result["vs_random"][label] = {k: {"difference": point[k], "ci": list(cis[k])} for k in keys}
    return result

"""``medssl evaluate``: score a fine-tuned run on a split, in-distribution or shifted.

The shift split (or any external dataset) is scored with the fine-tuned weights as they
are -- no further training. For an external dataset the model's classes and the dataset's
are matched by name, or through a user mapping (``{dataset class: model class or null}``);
images of unmapped classes are excluded and reported. The mapping may also merge model
classes, ``model_classes: {malignant: [mel, bcc, akiec], benign: [nv, ...]}``: the model's
probabilities are summed per group and the groups are the classes scored. Multi-label
findings are matched by name; findings the dataset lacks become NaN (not evaluated).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.data.manifest import Manifest
from medssl.errors import MedsslError
from medssl.evaluate import (
    ClassMap,
    evaluate_predictions,
    load_class_map,
    map_classes,
    merge_model_classes,
)
from medssl.models.backbones import build_backbone
from medssl.models.checkpoint import read_checkpoint
from medssl.models.heads import Classifier
from medssl.train.common import load_data, resolve_device
from medssl.train.finetune import BEST, probabilities
from medssl.train.monitor import model_outputs
from medssl.train.run import METRICS, is_complete, read_config, write_json_atomic


def load_classifier(run: Path, num_classes: int, device: torch.device) -> Classifier:
    cfg = read_config(run)
    if not (run / BEST).is_file():
        raise MedsslError(f"--model {run} has no {BEST}: is it a finished finetune run?")
    backbone, feat_dim = build_backbone(cfg["backbone"], small_images=bool(cfg["small_stem"]))
    model = Classifier(backbone, feat_dim, num_classes)
    state = read_checkpoint(run / BEST)
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise MedsslError(f"{run / BEST} is damaged: it holds no model state")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise MedsslError(f"{run / BEST} does not fit the run's model: {first}") from None
    return model.to(device).to(memory_format=torch.channels_last)


def align_targets(
    manifest: Manifest, model_names: list[str], mapping: dict[str, str | None] | None
) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Targets in the model's class space, a keep mask, and what was left out."""
    names = manifest.class_names
    if manifest.task == "multiclass":
        if mapping is None:
            if names == model_names:
                return manifest.targets, np.ones(len(manifest), bool), {}
            mapping = {n: (n if n in model_names else None) for n in names}
        mapped, keep, report = map_classes(manifest.targets, names, mapping, model_names)
        return mapped, keep, report
    mapping = mapping or {n: n for n in names if n in model_names}
    targets = np.full((len(manifest), len(model_names)), np.nan, dtype=np.float32)
    for source, target in mapping.items():
        if target is not None and source in names and target in model_names:
            targets[:, model_names.index(target)] = manifest.targets[:, names.index(source)]
    missing = [n for n in model_names if n not in {t for t in mapping.values() if t}]
    return targets, np.ones(len(manifest), bool), {"findings_not_in_dataset": missing}


def evaluate_run(
    run: str | Path,
    split: str = "test",
    data: dict[str, Any] | None = None,
    class_map: str | Path | dict[str, Any] | ClassMap | None = None,
    n_boot: int = 1000,
    mean_over: list[str] | None = None,
    device: str = "auto",
    name: str | None = None,
) -> dict[str, Any]:
    """Score ``run`` on ``split`` of its own data (or of ``data``); write and return metrics.

    ``split`` is a split name (train, val, test, shift) or ``all`` for every image of an
    external dataset. ``class_map`` is a class mapping file, dict or
    :class:`~medssl.evaluate.ClassMap`; its ``model_classes`` merge model classes into
    evaluation classes (probabilities summed) before scoring. Results go to
    ``RUN/eval_<name>.json`` and predictions to ``RUN/predictions_<name>.npz``;
    ``RUN/metrics.json`` gathers every evaluation.
    """
    run = Path(run).expanduser()
    if not is_complete(run):
        raise MedsslError(f"--model {run} is not a finished medssl finetune run")
    cfg = read_config(run)
    if "label_fraction" not in cfg:
        raise MedsslError(f"--model {run} is a pretraining run; evaluate a finetune run")
    external = data is not None and data != cfg["data"]
    manifest, splits, pixels = load_data(data or cfg["data"], cfg["image_size"], cfg["cache_dir"])
    if split == "all":
        rows = np.arange(len(manifest))
    elif split in splits:
        rows = splits[split]
    else:
        raise MedsslError(
            f"--split {split}: this dataset has splits {', '.join(splits.names())}, all"
        )
    train_manifest_names = cfg.get("class_names") or manifest.class_names
    cmap = load_class_map(class_map) if class_map else ClassMap()
    task = cfg.get("task", manifest.task)
    eval_names = list(train_manifest_names)
    if cmap.model_classes:
        if task != "multiclass":
            raise MedsslError("class mapping: model_classes needs a multiclass model")
        # checks the model class names before any image is scored
        _, eval_names = merge_model_classes(
            np.zeros((0, len(train_manifest_names))), train_manifest_names, cmap.model_classes
        )
    sub = manifest.subset(rows)
    targets, keep, mapping_report = align_targets(sub, eval_names, cmap.classes)
    dev = resolve_device(device)
    model = load_classifier(run, len(train_manifest_names), dev)
    logits = model_outputs(model, pixels, rows[keep], dev)
    probs = probabilities(task, logits)
    if cmap.model_classes:
        probs, _ = merge_model_classes(probs, train_manifest_names, cmap.model_classes)
        mapping_report["model_classes"] = cmap.model_classes
    case_ids = sub.table["case_id"].to_numpy()[keep]
    metrics = evaluate_predictions(
        probs, targets[keep], task, eval_names, case_ids,
        n_boot=n_boot, seed=0, mean_over=mean_over,
    )  # fmt: skip
    label = name or (f"{data['dataset']}-{split}" if external else split)
    metrics.update({"split": label, "dataset": (data or cfg["data"])["dataset"]})
    if mapping_report:
        metrics["class_mapping"] = mapping_report
    write_json_atomic(metrics, run / f"eval_{label}.json")
    np.savez_compressed(
        run / f"predictions_{label}.npz", probs=probs, targets=targets[keep],
        case_ids=case_ids.astype(str), class_names=np.asarray(eval_names),
    )  # fmt: skip
    summary_path = run / METRICS
    summary = json.loads(summary_path.read_text())
    summary.setdefault("evaluation", {})[label] = {
        k: metrics[k] for k in ("accuracy", "balanced_accuracy", "auc_macro",
                                "auc_mean_selected", "n", "ci") if k in metrics
    }  # fmt: skip
    write_json_atomic(summary, summary_path)
    return metrics

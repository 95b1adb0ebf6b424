"""Scoring a fine-tuned run on a split, in-distribution or shifted (``medssl evaluate``).

**What is scored.** On the model's own data the default is its ``test`` split. Any other
dataset is *external* and is scored whole by default (``split="all"``): medssl's 70/10/20
re-split of an external dataset would score a fifth of it. Scoring images the model was
trained on (its ``train`` split, or ``all`` of its own data) is refused unless
``allow_training_images`` (``--allow-training-images``) is given, and then warned about.
Every evaluation records how many images and cases were scored and how many were left out,
and why (``scored``, ``excluded``).

**Classes.** The shift split (or any external dataset) is scored with the fine-tuned weights
as they are -- no further training. For an external dataset the model's classes and the
dataset's are matched by name, or through a user mapping (``{dataset class: model class or
null}``); images of unmapped classes are excluded and reported. The mapping may also merge
model classes, ``model_classes: {malignant: [mel, bcc, akiec], benign: [nv, ...]}``: the
model's probabilities are summed per group and the groups are the classes scored.
Multi-label findings are matched by name; findings the dataset lacks become NaN (not
evaluated).

**What is measured.** Discrimination (accuracy, balanced accuracy, AUCs) and calibration
(ECE, Brier score), each with a case-level bootstrap interval; for a binary evaluation (two
classes, e.g. merged benign/malignant) or a named ``positive_class``, sensitivity and
specificity at the threshold that reaches ``target_sensitivity`` on the validation split of
the model's own data. The same metrics per case (a case's prediction is the mean of its
images' probabilities), and per subgroup where the manifest has metadata
(:mod:`medssl.subgroups`). ``temperature_scaling`` divides the logits by one temperature
fitted on the model's validation split (Guo et al. 2017) before anything is measured.

**What is stored.** ``RUN/eval_<label>.json``, ``RUN/predictions_<label>.npz`` and a summary
in ``RUN/metrics.json``. The predictions carry case ids as salted hashes
(:func:`medssl.case_ids.hash_case_ids`, HMAC-SHA256 with the run's ``case_id_salt`` file), so
the files can be shared; whoever holds the salt can join them back to their cases.
``keep_case_ids`` stores the ids in clear.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medssl.case_ids import hash_case_ids, run_salt
from medssl.data.manifest import Manifest
from medssl.data.notices import announce
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.fileio import atomic_write
from medssl.inference import load_classifier
from medssl.metrics import (
    ClassMap,
    case_level,
    evaluate_predictions,
    load_class_map,
    map_classes,
    merge_model_classes,
    positive_rows,
    sensitivity_specificity,
    threshold_for_sensitivity,
)
from medssl.models.heads import Classifier
from medssl.outputs import check_outputs
from medssl.train.common import load_eval_data, resolve_device
from medssl.train.finetune import masked_bce, probabilities
from medssl.train.monitor import model_outputs
from medssl.train.run import METRICS, is_complete, read_config, write_json_atomic

#: class names read as "the negative class" when picking the positive class of a binary task
NEGATIVE_NAMES = {
    "benign", "normal", "negative", "healthy", "no finding", "no_finding", "nonmalignant",
    "non-malignant", "absent", "0", "false", "no",
}  # fmt: skip
#: the summary of every evaluation kept in RUN/metrics.json
SUMMARY_KEYS = (
    "accuracy", "balanced_accuracy", "auc_macro", "auc_mean_selected", "ece", "brier",
    "sensitivity", "specificity", "n", "n_cases", "ci",
)  # fmt: skip


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


# --------------------------------------------------------------------------- choices


@dataclass
class _Scope:
    """What an evaluation scores: rows of the loaded data, and what it says about them."""

    rows: np.ndarray
    external: bool
    excluded: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    training_images: int = 0


def _same_data(given: dict[str, Any], own: dict[str, Any]) -> bool:
    """Whether a data spec names the model's own dataset (dataset and root)."""
    same_root = os.path.realpath(given.get("root") or "") == os.path.realpath(own.get("root") or "")
    return given["dataset"] == own["dataset"] and same_root


def _resolve_data(data: dict[str, Any] | None, own: dict[str, Any]) -> tuple[dict, bool]:
    """(the spec to score, whether it is external). The model's own dataset named with other
    options would split differently from training, which could score training images."""
    own = DataSpec.from_dict(own).to_dict()
    if data is None:
        return own, False
    given = DataSpec.from_dict(data).to_dict()
    if not _same_data(given, own):
        return given, True
    differ = sorted(k for k in set(given) | set(own) if k != "root" and given.get(k) != own.get(k))
    if differ:
        raise MedsslError(
            f"--dataset {given['dataset']} --root {given['root']} is the model's own data but "
            f"with other settings ({', '.join(differ)}), which would split it differently from "
            "training: leave out --dataset/--root to use the run's own data"
        )
    return own, False


def _n_cases(manifest: Manifest, rows: np.ndarray) -> int:
    return int(manifest.table["case_id"].iloc[rows].nunique())


def _scope(
    manifest: Manifest, splits: Any, split: str, external: bool, allow_training: bool
) -> _Scope:
    """The rows of ``split``, refusing the model's training images without permission."""
    everything = np.arange(len(manifest))
    if split == "all":
        rows = everything
    elif split in splits:
        rows = np.asarray(splits[split])
    else:
        raise MedsslError(
            f"--split {split}: this dataset has splits {', '.join(splits.names())}, all"
        )
    scope = _Scope(rows, external)
    left = np.setdiff1d(everything, rows)
    if left.size:
        scheme = "medssl's re-split by case" if splits.scheme == "canonical" else "the publisher's"
        scope.excluded.append({
            "reason": f"not in the {split} split ({scheme})", "images": int(left.size),
            "cases": _n_cases(manifest, left),
        })  # fmt: skip
        if external and splits.scheme == "canonical":  # the publisher's split is a choice
            scope.warnings.append(
                f"scoring the {split} split of an external dataset ({rows.size} of "
                f"{len(manifest)} images, {scheme}); without --split it is scored whole"
            )
    if not external:
        training = np.intersect1d(rows, splits["train"]) if "train" in splits else rows
        scope.training_images = int(training.size)
        if training.size and not allow_training:
            raise MedsslError(
                f"--split {split} includes {training.size} images the model was trained on "
                "(its train split); pass --allow-training-images to score them anyway"
            )
        if training.size:
            scope.warnings.append(
                f"scoring {training.size} images of the model's train split, which it was "
                "trained on: these scores say nothing about new data"
            )
        if split == "val":
            scope.warnings.append(
                "the val split chose the model's best epoch: its scores are optimistic"
            )
    if manifest.unreadable_dropped:
        when = "" if split == "all" else " (before splitting)"
        scope.excluded.append({
            "reason": f"unreadable image, dropped by --skip-unreadable{when}",
            "images": int(manifest.unreadable_dropped), "cases": None,
        })  # fmt: skip
    return scope


def _positive_class(names: list[str], task: str, given: str | None) -> str | None:
    """The class of the operating point: ``given``, or the positive class of a two-class
    evaluation (the class that is not named like a negative one; else the second)."""
    if given is not None:
        if given not in names:
            raise MedsslError(
                f"--positive-class {given!r} is not one of the evaluated classes "
                f"({', '.join(names)})"
            )
        return given
    if task != "multiclass" or len(names) != 2:
        return None
    negative = [n for n in names if n.strip().lower() in NEGATIVE_NAMES]
    if len(negative) == 1:
        return next(n for n in names if n not in negative)
    return names[1]


def fit_temperature(logits: torch.Tensor, targets: np.ndarray, task: str) -> float:
    """The temperature T minimising the negative log-likelihood of ``logits / T`` on these
    rows (Guo et al. 2017); multi-label: masked binary cross-entropy, one T for all."""
    x = logits.detach().double()
    if task == "multiclass":
        y = torch.as_tensor(np.asarray(targets), dtype=torch.long)

        def nll(z: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.cross_entropy(z, y)
    else:
        t = torch.as_tensor(np.asarray(targets), dtype=torch.float64)

        def nll(z: torch.Tensor) -> torch.Tensor:
            return masked_bce(z, t)

    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = nll(x / log_t.exp())
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(log_t.detach().exp())
    if not np.isfinite(temperature) or temperature <= 0:
        raise MedsslError("temperature scaling failed on the validation split")
    return temperature


# --------------------------------------------------------------------------- reference


@dataclass
class _Reference:
    """The model's own validation split, in the evaluation's class space."""

    logits: torch.Tensor
    targets: np.ndarray  # model class space
    dataset: str


def _source_scale(cfg: dict[str, Any]) -> float:
    """The run's ``source_scale`` (1 for runs made before the option): evaluation images are
    the un-augmented ``S x S`` images of the sources it trained on
    (:func:`medssl.data.cache.eval_images`)."""
    return float(cfg.get("source_scale", 1.0))


def _reference(
    cfg: dict[str, Any], loaded: tuple | None, model: Classifier, dev: torch.device
) -> _Reference:
    manifest, splits, pixels = loaded or load_eval_data(
        cfg["data"], cfg["image_size"], _source_scale(cfg), cfg["cache_dir"],
        bool(cfg.get("skip_unreadable")), progress=False,
    )  # fmt: skip
    if "val" not in splits:
        raise MedsslError("the model's own data has no val split to calibrate on")
    rows = np.asarray(splits["val"])
    return _Reference(
        model_outputs(model, pixels, rows, dev), manifest.targets[rows], cfg["data"]["dataset"]
    )


def _merge_labels(labels: np.ndarray, model_names: list[str], groups: dict) -> np.ndarray:
    """Model class labels as evaluation group indices (-1: in no group)."""
    group_of = {m: j for j, members in enumerate(groups.values()) for m in members}
    lookup = np.array([group_of.get(n, -1) for n in model_names], dtype=np.int64)
    return lookup[np.asarray(labels, dtype=np.int64)]


def _operating_point(
    ref: _Reference, task: str, model_names: list[str], cmap: ClassMap, eval_names: list[str],
    positive: str, target: float, temperature: float,
) -> dict[str, Any]:  # fmt: skip
    """The threshold reaching ``target`` sensitivity for ``positive`` on the model's val."""
    probs = probabilities(task, ref.logits / temperature)
    targets = ref.targets
    if cmap.model_classes:
        probs, _ = merge_model_classes(probs, model_names, cmap.model_classes)
        targets = _merge_labels(targets, model_names, cmap.model_classes)
        keep = targets >= 0
        probs, targets = probs[keep], targets[keep]
    k = eval_names.index(positive)
    pos, neg = positive_rows(targets, task, k)
    block: dict[str, Any] = {
        "positive_class": positive, "target_sensitivity": float(target),
        "threshold_from": f"val split of {ref.dataset} ({int(pos.sum())} positive, "
        f"{int(neg.sum())} negative images)",
    }  # fmt: skip
    if not pos.any():
        block["threshold"] = None
        block["note"] = f"no {positive} image in the val split: no operating point"
        return block
    threshold = threshold_for_sensitivity(probs[:, k], pos, target)
    val = sensitivity_specificity(probs[:, k], pos, neg, threshold)
    block.update(threshold=threshold, val_sensitivity=val["sensitivity"],
                 val_specificity=val["specificity"])  # fmt: skip
    return block


# --------------------------------------------------------------------------- evaluation


def evaluate_run(
    run: str | Path,
    split: str | None = None,
    data: dict[str, Any] | None = None,
    class_map: str | Path | dict[str, Any] | ClassMap | None = None,
    n_boot: int = 1000,
    mean_over: list[str] | None = None,
    device: str = "auto",
    name: str | None = None,
    *,
    allow_training_images: bool = False,
    positive_class: str | None = None,
    target_sensitivity: float = 0.95,
    temperature_scaling: bool = False,
    keep_case_ids: bool = False,
    skip_unreadable: bool = False,
    subgroups: bool = True,
) -> dict[str, Any]:
    """Score ``run`` on ``split`` of its own data (or of ``data``); write and return metrics.

    ``split`` is a split name (train, val, test, shift) or ``all``; None: ``test`` of the
    model's own data, ``all`` of an external dataset. ``class_map`` is a class mapping file,
    dict or :class:`~medssl.metrics.ClassMap`; its ``model_classes`` merge model classes
    into evaluation classes (probabilities summed) before scoring. The keyword options are
    described in the module docstring. Results go to ``RUN/eval_<name>.json`` and
    predictions to ``RUN/predictions_<name>.npz``; ``RUN/metrics.json`` gathers every
    evaluation.
    """
    run = Path(run).expanduser()
    cfg = _finetune_config(run)
    if not 0 < target_sensitivity <= 1:
        raise MedsslError(f"--target-sensitivity must be in (0, 1], got {target_sensitivity}")
    spec, external = _resolve_data(data, cfg["data"])
    split = split or ("all" if external else "test")
    label = name or (f"{spec['dataset']}-{split}" if external else split)
    label += "-temperature" if temperature_scaling else ""
    _check_outputs(run, label, class_map)
    unreadable = skip_unreadable if external else bool(cfg.get("skip_unreadable"))
    loaded = load_eval_data(
        spec, cfg["image_size"], _source_scale(cfg), cfg["cache_dir"], unreadable,
        needs_labels="evaluation",
    )
    manifest, splits, pixels = loaded
    scope = _scope(manifest, splits, split, external, allow_training_images)
    announce(scope.warnings)

    cmap = load_class_map(class_map) if class_map else ClassMap()
    task, model_names, eval_names = _classes(cfg, manifest, cmap)
    positive = _positive_class(eval_names, task, positive_class)
    sub = manifest.subset(scope.rows)
    targets, keep, mapping_report = align_targets(sub, eval_names, cmap.classes)
    _exclude_unmapped(sub, keep, mapping_report, scope)
    if task == "multilabel":
        keep &= _exclude_unlabelled(sub, targets, keep, scope)
    if not keep.any():
        raise MedsslError(
            "no image is left to score: " + "; ".join(e["reason"] for e in scope.excluded)
        )

    dev = resolve_device(device)
    model = load_classifier(run, len(model_names), dev)
    logits = model_outputs(model, pixels, scope.rows[keep], dev)
    reference = None
    if temperature_scaling or positive is not None:
        reference = _reference(cfg, None if external else loaded, model, dev)
    temperature = 1.0
    if temperature_scaling and reference is not None:
        temperature = fit_temperature(reference.logits, reference.targets, task)
    probs = probabilities(task, logits / temperature)
    if cmap.model_classes:
        probs, _ = merge_model_classes(probs, model_names, cmap.model_classes)
        mapping_report["model_classes"] = cmap.model_classes
    op = None
    if positive is not None and reference is not None:
        op = _operating_point(reference, task, model_names, cmap, eval_names, positive,
                              target_sensitivity, temperature)  # fmt: skip
    common = dict(n_boot=n_boot, seed=0, mean_over=mean_over, positive_class=positive,
                  threshold=op.get("threshold") if op else None)  # fmt: skip
    case_ids = sub.table["case_id"].to_numpy()[keep]
    metrics = _measure(probs, targets[keep], case_ids, task, eval_names, common, op,
                       sub.table.loc[keep] if subgroups else None)  # fmt: skip

    if temperature_scaling:
        metrics["temperature"] = temperature
    kept = scope.rows[keep]
    metrics.update({
        "split": label, "dataset": spec["dataset"], "external": external,
        "split_scheme": splits.scheme,
        "scored": {"images": int(kept.size), "cases": _n_cases(manifest, kept)},
        "excluded": scope.excluded, "training_images_scored": scope.training_images,
        "warnings": [*manifest.warnings, *splits.warnings, *scope.warnings],
        "case_ids_stored": "clear" if keep_case_ids else "hmac-sha256",
    })  # fmt: skip
    if mapping_report:
        metrics["class_mapping"] = mapping_report
    _write(run, label, metrics, probs, targets[keep], case_ids, eval_names, keep_case_ids)
    return metrics


def output_files(run: str | Path, label: str) -> tuple[Path, Path]:
    """The files an evaluation named ``label`` writes in ``run``: its results and its
    predictions (``RUN/metrics.json`` gathers a summary of every evaluation)."""
    run = Path(run).expanduser()
    return run / f"eval_{label}.json", run / f"predictions_{label}.npz"


def _check_outputs(run: Path, label: str, class_map: Any) -> None:
    """Refuse, before any work, a ``name`` that would write outside the run, and results
    that would overwrite the ``class_map`` file (:func:`medssl.outputs.check_outputs`)."""
    if Path(label).name != label or label.startswith("."):
        raise MedsslError(f"evaluate: name {label!r} must be a plain name, not a path")
    read = [(f"--class-map {class_map}", class_map)] if isinstance(class_map, str | Path) else []
    results, predictions = output_files(run, label)
    check_outputs(
        [("evaluate's results", results), ("evaluate's predictions", predictions)], read
    )


def _finetune_config(run: Path) -> dict[str, Any]:
    """The config of a finished finetune run (a one-line error for anything else)."""
    if not is_complete(run):
        raise MedsslError(f"--model {run} is not a finished medssl finetune run")
    cfg = read_config(run)
    if "label_fraction" not in cfg:
        raise MedsslError(f"--model {run} is a pretraining run; evaluate a finetune run")
    return cfg


def _classes(
    cfg: dict[str, Any], manifest: Manifest, cmap: ClassMap
) -> tuple[str, list[str], list[str]]:
    """(task, the model's classes, the evaluated classes: the model's, or merged groups)."""
    model_names = list(cfg.get("class_names") or manifest.class_names)
    task = cfg.get("task", manifest.task)
    if not cmap.model_classes:
        return task, model_names, list(model_names)
    if task != "multiclass":
        raise MedsslError("class mapping: model_classes needs a multiclass model")
    # checks the model class names before any image is scored
    _, groups = merge_model_classes(
        np.zeros((0, len(model_names))), model_names, cmap.model_classes
    )
    return task, model_names, groups


def _measure(
    probs: np.ndarray, targets: np.ndarray, case_ids: np.ndarray, task: str,
    names: list[str], common: dict[str, Any], op: dict[str, Any] | None,
    table: Any | None,
) -> dict[str, Any]:  # fmt: skip
    """Image-level metrics, the operating point, case-level metrics and (given the scored
    rows' manifest ``table``) subgroup metrics."""
    metrics = evaluate_predictions(probs, targets, task, names, case_ids, **common)
    if op is not None:
        metrics["operating_point"] = {**op, **metrics.get("operating_point", {})}
    metrics["case_level"] = _case_level(probs, targets, case_ids, task, names, common)
    if table is not None:
        from medssl.subgroups import subgroup_columns, subgroup_metrics

        columns = subgroup_columns(table)
        metrics["subgroups"] = subgroup_metrics(
            probs, targets, task, names, case_ids, columns, **common
        )
    return metrics


def _exclude_unmapped(sub: Manifest, keep: np.ndarray, report: dict, scope: _Scope) -> None:
    for cls, images in report.get("unmapped", {}).items():
        if images:
            rows = np.flatnonzero(~keep & (sub.targets == sub.class_names.index(cls)))
            scope.excluded.append({
                "reason": f"class '{cls}' maps to no evaluated class", "images": int(images),
                "cases": _n_cases(sub, rows),
            })  # fmt: skip


def _exclude_unlabelled(
    sub: Manifest, targets: np.ndarray, keep: np.ndarray, scope: _Scope
) -> np.ndarray:
    """Multi-label rows with no known target among the evaluated findings carry no label."""
    labelled = ~np.isnan(targets).all(axis=1)
    gone = keep & ~labelled
    if gone.any():
        scope.excluded.append({
            "reason": "no known label for any evaluated finding", "images": int(gone.sum()),
            "cases": _n_cases(sub, np.flatnonzero(gone)),
        })  # fmt: skip
    return labelled


def _case_level(
    probs: np.ndarray, targets: np.ndarray, case_ids: np.ndarray, task: str,
    names: list[str], common: dict[str, Any],
) -> dict[str, Any]:  # fmt: skip
    """Metrics of the case predictions (the mean of each case's image probabilities)."""
    case_probs, case_targets, ids, conflicting = case_level(probs, targets, case_ids, task)
    if len(ids) == len(case_ids):
        return {"n_cases": len(ids), "note": "one image per case: the image-level metrics"}
    if len(ids) == 0:
        return {"n_cases": 0, "n_cases_conflicting": conflicting,
                "note": "no case whose images agree on the label"}  # fmt: skip
    out = evaluate_predictions(case_probs, case_targets, task, names, ids, **common)
    out["n_cases_conflicting"] = conflicting
    if conflicting:
        out["note"] = (
            f"{conflicting} case(s) whose images disagree on the label are left out"
            if task == "multiclass"
            else f"{conflicting} case(s) have findings on which their images disagree: "
            "those findings are unknown for them"
        )
    return out


def _write(
    run: Path, label: str, metrics: dict[str, Any], probs: np.ndarray, targets: np.ndarray,
    case_ids: np.ndarray, names: list[str], keep_case_ids: bool,
) -> None:  # fmt: skip
    results, predictions = output_files(run, label)
    write_json_atomic(metrics, results)
    stored = case_ids.astype(str) if keep_case_ids else hash_case_ids(case_ids, run_salt(run))
    scheme = np.asarray(metrics["case_ids_stored"])

    def save(tmp: str) -> None:
        with open(tmp, "wb") as fh:  # a file object: savez would append .npz to a name
            np.savez_compressed(
                fh, probs=probs, targets=targets, case_ids=stored,
                class_names=np.asarray(names), case_id_scheme=scheme,
            )  # fmt: skip

    atomic_write(predictions, save)
    summary_path = run / METRICS
    summary = json.loads(summary_path.read_text())
    summary.setdefault("evaluation", {})[label] = {
        k: metrics[k] for k in SUMMARY_KEYS if k in metrics
    }
    write_json_atomic(summary, summary_path)

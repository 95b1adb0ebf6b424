"""Multi-label fine-tuning end to end on a small CheXpert-layout set written here: uncertain
labels masked out of the loss and the metrics, mean AUC over the chosen findings, the
publisher's split (valid.csv as the test set)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from sklearn.metrics import roc_auc_score

from medssl.cli import main
from medssl.data.adapters import load_manifest
from medssl.train.finetune import masked_bce

FINDINGS = ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Pleural Effusion"]
HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", "No Finding", *FINDINGS]


def _cells(rng: np.random.Generator, i: int) -> dict[str, str]:
    """Label cells cycling through positive, negative, uncertain (-1.0) and blank."""
    cells = {}
    for k, finding in enumerate(FINDINGS):
        cells[finding] = ["1.0", "0.0", "-1.0", "", "0.0", "1.0"][(i + 2 * k) % 6]
    cells["Edema"] = "1.0" if i % 2 else "0.0"  # Edema positives and negatives everywhere
    return cells


def write_chexpert(root: Path, n_train: int = 36, n_valid: int = 12) -> Path:
    """``train.csv`` / ``valid.csv`` with ``CheXpert-v1.0-small/...`` paths and JPEGs; three
    images per patient; Edema-positive images are brighter, so there is something to learn."""
    rng = np.random.default_rng(0)
    for split, n, first in (("train", n_train, 1), ("valid", n_valid, 64541)):
        rows = []
        for i in range(n):
            rel = f"{split}/patient{first + i // 3:05d}/study{i % 3 + 1}/view1_frontal.jpg"
            cells = _cells(rng, i)
            level = 170 if cells["Edema"] == "1.0" else 70
            pixels = np.clip(level + rng.integers(-25, 25, (20, 20, 3)), 0, 255).astype(np.uint8)
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(root / rel)
            rows.append({"Path": f"CheXpert-v1.0-small/{rel}", "Sex": "MF"[i % 2],
                         "Age": str(30 + i), "Frontal/Lateral": "Frontal",
                         "AP/PA": "AP", "No Finding": "", **cells})  # fmt: skip
        pd.DataFrame(rows, columns=HEADER).to_csv(root / f"{split}.csv", index=False)
    return root


def test_masked_bce_is_the_bce_of_the_known_targets_only() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0], [1.5, 0.1, -0.7]], requires_grad=True)
    targets = torch.tensor([[1.0, float("nan"), 0.0], [float("nan"), 1.0, 1.0]])
    loss = masked_bce(logits, targets)
    known = [(0, 0, 1.0), (0, 2, 0.0), (1, 1, 1.0), (1, 2, 1.0)]
    z = logits.detach().numpy()
    by_hand = -np.mean([
        t * np.log(1 / (1 + np.exp(-z[r, c]))) +
        (1 - t) * np.log(1 - 1 / (1 + np.exp(-z[r, c])))
        for r, c, t in known
    ])  # fmt: skip
    assert loss.item() == pytest.approx(by_hand, rel=1e-6)
    loss.backward()
    assert logits.grad[0, 1] == 0 and logits.grad[1, 0] == 0  # unknown: no gradient
    everything_unknown = masked_bce(logits, torch.full_like(targets, float("nan")))
    assert everything_unknown.item() == 0.0
    # equals torch's own BCE when nothing is unknown
    full = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    expected = F.binary_cross_entropy_with_logits(logits, full)
    assert masked_bce(logits, full).item() == pytest.approx(expected.item())


def test_uncertain_policies_in_the_manifest(tmp_path: Path) -> None:
    root = write_chexpert(tmp_path / "CheXpert-v1.0-small", n_train=6, n_valid=3)
    raw = pd.read_csv(root / "train.csv", dtype=str, keep_default_na=False)
    uncertain = (raw["Atelectasis"] == "-1.0").to_numpy()
    assert uncertain.any()
    ignore = load_manifest("chexpert", root, uncertain="ignore")
    ones = load_manifest("chexpert", root, uncertain="positive")
    col = ignore.class_names.index("Atelectasis")
    assert np.isnan(ignore.targets[:6][uncertain, col]).all()
    assert (ones.targets[:6][uncertain, col] == 1).all()
    blank = (raw["Atelectasis"] == "").to_numpy()
    assert (ignore.targets[:6][blank, col] == 0).all()  # blank: not mentioned = negative


def test_multilabel_finetune_and_evaluate_end_to_end(tmp_path: Path, capsys) -> None:
    root = write_chexpert(tmp_path / "CheXpert-v1.0-small")
    run = tmp_path / "run"
    data = ["--dataset", "chexpert", "--root", str(root), "--uncertain", "ignore",
            "--split-scheme", "official", "--cache-dir", str(tmp_path / "cache")]  # fmt: skip
    code = main(["finetune", *data, "--out", str(run), "--image-size", "16", "--epochs", "2",
                 "--batch-size", "6", "--num-workers", "0", "--precision", "fp32", "--quiet",
                 "--json"])  # fmt: skip
    assert code == 0
    finetuned = json.loads(capsys.readouterr().out)
    assert finetuned["train_images"] > 0
    log = pd.read_csv(run / "log.csv")
    assert np.isfinite(log["loss"]).all()  # uncertain (NaN) targets never reach the loss

    chosen = ["Edema", "Effusion", "Atelectasis"]
    code = main(["evaluate", "--model", str(run), "--mean-over", ",".join(chosen),
                 "--n-boot", "20", "--json"])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    # the publisher's split: the test set is exactly valid.csv
    assert metrics["split_scheme"] == "official" and metrics["n"] == 12
    assert metrics["mean_over"] == chosen
    with np.load(run / "predictions_test.npz") as z:
        probs, targets, names = z["probs"], z["targets"], list(z["class_names"])
    valid = pd.read_csv(root / "valid.csv", dtype=str, keep_default_na=False)
    uncertain = (valid["Atelectasis"] == "-1.0").to_numpy()
    assert np.isnan(targets[uncertain, names.index("Atelectasis")]).all()
    aucs = []
    for finding in chosen:
        j = names.index(finding)
        known = ~np.isnan(targets[:, j])
        auc = roc_auc_score(targets[known, j], probs[known, j])
        assert metrics["auc_per_finding"][finding] == pytest.approx(auc)
        aucs.append(auc)
    assert metrics["auc_mean_selected"] == pytest.approx(np.mean(aucs))
    lo, hi = metrics["ci"]["auc_mean_selected"]
    assert lo <= metrics["auc_mean_selected"] <= hi
    assert metrics["ece"] is not None and 0 <= metrics["brier"] <= 1
    assert set(metrics["subgroups"]) == {"sex", "age_band"}  # CheXpert's Sex and Age
    # three images per patient: the case-level prediction is their mean
    case = metrics["case_level"]
    assert case["n_cases"] == 4 and case["n"] == 4

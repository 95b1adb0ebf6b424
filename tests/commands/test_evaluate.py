"""``medssl evaluate`` as research-grade evaluation: external data scored whole, training
images refused, operating points, calibration, case-level and subgroup metrics, hashed ids.

One tiny fine-tune (16 px, two epochs) on a HAM10000-layout set with sex/age/localization
metadata serves every test.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score, roc_curve

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config
from medssl.case_ids import SALT_FILE, hash_case_ids, run_salt
from medssl.cli import main
from medssl.data import notices
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.evaluation import evaluate_run, fit_temperature
from medssl.inference import load_classifier
from medssl.metrics import multiclass_calibration, multiclass_metrics
from medssl.subgroups import age_band, sex_group
from medssl.train.common import load_data
from medssl.train.finetune import finetune
from medssl.train.monitor import model_outputs

MERGE = {"malignant": ["mel", "bcc", "akiec"], "benign": ["nv", "bkl", "df", "vasc"]}


@pytest.fixture(autouse=True)
def _fresh_notices():
    notices.forget()


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=48)
    meta = pd.read_csv(root / "HAM10000_metadata.csv")
    lesion = meta["lesion_id"].str[-4:].astype(int)
    meta["sex"] = np.where((lesion // 4) % 2 == 0, "male", "female")
    meta["age"] = (25 + 10 * (lesion % 5)).astype(float).astype(str)
    meta["localization"] = np.where(lesion % 3 == 0, "back", "face")
    meta.to_csv(root / "HAM10000_metadata.csv", index=False)
    out = tmp_path_factory.mktemp("runs") / "ft"
    finetune(tiny_finetune_config(root, out))
    return root, out


def write_external(root: Path, n: int = 24) -> Path:
    """A labels.csv set: naevus / melanoma / other, two images per patient."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        label = ["naevus", "melanoma", "other"][i % 3]
        colour = (180, 120, 90) if label == "naevus" else (60 + 4 * i, 40, 30)
        Image.new("RGB", (20, 20), colour).save(root / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": label, "patient": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(root / "labels.csv", index=False)
    return root


def _ext_spec(root: Path) -> dict:
    return DataSpec("csv", str(root), {"csv_case": "patient"}).to_dict()


def _predictions(run: Path, label: str) -> dict:
    with np.load(run / f"predictions_{label}.npz") as z:
        return {k: z[k] for k in z.files}


def _own_val(root: Path, run: Path, temperature: float = 1.0):
    """The model's probabilities and labels on its val split, computed here."""
    manifest, splits, pixels = load_data(
        DataSpec("ham10000", str(root)).to_dict(), 16, str(root / "cache"), progress=False
    )
    model = load_classifier(run, 7, torch.device("cpu"))
    rows = splits["val"]
    logits = model_outputs(model, pixels, rows, torch.device("cpu"))
    return logits, (logits / temperature).softmax(1).numpy(), manifest.targets[rows]


# --------------------------------------------------------------------------- what is scored


def test_external_data_is_scored_whole_and_exclusions_are_reported(finetuned, tmp_path, capsys):
    _, run = finetuned
    ext = write_external(tmp_path / "ext")
    mapping = tmp_path / "map.yaml"
    mapping.write_text("naevus: nv\nmelanoma: mel\nother: null\n")
    args = ["evaluate", "--model", str(run), "--dataset", "csv", "--root", str(ext),
            "--csv-case", "patient", "--class-map", str(mapping), "--n-boot", "20",
            "--cache-dir", str(tmp_path / "cache"), "--no-subgroups"]  # fmt: skip
    assert main(args) == 0
    out = capsys.readouterr().out
    # 24 images of 12 patients; the 8 "other" images (of 8 patients) are left out, and said
    assert "csv-all: scored 16 images, 12 cases" in out
    assert "excluded: 8 images, 8 cases (class 'other' maps to no evaluated class)" in out
    saved = json.loads((run / "eval_csv-all.json").read_text())
    assert saved["external"] and saved["scored"] == {"images": 16, "cases": 12}
    # asking for medssl's re-split of an external set is possible, with a warning
    assert main([*args, "--split", "test"]) == 0
    captured = capsys.readouterr()
    assert "warning: scoring the test split of an external dataset" in captured.err
    assert "not in the test split (medssl's re-split by case)" in captured.out


def test_training_images_need_an_explicit_flag_and_are_warned_about(finetuned, capsys):
    root, run = finetuned
    with pytest.raises(MedsslError, match="images the model was trained on.*--allow-training"):
        evaluate_run(run, "all", n_boot=5)
    code = main(["evaluate", "--model", str(run), "--split", "train", "--n-boot", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "--allow-training-images" in err and len(err.splitlines()) == 1
    metrics = evaluate_run(run, "all", n_boot=5, allow_training_images=True, subgroups=False)
    _, splits, _ = load_data(DataSpec("ham10000", str(root)).to_dict(), 16,
                             str(root / "cache"), progress=False)  # fmt: skip
    assert metrics["training_images_scored"] == len(splits["train"])
    assert "which it was trained on" in capsys.readouterr().err
    # the model's own data named with another split seed would leak training images
    other = DataSpec("ham10000", str(root), split_seed=3).to_dict()
    with pytest.raises(MedsslError, match=r"model's own data but with other settings \(split_seed"):
        evaluate_run(run, "test", other, n_boot=5)


# --------------------------------------------------------------------------- operating point


def test_binary_operating_point_from_the_models_own_val_split(finetuned, tmp_path):
    root, run = finetuned
    ext = write_external(tmp_path / "ext")
    cmap = {"naevus": "benign", "melanoma": "malignant", "other": None, "model_classes": MERGE}
    metrics = evaluate_run(run, None, _ext_spec(ext), cmap, n_boot=30, subgroups=False,
                           name="ext-binary")  # fmt: skip
    op = metrics["operating_point"]
    assert op["positive_class"] == "malignant" and op["target_sensitivity"] == 0.95
    # the threshold: the largest reaching 95% sensitivity on the val split, via sklearn
    _, val_probs, val_labels = _own_val(root, run)
    malignant = np.isin(val_labels, [4, 1, 0])  # mel, bcc, akiec in HAM10000's class order
    score = val_probs[:, [4, 1, 0]].sum(1)
    _, tpr, thresholds = roc_curve(malignant, score, drop_intermediate=False)
    assert op["threshold"] == pytest.approx(thresholds[np.flatnonzero(tpr >= 0.95)[0]], rel=1e-5)
    assert op["val_sensitivity"] >= 0.95
    pred = _predictions(run, "ext-binary")
    pos = pred["targets"] == 0  # evaluation classes: malignant, benign
    p = pred["probs"][:, 0]
    assert metrics["sensitivity"] == pytest.approx(np.mean(p[pos] >= op["threshold"]))
    assert metrics["specificity"] == pytest.approx(np.mean(p[~pos] < op["threshold"]))
    assert op["auc"] == pytest.approx(roc_auc_score(pos, p))
    assert set(metrics["ci"]) >= {"sensitivity", "specificity", "ece", "brier"}
    lower = evaluate_run(run, None, _ext_spec(ext), cmap, n_boot=5, subgroups=False,
                         name="ext-binary-50", target_sensitivity=0.5)  # fmt: skip
    assert lower["operating_point"]["threshold"] >= op["threshold"]
    with pytest.raises(MedsslError, match="--positive-class 'melanoma' is not one of"):
        evaluate_run(run, None, _ext_spec(ext), cmap, n_boot=5, positive_class="melanoma")


# --------------------------------------------------------------------------- calibration


def test_calibration_and_temperature_scaling(finetuned):
    root, run = finetuned
    plain = evaluate_run(run, "test", n_boot=10, subgroups=False)
    pred = _predictions(run, "test")
    reference = multiclass_calibration(pred["probs"], pred["targets"])
    assert plain["ece"] == pytest.approx(reference["ece"])
    assert plain["brier"] == pytest.approx(reference["brier"])
    scaled = evaluate_run(run, "test", n_boot=10, subgroups=False, temperature_scaling=True)
    assert scaled["split"] == "test-temperature" and scaled["temperature"] > 0
    logits, _, val_labels = _own_val(root, run)
    t = scaled["temperature"]
    nll = torch.nn.functional.cross_entropy
    y = torch.as_tensor(val_labels)
    assert nll(logits / t, y) <= nll(logits, y) + 1e-6  # fitted on val: no worse there
    for other in (0.8 * t, 1.25 * t):
        assert nll(logits / t, y) <= nll(logits / other, y) + 1e-6
    assert json.loads((run / "metrics.json").read_text())["evaluation"]["test-temperature"]


def test_fit_temperature_recovers_an_overconfident_scale():
    gen = torch.Generator().manual_seed(0)
    true_logits = torch.randn(4000, 4, generator=gen) * 1.5
    labels = torch.multinomial(true_logits.softmax(1), 1, generator=gen)[:, 0].numpy()
    assert fit_temperature(3 * true_logits, labels, "multiclass") == pytest.approx(3, rel=0.1)


# --------------------------------------------------------------------------- cases and ids


def test_case_level_metrics_and_hashed_case_ids(finetuned, tmp_path):
    _, run = finetuned
    ext = write_external(tmp_path / "ext")
    cmap = {"naevus": "nv", "melanoma": "mel", "other": None}
    metrics = evaluate_run(run, None, _ext_spec(ext), cmap, n_boot=10, subgroups=False,
                           keep_case_ids=True, name="clear")  # fmt: skip
    pred = _predictions(run, "clear")
    assert str(pred["case_id_scheme"]) == "clear"
    frame = pd.DataFrame(pred["probs"]).assign(case=pred["case_ids"], y=pred["targets"])
    agree = frame.groupby("case")["y"].nunique() == 1  # p0, p3, p6, p9: naevus and melanoma
    means = frame.groupby("case").mean()[agree]
    names = [str(i) for i in range(7)]
    y = means.pop("y").to_numpy().astype(int)
    reference = multiclass_metrics(means.to_numpy(), y, names)
    case = metrics["case_level"]
    assert case["n_cases"] == 8 and case["n_cases_conflicting"] == 4 and "disagree" in case["note"]
    assert case["auc_macro"] == pytest.approx(reference["auc_macro"])
    assert case["accuracy"] == pytest.approx(reference["accuracy"])

    evaluate_run(run, None, _ext_spec(ext), cmap, n_boot=10, subgroups=False, name="hashed")
    hashed = _predictions(run, "hashed")
    assert str(hashed["case_id_scheme"]) == "hmac-sha256"
    assert not set(hashed["case_ids"]) & set(pred["case_ids"])
    # whoever holds the run's salt joins them back
    np.testing.assert_array_equal(
        hashed["case_ids"], hash_case_ids(pred["case_ids"], run_salt(run))
    )
    assert stat.S_IMODE((run / SALT_FILE).stat().st_mode) == 0o600
    assert "p1" not in (run / "eval_hashed.json").read_text()


# --------------------------------------------------------------------------- subgroups


def test_age_bands_and_sex_groups():
    assert [age_band(a) for a in ("5.0", "058Y", "40", "85.0", "", "n/a")] == [
        "0-17", "40-59", "40-59", "80+", "unknown", "unknown",
    ]  # fmt: skip
    assert [sex_group(s) for s in ("M", "female", "Male", "unknown", "")] == [
        "male", "female", "male", "unknown", "unknown",
    ]  # fmt: skip


def test_subgroup_metrics_from_the_manifest_metadata(finetuned, capsys):
    root, run = finetuned
    metrics = evaluate_run(run, "shift", n_boot=20)
    groups = metrics["subgroups"]
    assert set(groups) == {"sex", "age_band", "localization"}  # shift = one source only
    assert set(groups["age_band"]) <= {"18-39", "40-59", "60-79"}
    pred = _predictions(run, "shift")
    manifest, splits, _ = load_data(DataSpec("ham10000", str(root)).to_dict(), 16,
                                    str(root / "cache"), progress=False)  # fmt: skip
    sex = manifest.table["sex"].to_numpy()[splits["shift"]]
    for value in ("female", "male"):
        g = groups["sex"][value]
        rows = sex == value
        assert g["n"] == rows.sum()
        assert g["small"] and g["notes"]  # a handful of cases: flagged, not dropped
        ref = multiclass_metrics(
            pred["probs"][rows], pred["targets"][rows], [str(i) for i in range(7)]
        )
        assert g["accuracy"] == pytest.approx(ref["accuracy"])
        assert g["auc_macro"] == pytest.approx(ref["auc_macro"])
    assert sum(g["n"] for g in groups["localization"].values()) == metrics["n"]
    assert main(["evaluate", "--model", str(run), "--split", "shift", "--n-boot", "5"]) == 0
    out = capsys.readouterr().out
    assert "by sex:" in out and "(small)" in out and "case level" in out


def test_results_that_would_leave_the_run_or_overwrite_the_class_map_are_refused(finetuned):
    """``name`` (Python, sweeps) names the result files: never a path, never an input."""
    _, run = finetuned
    with pytest.raises(MedsslError, match=r"^evaluate: name '\.\./elsewhere' must be a plain"):
        evaluate_run(run, "test", name="../elsewhere", n_boot=5)
    class_map = run / "eval_mapped.json"  # the results of name "mapped" would replace it
    class_map.write_text(json.dumps({"nv": "nv"}))
    with pytest.raises(MedsslError, match=r"^evaluate's results .*eval_mapped\.json is the input "
                       r"--class-map"):  # fmt: skip
        evaluate_run(run, "test", class_map=class_map, name="mapped", n_boot=5)
    assert json.loads(class_map.read_text()) == {"nv": "nv"}
    assert not (run / "eval_..").exists()

"""Unlabeled pretraining data: folders, CSVs and DICOM studies, case bags from metadata,
leakage exclusion, monitoring without labels, and sweep entries on an unlabeled pool."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from helpers.data import shared_dataset, write_ham_layout
from helpers.images import write_dicom
from helpers.runs import tiny_pretrain_config
from medssl.cli import main
from medssl.data import load
from medssl.data.case_rules import parse_case_rule
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train.pretrain import pretrain


def _png(path: Path, value: int, size: tuple[int, int] = (20, 20)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = np.clip(value + rng.integers(-30, 30, (*size, 3)), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return path


@pytest.fixture(scope="module")
def folder_tree(tmp_path_factory) -> Path:
    """patients/p<k>/ with k+1 images (PNG and JPEG, one in a nested visit folder)."""
    root = tmp_path_factory.mktemp("pool")
    for k in range(6):
        for i in range(k + 1):
            ext = "png" if i % 2 == 0 else "jpg"
            sub = "visit2/" if i == 2 else ""
            _png(root / f"p{k}" / f"{sub}img{i}.{ext}", 40 * k + i)
    (root / ".hidden.png").write_bytes(b"not an image")
    return root


def _cases(loaded) -> Counter:  # noqa: ANN001
    return Counter(Counter(loaded.manifest.table["case_id"]).values())


def test_an_unlabeled_folder_is_scanned_recursively_with_parent_folder_bags(folder_tree):
    loaded = load("images", folder_tree, case_by="parent")
    assert len(loaded.manifest) == 21  # 1 + 2 + ... + 6, the nested and JPEG images included
    assert not loaded.manifest.labelled
    assert list(loaded.splits.indices) == ["train"]  # a pool: every image pretrains
    assert loaded.splits["train"].tolist() == list(range(21))
    # p2's visit2/img2 has its own parent folder (p2/visit2): the rule is the folder itself
    sizes = Counter(loaded.manifest.table["case_id"])
    assert sizes["p5"] == 5 and sizes["p5/visit2"] == 1
    summary = loaded.summary()
    assert summary["cases"] == len(sizes) and summary["classes"] == {}


def test_data_summary_describes_a_pool(folder_tree, capsys):
    assert main(["data", "summary", "--dataset", "images", "--root", str(folder_tree),
                 "--case-by", "parent"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "images (unlabeled: a pretraining pool)" in out
    # cases of 1, 2, 2+1, 3+1, 4+1, 5+1 images: ten cases, median 1.5
    assert "cases        10 (5 with 2+ images; images per case median 1.5, max 5)" in out
    assert "split train  21 images, 10 cases" in out
    assert "class mix" not in out and "classes" not in out


def test_a_regex_rule_groups_files_and_names_those_it_misses(folder_tree):
    loaded = load("images", folder_tree, case_by=r"regex:^(p\d+)/")
    assert _cases(loaded) == Counter({k + 1: 1 for k in range(6)})
    with pytest.raises(MedsslError, match="no image .* has a case id"):
        load("images", folder_tree, case_by=r"regex:patient(\d+)_")
    partial = load("images", folder_tree, case_by=r"regex:^(p[0-2])/")
    assert any("15 of 21 images have no case id" in w for w in partial.manifest.warnings)


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("lesion", "not a case rule"),
        ("regex:p\\d+", "exactly one group"),
        ("regex:(p", "not a regular expression"),
        ("dicom:", "needs its argument"),
        ("parent:x", "takes no argument"),
        ("dicom:Patient ID", "DICOM tags are keywords"),
    ],
)
def test_a_bad_case_rule_is_one_line_naming_the_option(rule, message):
    with pytest.raises(MedsslError, match=message) as err:
        parse_case_rule(rule)
    assert "--case-by" in str(err.value) and "\n" not in str(err.value)


@pytest.fixture(scope="module")
def dicom_tree(tmp_path_factory) -> Path:
    """Three patients, two studies each, a frontal (PA) and a lateral (LL) view per study."""
    root = tmp_path_factory.mktemp("dicom")
    pixels = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 50).astype(np.uint16)
    for patient in range(3):
        for study in range(2):
            for view in ("PA", "LL"):
                write_dicom(
                    root / f"export/{patient}{study}{view}.dcm", pixels + patient,
                    PatientID=f"P{patient}", StudyInstanceUID=f"1.2.3.{patient}.{study}",
                    ViewPosition=view,
                )  # fmt: skip
    return root


@pytest.mark.parametrize(
    ("rule", "bags"),
    [
        ("dicom:PatientID", {4: 3}),
        ("dicom:StudyInstanceUID", {2: 6}),
        ("dicom:PatientID+ViewPosition", {2: 6}),
        ("image", {1: 12}),
    ],
)
def test_dicom_studies_are_grouped_by_patient_study_or_view(dicom_tree, rule, bags):
    loaded = load("images", dicom_tree, case_by=rule)
    assert _cases(loaded) == Counter(bags)
    assert Counter(loaded.manifest.table["view"]) == {"PA": 6, "LL": 6}
    if rule == "dicom:PatientID+ViewPosition":  # each bag is one patient's one view
        for _, rows in loaded.manifest.table.groupby("case_id"):
            assert rows["view"].nunique() == 1


def test_a_csv_with_only_image_and_case_columns(folder_tree, tmp_path):
    files = sorted(p for p in folder_tree.rglob("*.*") if not p.name.startswith("."))
    frame = pd.DataFrame(
        {"image": [str(p.relative_to(folder_tree)) for p in files],
         "patient": [p.relative_to(folder_tree).parts[0] for p in files]}
    )  # fmt: skip
    frame.to_csv(folder_tree / "list.csv", index=False)
    loaded = load("images", folder_tree, csv_path="list.csv", case_by="column:patient")
    assert _cases(loaded) == Counter({k + 1: 1 for k in range(6)})
    with pytest.raises(MedsslError, match="has no column 'lesion'.*has: image, patient"):
        load("images", folder_tree, csv_path="list.csv", case_by="column:lesion")
    with pytest.raises(MedsslError, match="need a CSV of images"):
        load("images", folder_tree, csv_source="site")


def test_the_pneumonia_file_names_give_patient_bags():
    root = shared_dataset("chest-xray-pneumonia")
    loaded = load("images", root, case_by=r"regex:person(\d+)_")
    # independent reference: the pattern applied to the file names by hand
    files = [p for p in root.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png")]
    ids = [m.group(1) for p in files if (m := re.search(r"person(\d+)_", p.name))]
    per_person = Counter(ids)
    assert len(loaded.manifest) == len(files)
    summary = loaded.summary()
    # images without the pattern (the NORMAL ones) are each their own case
    assert summary["cases"] == len(per_person) + (len(files) - len(ids))
    assert summary["multi_image_cases"] == sum(1 for n in per_person.values() if n >= 2)
    assert summary["images_per_case_max"] == max(per_person.values())


# --------------------------------------------------------------------------- exclusion


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory) -> Path:
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=40)


def _spec_file(tmp_path: Path, root: Path) -> Path:
    path = tmp_path / "labelled.yaml"
    path.write_text(yaml.safe_dump({"dataset": "ham10000", "root": str(root)}))
    return path


def test_exclusion_removes_exactly_the_named_splits_cases(ham_root, tmp_path):
    labelled = load("ham10000", ham_root)
    spec = _spec_file(tmp_path, ham_root)
    pool = load("ham10000", ham_root, unlabeled=True, exclude=f"{spec}:val,test,shift")
    train_images = set(labelled.manifest.table["image"].iloc[labelled.splits["train"]])
    assert set(pool.manifest.table["image"]) == train_images
    only_test = load("ham10000", ham_root, unlabeled=True, exclude=f"{spec}:test")
    test_cases = set(labelled.manifest.table["case_id"].iloc[labelled.splits["test"]])
    assert set(only_test.manifest.table["case_id"]) == (
        set(labelled.manifest.table["case_id"]) - test_cases
    )
    assert only_test.manifest.excluded["cases"] == len(test_cases)
    assert only_test.spec.to_dict()["exclude"]["splits"] == ["test"]


def test_exclusion_matches_copies_by_content_and_drops_their_whole_pool_case(ham_root, tmp_path):
    """A pool of copies at other paths, grouped by patient folder: a copied test image takes
    its pool case with it, an image that merely resembles nothing is kept."""
    labelled = load("ham10000", ham_root)
    table = labelled.manifest.table
    test_image = Path(table["image"].iloc[labelled.splits["test"][0]])
    train_image = Path(table["image"].iloc[labelled.splits["train"][0]])
    pool_root = tmp_path / "pool"
    (pool_root / "patientA").mkdir(parents=True)
    (pool_root / "patientB").mkdir()
    shutil.copy(test_image, pool_root / "patientA" / "copy.png")
    _png(pool_root / "patientA" / "other.png", 7)  # same patient, not in the labelled set
    shutil.copy(train_image, pool_root / "patientB" / "copy.png")
    spec = _spec_file(tmp_path, ham_root)
    pool = load("images", pool_root, case_by="parent", exclude=f"{spec}:test")
    assert pool.manifest.table["case_id"].tolist() == ["patientB"]
    assert pool.manifest.excluded == {
        "dataset": "ham10000", "splits": ["test"], "by": "file",
        "named_images": len(labelled.splits["test"]), "matched_images": 1, "images": 2,
        "cases": 1,
    }  # fmt: skip


def test_exclusion_by_case_id_and_its_errors(ham_root, tmp_path):
    labelled = load("ham10000", ham_root)
    spec = _spec_file(tmp_path, ham_root)
    lesion = labelled.manifest.table["case_id"].iloc[labelled.splits["val"][0]]
    csv = tmp_path / "pool.csv"
    _png(tmp_path / "a.png", 1), _png(tmp_path / "b.png", 2)
    pd.DataFrame({"image": ["a.png", "b.png"], "lesion": [lesion, "other"]}).to_csv(csv)
    by_file = load("images", csv, case_by="column:lesion", exclude=f"{spec}:val")
    assert len(by_file.manifest) == 2  # different files: nothing matched by content
    by_case = load("images", csv, case_by="column:lesion", exclude=f"{spec}:val:case")
    assert len(by_case.manifest) == 1
    with pytest.raises(MedsslError, match="exclude applies to unlabeled"):
        load("ham10000", ham_root, exclude=str(spec))
    with pytest.raises(MedsslError, match="splits \\['tset'\\]"):
        load("images", csv, exclude=f"{spec}:tset")
    with pytest.raises(MedsslError, match="no such run directory or YAML file"):
        load("images", csv, exclude=str(tmp_path / "missing.yaml"))


# --------------------------------------------------------------------------- training


def test_micle_pretrains_on_an_unlabeled_folder_with_a_label_free_monitor(folder_tree, tmp_path,
                                                                          capsys):  # fmt: skip
    spec = DataSpec("images", str(folder_tree), options={"case_by": "parent"}).to_dict()
    config = tiny_pretrain_config(folder_tree, tmp_path / "run", data=spec, knn_every=1,
                                  progress=True, cache_dir=str(tmp_path / "cache"))  # fmt: skip
    metrics = pretrain(config)
    err = capsys.readouterr().err
    assert "data: 21 images, 10 cases, 5 with 2+ images" in err
    assert "no labels: the monitor logs" in err
    log = pd.read_csv(tmp_path / "run" / "log.csv")
    assert "feature_std" in log.columns and "knn_accuracy" not in log.columns
    assert log["feature_std"].notna().all() and (log["feature_std"] > 0).all()
    assert metrics["pretrain_cases"] == 10 and metrics["multi_image_cases"] == 5
    # MICLe drew pairs of different images from the multi-image bags
    assert (log["distinct_pair_share"].dropna() > 0).all()
    assert (tmp_path / "run" / "backbone.safetensors").is_file()


def test_a_pool_with_an_exclusion_monitors_k_nn_on_the_labelled_set(ham_root, tmp_path):
    spec_file = _spec_file(tmp_path, ham_root)
    data = load("ham10000", ham_root, unlabeled=True, exclude=str(spec_file)).spec.to_dict()
    config = tiny_pretrain_config(ham_root, tmp_path / "run", data=data, knn_every=2)
    metrics = pretrain(config)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["exclude"]["data"]["dataset"] == "ham10000"
    assert metrics["excluded_images"] > 0 and "knn_accuracy" in metrics
    assert "feature_std" in metrics


def test_fine_tuning_on_unlabeled_data_is_refused_before_decoding(folder_tree, tmp_path, capsys):
    code = main(["finetune", "--dataset", "images", "--root", str(folder_tree),
                 "--out", str(tmp_path / "ft"), "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "has no labels (fine-tuning needs them)" in err
    assert "Traceback" not in err and not (tmp_path / "c").exists()


def test_the_command_line_pretrains_on_a_folder_with_case_by(folder_tree, tmp_path, capsys):
    code = main(["pretrain", "--dataset", "images", "--root", str(folder_tree), "--case-by",
                 "parent", "--method", "micle", "--image-size", "16", "--epochs", "1",
                 "--batch-size", "8", "--precision", "fp32", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["data"]["dataset"] == "images"
    assert saved["data"]["options"]["case_by"] == "parent"
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pretrain_images"] == 21


def test_a_sweep_entry_on_an_unlabeled_pool_excludes_the_evaluation_cases(ham_root, tmp_path):
    """The pool is the labelled set's own images without labels: the sweep's automatic
    exclusion leaves exactly the train split, and the pool's run chains into fine-tuning."""
    from medssl.sweep import load_protocol, run_sweep

    protocol = {
        "data": {"dataset": "ham10000", "root": str(ham_root)},
        "image_size": 16,
        "backbone": "resnet18",
        "pretrain": {
            "pool": {"method": "micle", "epochs": 1, "batch_size": 8, "precision": "fp32",
                     "data": {"dataset": "images", "root": str(ham_root),
                              "options": {"case_by": "regex:ISIC_(\\d\\d\\d)"}},
                     # the paper mixed sources: the labelled set's train split joins the pool
                     "extra_data": [{"dataset": "ham10000", "root": str(ham_root)}]},
        },  # fmt: skip
        "inits": ["pool"],
        "label_fractions": [1.0],
        "seeds": [0],
        "finetune": {"epochs": 1, "batch_size": 8, "precision": "fp32"},
        "splits": ["test"],
        "n_boot": 10,
    }
    p = load_protocol(protocol)
    exclusion = p.roles["pool"].data["exclude"]
    assert exclusion["splits"] == ["val", "test", "shift"]
    run_sweep(protocol, tmp_path / "sweep", progress=False)
    metrics = json.loads((tmp_path / "sweep" / "pretrain" / "pool" / "metrics.json").read_text())
    labelled = load("ham10000", ham_root)
    train = labelled.splits["train"]
    train_cases = labelled.manifest.table["case_id"].iloc[train].nunique()
    # the pool after exclusion is the train split; the train split comes again as the second
    # source, and no case spans two sources
    assert metrics["pretrain_images"] == 2 * len(train)
    assert metrics["pretrain_cases"] == 2 * train_cases
    assert metrics["excluded_images"] == len(labelled.manifest) - len(train)
    results = pd.read_csv(tmp_path / "sweep" / "results.csv")
    assert set(results["init"]) == {"pool"} and len(results) == 1


def test_a_run_mixes_an_unlabeled_pool_with_a_labelled_train_split(folder_tree, ham_root,
                                                                   tmp_path, capsys):  # fmt: skip
    spec_file = _spec_file(tmp_path, ham_root)
    code = main(["pretrain", "--dataset", "images", "--root", str(folder_tree), "--case-by",
                 "parent", "--extra-data", str(spec_file), "--image-size", "16", "--epochs",
                 "1", "--batch-size", "8", "--precision", "fp32", "--out", str(tmp_path / "run"),
                 "--cache-dir", str(tmp_path / "c")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0, err
    labelled = load("ham10000", ham_root)
    train = labelled.splits["train"]
    train_cases = labelled.manifest.table["case_id"].iloc[train].nunique()
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["pretrain_images"] == 21 + len(train)
    assert metrics["pretrain_cases"] == 10 + train_cases
    assert "images: 21 images of 10 cases, all its images (unlabeled)" in err
    assert f"ham10000: {len(train)} images of {train_cases} cases, its train split" in err
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["extra_data"][0]["dataset"] == "ham10000"

"""The publisher's split (``--split-scheme official``), subgroup metadata in the manifests,
and the data layer's warnings shown once by every command that loads data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from medssl.data import notices
from medssl.data.adapters import load_manifest
from medssl.data.spec import DataSpec
from medssl.data.splits import (
    OFFICIAL_VAL_FRACTION,
    cases_shared_between_splits,
    make_splits,
    official_splits,
)
from medssl.errors import MedsslError
from medssl.train.common import load_data


@pytest.fixture(autouse=True)
def _fresh_notices():
    notices.forget()
    yield
    notices.forget()


def _png(path: Path, value: int = 100) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (12, 12), (value, 80, 40)).save(path)


def write_pneumonia(root: Path, val: bool = False) -> Path:
    """Kermany's layout; person1 is in both the official train and test folders."""
    files = {
        "train/NORMAL": [f"IM-{i:04d}-0001.jpeg" for i in range(1, 9)],
        "train/PNEUMONIA": [f"person{i}_bacteria_{i}.jpeg" for i in range(1, 9)],
        "test/NORMAL": ["IM-0101-0001.jpeg", "IM-0102-0001.jpeg"],
        "test/PNEUMONIA": ["person1_virus_50.jpeg", "person20_virus_51.jpeg"],
    }
    if val:
        files["val/NORMAL"] = ["NORMAL2-IM-0200-0001.jpeg"]
        files["val/PNEUMONIA"] = ["person30_virus_60.jpeg"]
    for folder, names in files.items():
        for i, name in enumerate(names):
            _png(root / "chest_xray" / folder / name, 20 * i)
    return root


def test_medmnist_official_splits_are_the_publishers(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 6), ("val", 3), ("test", 4)):
        arrays[f"{split}_images"] = rng.integers(0, 256, (n, 8, 8), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2)[:, None].astype(np.uint8)
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    manifest = load_manifest("medmnist", tmp_path)
    splits = make_splits(manifest, "official")
    assert splits.scheme == "official"
    assert not any("more than one official split" in w for w in splits.warnings)
    for name, rows in (("train", range(0, 6)), ("val", range(6, 9)), ("test", range(9, 13))):
        np.testing.assert_array_equal(splits[name], list(rows))


def test_pneumonia_official_split_keeps_the_publishers_test_and_warns_of_the_leak(
    tmp_path: Path,
) -> None:
    manifest = load_manifest("pneumonia", write_pneumonia(tmp_path))
    splits = official_splits(manifest, seed=0)
    table = manifest.table
    assert set(table.loc[splits["test"], "official_split"]) == {"test"}
    assert len(splits["test"]) == 4
    # no official val folder: a share of the official training cases, by case
    trainval = np.concatenate([splits["train"], splits["val"]])
    assert sorted(trainval) == sorted(np.flatnonzero(table["official_split"] == "train"))
    n_val_cases = table.loc[splits["val"], "case_id"].nunique()
    assert 0 < n_val_cases <= round(OFFICIAL_VAL_FRACTION * 16) + 2
    assert not set(table.loc[splits["val"], "case_id"]) & set(table.loc[splits["train"], "case_id"])
    # person1 is in the official train and test folders: kept there, and counted
    assert cases_shared_between_splits(manifest, splits) == 1
    assert any("1 case(s) are in more than one official split" in w for w in splits.warnings)


def test_a_small_official_val_split_is_used_with_a_warning(tmp_path: Path) -> None:
    manifest = load_manifest("pneumonia", write_pneumonia(tmp_path, val=True))
    splits = official_splits(manifest)
    assert len(splits["val"]) == 2
    assert any("official validation split has only 2 images" in w for w in splits.warnings)


def test_datasets_without_a_publisher_split_refuse_the_official_scheme(tmp_path: Path) -> None:
    from helpers.data import write_ham_layout

    manifest = load_manifest("ham10000", write_ham_layout(tmp_path, n_lesions=6))
    with pytest.raises(MedsslError, match="ham10000: --split-scheme official: .*no publisher"):
        make_splits(manifest, "official")
    with pytest.raises(MedsslError, match="--split-scheme 'publisher' is not one of"):
        make_splits(manifest, "publisher")


def test_nih_official_lists_and_subgroup_metadata(tmp_path: Path) -> None:
    rows = []
    for i in range(6):
        name = f"0000000{i}_000.png"
        _png(tmp_path / "images" / name, 30 * i)
        rows.append({"Image Index": name, "Finding Labels": "Effusion" if i % 2 else "No Finding",
                     "Follow-up #": 0, "Patient ID": i, "Patient Age": 20 + 10 * i,
                     "Patient Gender": "MF"[i % 2], "View Position": "PA"})  # fmt: skip
    pd.DataFrame(rows).to_csv(tmp_path / "Data_Entry_2017_v2020.csv", index=False)
    manifest = load_manifest("nih", tmp_path)
    assert set(manifest.table["official_split"]) == {""}  # no list files: no official split
    (tmp_path / "test_list.txt").write_text("00000004_000.png\n00000005_000.png\n")
    (tmp_path / "train_val_list.txt").write_text("\n".join(r["Image Index"] for r in rows[:4]))
    manifest = load_manifest("nih", tmp_path)
    assert list(manifest.table["official_split"]) == ["train"] * 4 + ["test"] * 2
    assert list(manifest.table["sex"]) == ["M", "F"] * 3
    assert manifest.table.at[5, "age"] == "70"
    np.testing.assert_array_equal(make_splits(manifest, "official")["test"], [4, 5])


def test_spec_records_the_scheme_only_when_it_is_not_the_default() -> None:
    canonical = DataSpec("pneumonia", "/data").to_dict()
    assert "split_scheme" not in canonical  # configs of older runs compare equal
    official = DataSpec("pneumonia", "/data", split_scheme="official").to_dict()
    assert official["split_scheme"] == "official"
    assert DataSpec.from_dict(official).split_scheme == "official"
    assert DataSpec.from_dict(canonical).split_scheme == "canonical"


def test_load_data_shows_the_data_warnings_once_on_stderr(tmp_path: Path, capsys) -> None:
    root = write_pneumonia(tmp_path / "pneumonia")
    spec = DataSpec("pneumonia", str(root), split_scheme="official").to_dict()
    _, splits, _ = load_data(spec, 8, str(tmp_path / "cache"), progress=False)
    err = capsys.readouterr().err
    assert err.count("medssl: warning: ") == 2, err  # the manifest's leak note + the split's
    assert "more than one official split" in err and "patient numbers appear" in err
    load_data(spec, 8, str(tmp_path / "cache"), progress=False)  # a sweep loads it again
    assert capsys.readouterr().err == ""
    # a CSV without a case column: every image its own case, said by any command's loader
    csv_root = tmp_path / "csv"
    for i in range(4):
        _png(csv_root / f"{i}.png", 40 * i)
    (tmp_path / "csv" / "broken.png").write_bytes(b"not a png")
    labels = [{"image": f"{i}.png", "label": "ab"[i % 2]} for i in range(4)]
    pd.DataFrame([*labels, {"image": "broken.png", "label": "a"}]).to_csv(
        csv_root / "labels.csv", index=False
    )
    manifest, _, _ = load_data(DataSpec("csv", str(csv_root)).to_dict(), 8,
                               str(tmp_path / "cache"), skip_unreadable=True,
                               progress=False)  # fmt: skip
    err = capsys.readouterr().err
    assert "each image is its own case" in err and "skipped 1 unreadable image(s)" in err
    assert manifest.unreadable_dropped == 1 and len(manifest) == 4


def test_commands_show_the_data_warnings_once(tmp_path: Path, capsys) -> None:
    """finetune and knn load data through load_data: the warning reaches stderr, once."""
    from medssl.cli import main

    root = tmp_path / "csv"
    for i in range(16):
        _png(root / f"{i}.png", 12 * i)
    labels = {"image": [f"{i}.png" for i in range(16)], "label": ["ab"[i % 2] for i in range(16)]}
    pd.DataFrame(labels).to_csv(root / "labels.csv", index=False)
    data = ["--dataset", "csv", "--root", str(root), "--cache-dir", str(tmp_path / "cache")]
    code = main(["finetune", *data, "--out", str(tmp_path / "ft"), "--image-size", "16",
                 "--epochs", "1", "--batch-size", "4", "--num-workers", "0",
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and err.count("medssl: warning: csv: no --csv-case column given") == 1
    notices.forget()  # a new command is a new process
    assert main(["knn", *data, "--image-size", "16", "--n-boot", "5", "--k", "2"]) == 0
    assert capsys.readouterr().err.count("each image is its own case") == 1

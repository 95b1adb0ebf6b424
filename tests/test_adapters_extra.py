"""CheXpert, MedMNIST, CSV, folder and Tiny ImageNet adapters on tiny datasets written in their
layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from helpers.images import write_dicom
from medssl.data.adapters import load_manifest
from medssl.data.adapters.chexpert import CHEXPERT_FINDINGS, CHEXPERT_TO_SHARED, load_chexpert
from medssl.data.adapters.generic import load_csv, load_folder
from medssl.data.adapters.medmnist import load_medmnist
from medssl.data.imageio import read_image
from medssl.errors import MedsslError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write_image(path: Path, value: int = 128, size: tuple[int, int] = (6, 5)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("L", size, color=value).save(path)
    return path


RAMP = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 300).astype(np.uint16)  # 0 .. 3300


# --------------------------------------------------------------------------- DICOM decoding


def test_dicom_monochrome2_decodes_to_rgb_uint8(tmp_path: Path) -> None:
    image = read_image(write_dicom(tmp_path / "a.dcm", RAMP))
    assert image.shape == (3, 4, 3) and image.dtype == np.uint8
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
    gray = image[..., 0].astype(int).ravel()
    assert gray[0] == 0 and gray[-1] == 255
    assert (np.diff(gray) > 0).all()  # brighter raw value -> brighter pixel
    np.testing.assert_allclose(gray, RAMP.ravel().astype(float) * 255 / RAMP.max(), atol=1)


def test_dicom_monochrome1_is_inverted(tmp_path: Path) -> None:
    mono2 = read_image(write_dicom(tmp_path / "a.dcm", RAMP, "MONOCHROME2"))
    mono1 = read_image(write_dicom(tmp_path / "b.dcm", RAMP, "MONOCHROME1"))
    assert mono1.shape == (3, 4, 3) and mono1.dtype == np.uint8
    assert mono1[0, 0, 0] == 255 and mono1[-1, -1, 0] == 0  # low raw value = white
    np.testing.assert_array_equal(mono1, 255 - mono2)


# --------------------------------------------------------------------------- CheXpert

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_FINDINGS]
# (path under the dataset folder, Frontal/Lateral, AP/PA, {finding: cell}); unlisted = blank
TRAIN_ROWS = [
    ("train/patient00001/study1/view1_frontal.jpg", "Frontal", "AP",
     {"Atelectasis": "1.0", "Cardiomegaly": "-1.0", "Edema": "0.0", "Pleural Effusion": "1.0"}),
    ("train/patient00001/study1/view2_lateral.jpg", "Lateral", "",
     {"Atelectasis": "-1.0", "Pleural Effusion": "-1.0"}),
    ("train/patient00001/study2/view1_frontal.jpg", "Frontal", "PA", {"No Finding": "1.0"}),
    ("train/patient00002/study1/view1_frontal.jpg", "Frontal", "AP",
     {"Edema": "1.0", "Pleural Effusion": "0.0", "Pneumonia": "-1.0"}),
]  # fmt: skip
VALID_ROWS = [
    ("valid/patient64541/study1/view1_frontal.jpg", "Frontal", "PA",
     {f: "0.0" for f in CHEXPERT_FINDINGS} | {"Cardiomegaly": "1.0"}),
]  # fmt: skip


def write_chexpert_csv(path: Path, rows: list, prefix: str) -> None:
    records = []
    for rel, frontal, projection, cells in rows:
        record = dict.fromkeys(HEADER, "")
        record.update(Path=prefix + rel, Sex="Female", Age="60")
        record.update({"Frontal/Lateral": frontal, "AP/PA": projection, **cells})
        records.append(record)
    pd.DataFrame(records, columns=HEADER).to_csv(path, index=False)


def make_chexpert(
    parent: Path, folder: str = "CheXpert-v1.0-small", prefix: str = "CheXpert-v1.0-small/"
) -> Path:
    """The official layout: ``Path`` starts with the dataset folder's published name."""
    root = parent / folder
    for rel, *_ in TRAIN_ROWS + VALID_ROWS:
        write_image(root / rel)
    write_chexpert_csv(root / "train.csv", TRAIN_ROWS, prefix)
    write_chexpert_csv(root / "valid.csv", VALID_ROWS, prefix)
    return root


@pytest.fixture
def chexpert_root(tmp_path: Path) -> Path:
    return make_chexpert(tmp_path)


def test_chexpert_official_layout(chexpert_root: Path) -> None:
    m = load_chexpert(chexpert_root)
    assert len(m) == 5 and m.task == "multilabel" and m.name == "chexpert"
    assert m.class_names == ["Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Effusion"]
    assert list(m.table["official_split"]) == ["train"] * 4 + ["valid"]
    assert set(m.table["source"]) == {"chexpert"}
    assert list(m.table["view"]) == ["Frontal-AP", "Lateral", "Frontal-PA", "Frontal-AP",
                                     "Frontal-PA"]  # fmt: skip
    # two studies and two views of patient00001 are one case
    expected = ["patient00001"] * 3 + ["patient00002", "patient64541"]
    assert list(m.table["case_id"]) == expected
    summary = m.summary()
    assert summary["cases"] == 3 and summary["multi_image_cases"] == 1
    for image, (rel, *_) in zip(m.table["image"], TRAIN_ROWS + VALID_ROWS, strict=True):
        assert Path(image) == chexpert_root / rel and Path(image).is_file()


def test_chexpert_shared_names() -> None:
    assert CHEXPERT_TO_SHARED["Pleural Effusion"] == "Effusion"


@pytest.mark.parametrize(
    ("policy", "u"), [("ignore", np.nan), ("positive", 1.0), ("negative", 0.0)]
)
def test_chexpert_uncertainty_policies_and_blanks(
    chexpert_root: Path, policy: str, u: float
) -> None:
    m = load_chexpert(chexpert_root, uncertain=policy)
    # columns: Atelectasis, Cardiomegaly, Consolidation, Edema, Effusion
    expected = np.array(
        [
            [1, u, 0, 0, 1],  # Consolidation blank -> negative
            [u, 0, 0, 0, u],
            [0, 0, 0, 0, 0],  # all blank ("No Finding" is not among the five)
            [0, 0, 0, 1, 0],
            [0, 1, 0, 0, 0],
        ],
        dtype=np.float32,
    )
    np.testing.assert_array_equal(m.targets, expected)  # NaN == NaN here
    assert m.targets.dtype == np.float32


def test_chexpert_findings_option(chexpert_root: Path) -> None:
    m = load_chexpert(chexpert_root, findings=["Pneumonia", "Pleural Effusion", "No Finding"])
    assert m.class_names == ["Pneumonia", "Effusion", "No Finding"]
    np.testing.assert_array_equal(m.targets[:, 0], [0, 0, 0, np.nan, 0])
    np.testing.assert_array_equal(m.targets[:, 1], [1, np.nan, 0, 0, 0])
    np.testing.assert_array_equal(m.targets[:, 2], [0, 0, 1, 0, 0])
    # shared names and a command-line string are accepted too
    assert load_chexpert(chexpert_root, findings=["Effusion"]).class_names == ["Effusion"]
    from_cli = load_chexpert(chexpert_root, findings="Edema, Effusion")
    assert from_cli.class_names == ["Edema", "Effusion"]


def test_chexpert_through_registry(chexpert_root: Path) -> None:
    m = load_manifest("chexpert", chexpert_root, findings=["Edema"], uncertain="positive")
    np.testing.assert_array_equal(m.targets[:, 0], [0, 0, 0, 1, 0])
    m = load_manifest("chexpert", chexpert_root, uncertain=None)  # CLI default
    assert np.isnan(m.targets[1, 0])


@pytest.mark.parametrize(
    ("folder", "prefix"),
    [
        ("CheXpert-v1.0-small", "CheXpert-v1.0-small/"),  # root.parent / Path
        ("my_chexpert", "CheXpert-v1.0-small/"),  # renamed folder: first component stripped
        ("CheXpert-v1.0", ""),  # Path relative to root itself
    ],
)
def test_chexpert_path_resolution(tmp_path: Path, folder: str, prefix: str) -> None:
    root = make_chexpert(tmp_path, folder, prefix)
    m = load_chexpert(root)
    assert all(Path(p).is_file() and Path(p).is_relative_to(root) for p in m.table["image"])
    assert m.table.at[4, "case_id"] == "patient64541"


def test_chexpert_relative_root_gives_absolute_paths(
    chexpert_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(chexpert_root)  # "--root ." inside the dataset folder
    m = load_chexpert(".")
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.table["image"])


def test_chexpert_root_one_level_up(chexpert_root: Path) -> None:
    assert len(load_chexpert(chexpert_root.parent)) == 5


def test_chexpert_errors(chexpert_root: Path) -> None:
    with pytest.raises(MedsslError, match="--uncertain 'maybe' is not one of ignore, positive"):
        load_chexpert(chexpert_root, uncertain="maybe")
    with pytest.raises(MedsslError) as err:
        load_chexpert(chexpert_root, findings=["Pneumonitis"])
    assert "Pneumonitis" in str(err.value) and "Pleural Effusion" in str(err.value)
    assert "available" in str(err.value)
    with pytest.raises(MedsslError, match="requested twice"):
        load_chexpert(chexpert_root, findings=["Effusion", "Pleural Effusion"])

    (chexpert_root / "valid" / "patient64541" / "study1" / "view1_frontal.jpg").unlink()
    with pytest.raises(MedsslError) as err:
        load_chexpert(chexpert_root)
    message = str(err.value)
    assert "view1_frontal.jpg" in message and "valid.csv" in message and "row 2" in message
    assert "\n" not in message

    (chexpert_root / "valid.csv").unlink()
    with pytest.raises(MedsslError, match=r"valid\.csv not found"):
        load_chexpert(chexpert_root)


def test_chexpert_bad_cell_and_missing_root(chexpert_root: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(chexpert_root / "train.csv", dtype=str, keep_default_na=False)
    frame.loc[2, "Edema"] = "2.0"
    frame.to_csv(chexpert_root / "train.csv", index=False)
    with pytest.raises(MedsslError, match=r"train\.csv row 4, column 'Edema': value '2\.0'"):
        load_chexpert(chexpert_root)
    with pytest.raises(MedsslError, match="train.csv not found"):
        load_chexpert(tmp_path / "CheXpert-v1.0-small" / "train")
    with pytest.raises(MedsslError, match="is not a directory"):
        load_chexpert(tmp_path / "nowhere")


def test_chexpert_path_without_patient(chexpert_root: Path) -> None:
    frame = pd.read_csv(chexpert_root / "train.csv", dtype=str, keep_default_na=False)
    write_image(chexpert_root / "train" / "loose.jpg")
    frame.loc[1, "Path"] = "CheXpert-v1.0-small/train/loose.jpg"
    frame.to_csv(chexpert_root / "train.csv", index=False)
    with pytest.raises(MedsslError, match=r"train\.csv row 3: no patientNNNNN folder"):
        load_chexpert(chexpert_root)


# --------------------------------------------------------------------------- MedMNIST


def medmnist_arrays(rgb: bool = False, labels: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    out = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        shape = (n, 8, 8, 3) if rgb else (n, 8, 8)
        out[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        if labels == 1:
            out[f"{split}_labels"] = (np.arange(n) % 4)[:, None].astype(np.uint8)
        else:
            out[f"{split}_labels"] = rng.integers(0, 2, (n, labels), dtype=np.uint8)
    return out


def test_medmnist_multiclass(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    np.savez(tmp_path / "pathmnist.npz", **arrays)
    m = load_medmnist(tmp_path / "pathmnist.npz")
    assert len(m) == 10 and m.task == "multiclass"
    assert m.class_names == ["class_0", "class_1", "class_2", "class_3"]
    assert list(m.table["official_split"]) == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert m.table.at[0, "case_id"] == "train-0" and m.table.at[6, "case_id"] == "val-1"
    assert m.table["case_id"].is_unique
    assert m.table.at[6, "image"] == "array:6"
    assert m.pixels is not None and m.pixels.shape == (10, 8, 8) and m.pixels.dtype == np.uint8
    np.testing.assert_array_equal(m.pixels[6], arrays["val_images"][1])
    np.testing.assert_array_equal(m.targets, [0, 1, 2, 3, 0, 0, 1, 0, 1, 2])
    assert any("own case" in w for w in m.warnings)
    sub = m.subset([6, 0])  # pixels follow the rows
    assert sub.pixels is not None
    np.testing.assert_array_equal(sub.pixels[0], arrays["val_images"][1])


def test_medmnist_multilabel_rgb_directory(tmp_path: Path) -> None:
    arrays = medmnist_arrays(rgb=True, labels=3)
    np.savez_compressed(tmp_path / "chestmnist.npz", **arrays)
    (tmp_path / "chestmnist_info.txt").write_text("not an npz")
    m = load_medmnist(tmp_path)  # a directory with exactly one .npz
    assert m.task == "multilabel" and m.class_names == ["class_0", "class_1", "class_2"]
    assert m.pixels is not None and m.pixels.shape == (10, 8, 8, 3)
    np.testing.assert_array_equal(m.targets[:5], arrays["train_labels"].astype(np.float32))
    np.testing.assert_array_equal(m.targets[7:], arrays["test_labels"].astype(np.float32))
    assert load_manifest("medmnist", tmp_path / "chestmnist.npz").num_classes == 3


def test_medmnist_pixels_feed_the_cache(tmp_path: Path) -> None:
    from medssl.data.cache import _decode_one

    np.savez(tmp_path / "a.npz", **medmnist_arrays())
    m = load_medmnist(tmp_path / "a.npz")
    image = _decode_one(m, 3, (16, 16))
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8


def test_medmnist_errors(tmp_path: Path) -> None:
    arrays = medmnist_arrays()
    with pytest.raises(MedsslError, match="no .npz file in"):
        load_medmnist(tmp_path)
    np.savez(tmp_path / "a.npz", **arrays)
    np.savez(tmp_path / "b.npz", **arrays)
    with pytest.raises(MedsslError, match=r"several \.npz files .*a\.npz, b\.npz"):
        load_medmnist(tmp_path)
    partial = {k: v for k, v in arrays.items() if not k.startswith("val")}
    np.savez(tmp_path / "partial.npz", **partial)
    with pytest.raises(MedsslError) as err:
        load_medmnist(tmp_path / "partial.npz")
    message = str(err.value)
    assert "partial.npz" in message and "val_images, val_labels" in message
    assert "has: train_images, train_labels, test_images, test_labels" in message
    bad = dict(arrays, val_labels=np.zeros((3, 1), dtype=np.uint8))
    np.savez(tmp_path / "bad.npz", **bad)
    with pytest.raises(MedsslError, match="val_labels has shape"):
        load_medmnist(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(MedsslError, match="cannot read .*junk.npz"):
        load_medmnist(tmp_path / "junk.npz")


# --------------------------------------------------------------------------- CSV


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    root = tmp_path / "derm"
    rows = [
        ("img/a.png", "nv", "p1", "siteA", "close"),
        ("img/b.png", "mel", "p1", "siteA", "dermo"),
        ("img/sub/c.jpg", "bcc", "p2", "siteB", "dermo"),
        ("img/d.png", "nv", "p3", "siteB", ""),
    ]
    for rel, *_ in rows:
        write_image(root / rel)
    frame = pd.DataFrame(rows, columns=["image", "label", "patient", "site", "kind"])
    frame.to_csv(root / "labels.csv", index=False)
    return root


def test_csv_multiclass_defaults(csv_root: Path) -> None:
    m = load_csv(csv_root)
    assert len(m) == 4 and m.task == "multiclass" and m.class_names == ["bcc", "mel", "nv"]
    np.testing.assert_array_equal(m.targets, [2, 1, 0, 2])
    assert Path(m.table.at[2, "image"]) == csv_root / "img" / "sub" / "c.jpg"
    assert list(m.table["case_id"]) == ["img/a.png", "img/b.png", "img/sub/c.jpg", "img/d.png"]
    assert set(m.table["source"]) == {""} and set(m.table["official_split"]) == {""}
    assert any("own case" in w and "MICLe" in w for w in m.warnings)


def test_csv_case_source_view(csv_root: Path) -> None:
    m = load_csv(csv_root, csv_case="patient", csv_source="site", csv_view="kind")
    assert list(m.table["case_id"]) == ["p1", "p1", "p2", "p3"]
    assert list(m.table["source"]) == ["siteA", "siteA", "siteB", "siteB"]
    assert list(m.table["view"]) == ["close", "dermo", "dermo", ""]
    assert m.summary()["multi_image_cases"] == 1
    assert not any("own case" in w for w in m.warnings)


def test_csv_file_as_root_and_csv_path(csv_root: Path, tmp_path: Path) -> None:
    assert len(load_csv(csv_root / "labels.csv")) == 4
    (csv_root / "labels.csv").rename(csv_root / "meta.csv")
    with pytest.raises(MedsslError, match=r"labels\.csv not found"):
        load_csv(csv_root)
    assert len(load_csv(csv_root, csv_path="meta.csv")) == 4
    assert len(load_csv(tmp_path, csv_path=str(csv_root / "meta.csv"))) == 4  # absolute
    # absolute image paths work too, wherever the CSV lives
    frame = pd.read_csv(csv_root / "meta.csv", dtype=str)
    frame["image"] = [str(csv_root / p) for p in frame["image"]]
    frame.to_csv(tmp_path / "abs.csv", index=False)
    m = load_csv(tmp_path / "abs.csv")
    assert Path(m.table.at[0, "image"]) == csv_root / "img" / "a.png"


def test_relative_roots_give_absolute_paths(
    csv_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(csv_root.parent)
    for m in (load_csv("derm"), load_csv("derm/labels.csv"), load_folder("derm/img")):
        assert all(Path(p).is_absolute() and Path(p).is_file() for p in m.table["image"])
    with pytest.raises(MedsslError, match="already a CSV file"):
        load_csv("derm/labels.csv", csv_path="other.csv")


def test_csv_multilabel(tmp_path: Path) -> None:
    for name in "abcd":
        write_image(tmp_path / f"{name}.png")
    pd.DataFrame(
        {
            "file": ["a.png", "b.png", "c.png", "d.png"],
            "findings": ["Effusion|Edema", "No Finding", " Edema ", "Atelectasis|Effusion"],
        }
    ).to_csv(tmp_path / "labels.csv", index=False)
    m = load_csv(tmp_path, csv_image="file", csv_label="findings", csv_labels_sep="|")
    assert m.task == "multilabel" and m.class_names == ["Atelectasis", "Edema", "Effusion"]
    expected = [[0, 1, 1], [0, 0, 0], [0, 1, 0], [1, 0, 1]]
    np.testing.assert_array_equal(m.targets, np.array(expected, dtype=np.float32))


def test_csv_errors(csv_root: Path) -> None:
    with pytest.raises(MedsslError) as err:
        load_csv(csv_root, csv_label="diagnosis")
    assert "diagnosis" in str(err.value) and "labels.csv" in str(err.value)
    with pytest.raises(MedsslError, match="lacks column.*patient_id"):
        load_csv(csv_root, csv_case="patient_id")

    frame = pd.read_csv(csv_root / "labels.csv", dtype=str, keep_default_na=False)
    frame.loc[1, "label"] = ""
    frame.to_csv(csv_root / "labels.csv", index=False)
    with pytest.raises(MedsslError, match=r"labels\.csv row 3: empty label in column 'label'"):
        load_csv(csv_root)

    frame.loc[1, "label"] = "mel"
    frame.loc[2, "image"] = "img/missing.png"
    frame.to_csv(csv_root / "labels.csv", index=False)
    with pytest.raises(MedsslError) as err:
        load_csv(csv_root)
    message = str(err.value)
    assert "img/missing.png" in message and "row 4" in message and "labels.csv" in message


def test_csv_through_registry_passes_csv_options(csv_root: Path) -> None:
    (csv_root / "labels.csv").rename(csv_root / "meta.csv")
    m = load_manifest(
        "csv",
        csv_root,
        csv_path="meta.csv",
        csv_case="patient",
        csv_source="site",
        csv_view="kind",
        uncertain="positive",  # an option of another adapter: not passed to load_csv
    )
    assert list(m.table["case_id"]) == ["p1", "p1", "p2", "p3"]
    assert list(m.table["source"]) == ["siteA", "siteA", "siteB", "siteB"]
    # the CLI passes unset options as None: the defaults apply
    m = load_manifest(
        "csv", csv_root / "meta.csv", csv_image=None, csv_label=None, csv_labels_sep=None
    )
    assert m.class_names == ["bcc", "mel", "nv"]


def test_csv_with_dicom_images(tmp_path: Path) -> None:
    write_dicom(tmp_path / "scans" / "x1.dcm", RAMP, "MONOCHROME2")
    write_dicom(tmp_path / "scans" / "x2.dcm", RAMP, "MONOCHROME1")
    pd.DataFrame(
        {"image": ["scans/x1.dcm", "scans/x2.dcm"], "label": ["normal", "effusion"]}
    ).to_csv(tmp_path / "labels.csv", index=False)
    m = load_csv(tmp_path)
    first, second = (read_image(p) for p in m.table["image"])
    assert first.shape == second.shape == (3, 4, 3) and first.dtype == np.uint8
    assert first[0, 0, 0] == 0 and second[0, 0, 0] == 255


# --------------------------------------------------------------------------- folder


def test_folder_layout(tmp_path: Path) -> None:
    write_image(tmp_path / "malignant" / "m1.png")
    write_image(tmp_path / "benign" / "visit1" / "b1.jpg")
    write_image(tmp_path / "benign" / "b2.png")
    write_image(tmp_path / "benign" / ".b3.png")  # hidden file
    (tmp_path / "benign" / "notes.txt").write_text("not an image")
    write_image(tmp_path / "benign" / ".thumbs" / "t.png")  # hidden folder
    write_image(tmp_path / ".cache" / "c.png")  # hidden "class"
    (tmp_path / "empty").mkdir()
    write_dicom(tmp_path / "malignant" / "m2.dcm", RAMP)
    m = load_folder(tmp_path)
    assert m.class_names == ["benign", "malignant"] and m.task == "multiclass"
    assert list(m.table["case_id"]) == [
        "benign/b2.png",
        "benign/visit1/b1.jpg",
        "malignant/m1.png",
        "malignant/m2.dcm",
    ]
    np.testing.assert_array_equal(m.targets, [0, 0, 1, 1])
    assert any("MICLe" in w for w in m.warnings)
    assert any("empty" in w for w in m.warnings)
    dicom = read_image(m.table.at[3, "image"])
    assert dicom.shape == (3, 4, 3) and dicom.dtype == np.uint8
    assert load_manifest("folder", tmp_path).class_names == ["benign", "malignant"]


def test_folder_errors(tmp_path: Path) -> None:
    write_image(tmp_path / "loose.png")
    with pytest.raises(MedsslError, match="no class subfolders in"):
        load_folder(tmp_path)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("x")
    with pytest.raises(MedsslError, match="no image files .* in the class subfolders"):
        load_folder(tmp_path)
    with pytest.raises(MedsslError, match="is not a directory"):
        load_folder(tmp_path / "loose.png")


def test_folder_on_real_pneumonia_split() -> None:
    test_dir = SHARED_DATA / "chest-xray-pneumonia" / "chest_xray" / "test"
    if not test_dir.is_dir():
        pytest.skip(f"real data not present at {test_dir}")
    m = load_folder(test_dir)
    assert m.class_names == ["NORMAL", "PNEUMONIA"]
    assert m.class_counts() == {"NORMAL": 234, "PNEUMONIA": 390}  # .DS_Store files skipped


# --------------------------------------------------------------------------- Tiny ImageNet


def write_tiny_imagenet_download(converted: Path, root: Path) -> Path:
    """The images of a converted layout (:func:`helpers.data.write_tiny_imagenet_layout`)
    arranged as the publisher's tiny-imagenet-200.zip unpacks: wnids.txt, words.txt,
    train/<wnid>/images/, train/<wnid>/<wnid>_boxes.txt, val/images/, val/val_annotations.txt
    and an unlabelled test/images/."""
    import shutil

    labels = pd.read_csv(converted / "labels.csv")
    wnids = sorted(set(labels["label"]))
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("".join(f"{w}\n" for w in reversed(wnids)))
    (root / "words.txt").write_text("".join(f"{w}\tclass {w}\n" for w in wnids))
    annotations = []
    for row in labels.itertuples():
        name = Path(row.image).name
        if row.split == "train":
            folder = root / "train" / row.label / "images"
            folder.mkdir(parents=True, exist_ok=True)
            with (folder.parent / f"{row.label}_boxes.txt").open("a") as boxes:
                boxes.write(f"{name}\t0\t0\t63\t63\n")
        else:
            folder = root / "val" / "images"
            annotations.append(f"{name}\t{row.label}\t0\t0\t63\t63\n")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(converted / row.image, folder / name)
    (root / "val" / "val_annotations.txt").write_text("".join(annotations))
    write_image(root / "test" / "images" / "test_0.JPEG")
    return root


def test_tiny_imagenet_reads_the_publishers_download_layout(tmp_path: Path) -> None:
    """The publisher's layout was refused with "labels.csv not found"; it reads as the
    converted layout does: same images, cases, classes (sorted wnids) and splits."""
    from helpers.data import write_tiny_imagenet_layout
    from medssl.data.adapters.tinyimagenet import PUBLISHER
    from medssl.data.spec import DataSpec

    converted = write_tiny_imagenet_layout(tmp_path / "converted")
    download = write_tiny_imagenet_download(converted, tmp_path / "tiny-imagenet-200")
    a, b = (load_manifest("tiny-imagenet", root) for root in (converted, download))
    assert b.class_names == a.class_names and b.task == "multiclass"

    def by_case(m):  # noqa: ANN001, ANN202
        t = m.table
        rows = zip(t["case_id"], m.targets, t["official_split"], t["image"], strict=True)
        return {c: (m.class_names[y], s, Path(i).name) for c, y, s, i in rows}

    assert by_case(b) == by_case(a)
    assert set(b.table["source"]) == {PUBLISHER}
    assert all(Path(i).is_file() and "test" not in Path(i).parts for i in b.table["image"])
    _, splits = DataSpec("tiny-imagenet", str(download), split_scheme="official").load()
    val = set(b.table.loc[b.table["official_split"] == "val", "case_id"])
    assert set(b.table["case_id"].iloc[splits["test"]]) == val


def test_tiny_imagenet_errors_say_what_is_missing(tmp_path: Path) -> None:
    from helpers.data import write_tiny_imagenet_layout

    converted = write_tiny_imagenet_layout(tmp_path / "converted", n_classes=2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsslError, match=r"labels\.csv not found, nor the publisher's .*wnids"):
        load_manifest("tiny-imagenet", empty)
    download = write_tiny_imagenet_download(converted, tmp_path / "download")
    annotations = download / "val" / "val_annotations.txt"
    lines = annotations.read_text().splitlines()
    annotations.write_text("\n".join([*lines, "val_9.JPEG\tn99999999\t0\t0\t1\t1"]))
    with pytest.raises(MedsslError, match=rf"line {len(lines) + 1}: expected 'file<TAB>wnid'"):
        load_manifest("tiny-imagenet", download)
    annotations.write_text("\n".join(lines))
    gone = download / "val" / "images" / lines[0].split("\t")[0]
    gone.unlink()
    with pytest.raises(MedsslError, match=rf"image {gone.name} of .*line 1\) not found"):
        load_manifest("tiny-imagenet", download)
    (download / "val" / "val_annotations.txt").unlink()
    with pytest.raises(MedsslError, match=r"val_annotations\.txt not found"):
        load_manifest("tiny-imagenet", download)

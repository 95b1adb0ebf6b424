"""``medssl predict``: unlabeled images scored exactly as evaluation scores them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config
from medssl.cli import main
from medssl.commands.evaluate import evaluate_run
from medssl.commands.predict import predict_images
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train.finetune import finetune


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=24)
    out = tmp_path_factory.mktemp("runs") / "ft"
    finetune(tiny_finetune_config(root, out, epochs=1))
    return root, out


def image_csv(root, tmp_path, n=12):
    """A CSV of the first ``n`` HAM images (absolute paths), with labels and two per case."""
    files = sorted((root / "HAM10000_images_part_1").glob("*.png"))[:n]
    labels = ["nv", "mel", "bkl"]
    frame = pd.DataFrame(
        {
            "image": [str(f) for f in files],
            "label": [labels[i % 3] for i in range(len(files))],
            "patient": [f"p{i // 2}" for i in range(len(files))],
        }
    )
    path = tmp_path / "images.csv"
    frame.to_csv(path, index=False)
    return path, frame


def test_predictions_equal_evaluation_on_the_same_images(finetuned, tmp_path):
    root, run = finetuned
    csv, frame = image_csv(root, tmp_path)
    spec = DataSpec("csv", str(csv), {"csv_case": "patient"}).to_dict()
    evaluate_run(run, "all", spec, n_boot=5, name="same-images")
    with np.load(run / "predictions_same-images.npz") as npz:
        expected = npz["probs"]
    result = predict_images(run, csv, case_column="patient", progress=False)
    assert result.images["image"].tolist() == frame["image"].tolist()
    # the same decoding, resizing, normalisation and forward pass: equal up to float noise
    torch.testing.assert_close(torch.from_numpy(result.probs), torch.from_numpy(expected),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    names = result.class_names
    assert [c for c in result.images.columns if c.startswith("prob_")] == [
        f"prob_{n}" for n in names
    ]
    assert result.images["prediction"].tolist() == [names[k] for k in expected.argmax(1)]
    # a case's prediction is the mean of its images' probabilities
    cases = result.cases.set_index("case_id")
    assert cases["n_images"].tolist() == [2] * 6
    np.testing.assert_allclose(
        cases.loc["p1", [f"prob_{n}" for n in names]].to_numpy(float),
        expected[2:4].mean(0), rtol=1e-6,
    )  # fmt: skip


def test_cli_writes_csvs_atomically_and_reads_a_folder(finetuned, tmp_path, capsys):
    root, run = finetuned
    csv, _ = image_csv(root, tmp_path)
    out = tmp_path / "out" / "predictions.csv"
    args = ["predict", "--model", str(run), "--images", str(csv), "--out", str(out)]
    assert main([*args, "--case-column", "patient", "--quiet"]) == 0
    written = pd.read_csv(out)
    cases = pd.read_csv(tmp_path / "out" / "predictions.cases.csv")
    assert len(written) == 12 and len(cases) == 6
    capsys.readouterr()
    assert main([*args[:-1], str(tmp_path), "--quiet"]) == 2  # --out is a folder
    assert "is a folder; give a file name" in capsys.readouterr().err
    assert not list((tmp_path / "out").glob(".*.tmp"))  # no temporary files left
    probs = written.filter(like="prob_").to_numpy()
    np.testing.assert_allclose(probs.sum(1), 1, rtol=1e-5)

    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    for i, f in enumerate(sorted((root / "HAM10000_images_part_1").glob("*.png"))[:3]):
        (folder / ("sub" if i else ".") / f.name).write_bytes(f.read_bytes())
    (folder / ".hidden.png").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored: not an image extension")
    capsys.readouterr()
    code = main(["predict", "--model", str(run), "--images", str(folder),
                 "--out", str(tmp_path / "folder.csv"), "--quiet", "--json"])  # fmt: skip
    assert code == 0
    assert json.loads(capsys.readouterr().out)["images"] == 3
    names = pd.read_csv(tmp_path / "folder.csv")["image"].tolist()
    assert len(names) == 3 and sum(n.startswith("sub/") for n in names) == 2


def test_bad_images_name_the_file_or_are_skipped_and_listed(finetuned, tmp_path, capsys):
    root, run = finetuned
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    out = tmp_path / "p.csv"
    capsys.readouterr()
    code = main(["predict", "--model", str(run), "--images", str(folder), "--out", str(out),
                 "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "broken.jpg" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()

    code = main(["predict", "--model", str(run), "--images", str(folder), "--out", str(out),
                 "--quiet", "--skip-unreadable"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 0 and "skipped 1 unreadable image(s)" in err and "broken.jpg" in err
    assert pd.read_csv(out)["image"].tolist() == ["good.png"]
    assert pd.read_csv(tmp_path / "p.skipped.csv")["image"].tolist() == ["broken.jpg"]

    listing = tmp_path / "list.csv"
    pd.DataFrame({"path": ["imgs/good.png", "imgs/gone.png"]}).to_csv(listing, index=False)
    with pytest.raises(MedsslError, match=r"list\.csv row 3: image imgs/gone\.png not found"):
        predict_images(run, listing, image_column="path", progress=False)
    result = predict_images(run, listing, image_column="path", skip_unreadable=True,
                            progress=False)  # fmt: skip
    assert result.images["image"].tolist() == ["imgs/good.png"]
    assert [name for name, _ in result.skipped] == ["imgs/gone.png"]
    with pytest.raises(MedsslError, match="no column 'image'.*--image-column"):
        predict_images(run, listing, progress=False)
    with pytest.raises(MedsslError, match="--case-column needs a CSV"):
        predict_images(run, folder, case_column="patient", progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslError, match="no image files"):
        predict_images(run, tmp_path / "empty", progress=False)


def test_refuses_runs_that_are_not_finished_finetunes(finetuned, tmp_path):
    root, run = finetuned
    with pytest.raises(MedsslError, match="no such run directory"):
        predict_images(tmp_path / "nope", root, progress=False)
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text((run / "config.yaml").read_text())
    with pytest.raises(MedsslError, match="not a finished"):
        predict_images(unfinished, root, progress=False)


def test_outputs_that_would_destroy_an_input_are_refused_before_any_work(
    finetuned, tmp_path, capsys, monkeypatch
):
    """The audit's cases: an output that is an input (the CSV, a listed or folder image, a
    file of the run, by any path) or another output is one line, exit 2, nothing touched."""
    import medssl.prediction

    root, run = finetuned
    csv, _ = image_csv(root, tmp_path)
    folder = tmp_path / "folder"
    folder.mkdir()
    image = folder / "ISIC_0024306.jpg"
    image.write_bytes(next((root / "HAM10000_images_part_1").glob("*.png")).read_bytes())
    (tmp_path / "link.csv").symlink_to(csv)
    listed = pd.read_csv(csv)["image"].iloc[0]
    skipped_list = tmp_path / "p.skipped.csv"
    skipped_list.write_bytes(csv.read_bytes())
    inputs = (csv, image, run / "config.yaml", skipped_list, Path(listed))
    originals = {p: p.read_bytes() for p in inputs}

    def no_work(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the model was loaded before the outputs were checked")

    monkeypatch.setattr(medssl.prediction, "load_finetuned", no_work)
    monkeypatch.chdir(tmp_path)
    base = ["predict", "--model", str(run), "--quiet"]
    cases = [  # (arguments, the option named, what the message says)
        (["--images", str(csv), "--out", str(csv)], "--out", "is the input --images"),
        (["--images", "images.csv", "--out", "./out/../images.csv"], "--out", "is the input"),
        (["--images", str(csv), "--out", "link.csv"], "--out", "is the input --images"),
        (["--images", str(csv), "--out", "p.csv", "--case-column", "patient",
          "--case-out", str(csv)], "--case-out", "is the input --images"),
        (["--images", str(csv), "--out", listed], "--out", "is the input image"),
        (["--images", str(folder), "--out", str(image)], "--out", "is the input image"),
        (["--images", str(folder), "--out", "folder/new.png"], "--out", "image extension"),
        (["--images", str(csv), "--out", "x.csv", "--case-column", "patient",
          "--case-out", "x.csv"], "--case-out", "is also --out"),
        (["--images", str(csv), "--out", str(run / "config.yaml")], "--out",
         "is the input --model"),
        # re-running on an earlier run's skipped list: its removal would delete the input
        (["--images", "p.skipped.csv", "--out", "p.csv"], "--out", "is the input --images"),
    ]  # fmt: skip
    (tmp_path / "out").mkdir()
    for args, option, says in cases:
        capsys.readouterr()
        assert main([*base, *args]) == 2, args
        err = capsys.readouterr().err
        assert err.startswith(f"medssl: error: {option} ") and says in err, (args, err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert {p: p.read_bytes() for p in originals} == originals
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["images.csv", "folder", "link.csv", "out", "p.skipped.csv"]
    )
    assert [p.name for p in folder.iterdir()] == ["ISIC_0024306.jpg"]


def test_an_output_folder_that_cannot_be_created_is_one_line(finetuned, tmp_path, capsys):
    root, run = finetuned
    csv, _ = image_csv(root, tmp_path)
    (tmp_path / "file").write_text("in the way")
    code = main(["predict", "--model", str(run), "--images", str(csv), "--quiet",
                 "--out", str(tmp_path / "file" / "sub" / "p.csv")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("medssl: error: --out ") and "is a file" in err
    assert len(err.strip().splitlines()) == 1


def test_a_decompression_bomb_is_an_unreadable_image(finetuned, tmp_path, capsys):
    from helpers.images import bomb_png

    _, run = finetuned
    folder = tmp_path / "imgs"
    folder.mkdir()
    Image.new("RGB", (20, 20), (10, 200, 30)).save(folder / "good.png")
    (folder / "bomb.png").write_bytes(bomb_png())  # 20000 x 20000 pixels in 69 bytes
    args = ["predict", "--model", str(run), "--images", str(folder), "--quiet"]
    assert main([*args, "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"medssl: error: cannot decode image {folder / 'bomb.png'}: ")
    assert "bomb" in err and len(err.strip().splitlines()) == 1
    assert main([*args, "--out", str(tmp_path / "p.csv"), "--skip-unreadable"]) == 0
    assert pd.read_csv(tmp_path / "p.skipped.csv")["image"].tolist() == ["bomb.png"]

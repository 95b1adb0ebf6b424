"""medssl.outputs: an output that would destroy an input or another output is refused."""

from __future__ import annotations

import os

import pytest

from medssl.errors import MedsslError
from medssl.outputs import check_outputs, check_writable, run_files


def test_an_input_by_any_path_is_refused(tmp_path, monkeypatch):
    listing = tmp_path / "list.csv"
    listing.write_text("image\na.png\n")
    os.symlink(listing, tmp_path / "link.csv")
    os.link(listing, tmp_path / "hard.csv")
    monkeypatch.chdir(tmp_path)
    inputs = [(f"--images {listing}", listing)]
    for given in ("list.csv", "./sub/../list.csv", "link.csv", "hard.csv"):
        (tmp_path / "sub").mkdir(exist_ok=True)
        with pytest.raises(MedsslError, match=r"^--out .* is the input --images .*list\.csv"):
            check_outputs([("--out", given)], inputs)
    check_outputs([("--out", "other.csv")], inputs)  # a new file: nothing to destroy
    assert listing.read_text() == "image\na.png\n"


def test_outputs_that_are_one_file_and_images_inside_input_folders(tmp_path):
    with pytest.raises(MedsslError, match=r"--case-out .*x\.csv is also --out .*x\.csv"):
        check_outputs([("--out", tmp_path / "x.csv"), ("--case-out", tmp_path / "sub/../x.csv")])
    folder = tmp_path / "images"
    (folder / "deep").mkdir(parents=True)
    folders = [(f"--images {folder}", folder)]
    for name in ("ISIC_1.jpg", "deep/new.PNG"):  # existing or not: it is or becomes an image
        with pytest.raises(MedsslError, match=r"^--out .* image extension inside the input"):
            check_outputs([("--out", folder / name)], image_folders=folders)
    check_outputs([("--out", folder / "predictions.csv")], image_folders=folders)
    with pytest.raises(MedsslError, match=r"^--out .* is a folder; give a file name"):
        check_outputs([("--out", folder)])


def test_files_of_a_run_are_inputs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    (run / "config.yaml").write_text("a: 1\n")
    with pytest.raises(MedsslError, match=r"is the input --model .*run \(its checkpoints/last"):
        check_outputs([("--out", run / "checkpoints" / "last.pt")], run_files(run))
    assert (run / "checkpoints" / "last.pt").read_bytes() == b"weights"


def test_folders_that_cannot_be_created_or_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(MedsslError, match=r"^--out .*: cannot create the folder .*: .* is a file"):
        check_writable("--out", blocker / "sub" / "p.csv")
    check_writable("--out", tmp_path / "new" / "deeper" / "p.csv")
    assert not (tmp_path / "new").exists() and sorted(tmp_path.iterdir()) == [blocker]


def test_folders_without_write_permission(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("permissions do not stop this user (root)")
        with pytest.raises(MedsslError, match=r"^--out .*: cannot write in .*locked"):
            check_writable("--out", locked / "p.csv")
        with pytest.raises(MedsslError, match=r"cannot create folders in .*locked"):
            check_writable("--out", locked / "sub" / "p.csv")
    finally:
        locked.chmod(0o700)

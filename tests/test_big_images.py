"""Images and sizes too big to decode: a decompression bomb is an unreadable image, one line;
an ``--image-size`` whose cache would not fit is refused before decoding."""

from __future__ import annotations

from pathlib import Path

from helpers.data import write_ham_layout
from helpers.images import bomb_png
from medssl.cli import main


def ham_with_a_bomb(tmp_path: Path) -> tuple[Path, Path]:
    root = write_ham_layout(tmp_path / "ham", n_lesions=12)
    bomb = sorted((root / "HAM10000_images_part_1").glob("*.png"))[3]
    bomb.write_bytes(bomb_png())
    return root, bomb


def flags(root: Path, out: Path) -> list[str]:
    return ["--dataset", "ham10000", "--root", str(root), "--out", str(out), "--image-size", "16",
            "--epochs", "1", "--batch-size", "8", "--num-workers", "0", "--precision", "fp32",
            "--device", "cpu", "--cache-dir", str(root / "cache"), "--quiet"]  # fmt: skip


def test_a_decompression_bomb_is_one_unreadable_image_in_pretrain_and_finetune(tmp_path, capsys):
    root, bomb = ham_with_a_bomb(tmp_path)
    for command in ("pretrain", "finetune"):
        assert main([command, *flags(root, tmp_path / command)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"medssl: error: cannot decode image {bomb}: ") and "bomb" in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / command).exists()
    assert main(["pretrain", *flags(root, tmp_path / "run"), "--skip-unreadable"]) == 0
    assert "skipped 1 unreadable image(s)" in capsys.readouterr().err

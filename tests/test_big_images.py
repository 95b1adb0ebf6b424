"""Images and sizes too big to decode: a decompression bomb is an unreadable image, one line
(so is a missing one); an ``--image-size`` whose cache would not fit is refused before
decoding."""

from __future__ import annotations

from pathlib import Path

from helpers.data import write_ham_layout
from helpers.images import bomb_png
from medssl.cli import main
from medssl.data import notices


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


def test_skip_unreadable_skips_a_missing_image_in_pretrain_and_finetune(tmp_path, capsys):
    """A listed image that does not exist stopped pretrain and finetune even with
    --skip-unreadable (predict and embed skipped it): now it is one more unreadable image."""
    root = write_ham_layout(tmp_path / "ham", n_lesions=12)
    gone = sorted((root / "HAM10000_images_part_1").glob("*.png"))[3]
    gone.unlink()
    for command in ("pretrain", "finetune"):
        assert main([command, *flags(root, tmp_path / command)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"medssl: error: ham10000: image {gone.name} listed in "), err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / command).exists()
        run = tmp_path / f"{command}-skipping"
        notices.forget()  # each message is printed once per process
        assert main([command, *flags(root, run), "--skip-unreadable"]) == 0
        assert "skipped 1 unreadable image(s)" in capsys.readouterr().err


def test_an_image_size_past_the_maximum_is_one_line_before_any_work(tmp_path, capsys):
    root = write_ham_layout(tmp_path / "ham", n_lesions=4)
    for command in ("pretrain", "finetune"):
        argv = flags(root, tmp_path / command)
        argv[argv.index("--image-size") + 1] = "20000"  # 335 GiB for the full HAM10000
        assert main([command, *argv]) == 2
        err = capsys.readouterr().err
        assert err == "medssl: error: --image-size: must be at most 4096, got 20000\n"
        assert not (tmp_path / command).exists() and not (root / "cache").exists()


def test_images_that_would_not_fit_in_memory_or_on_disk_are_refused_before_decoding(
    tmp_path, capsys, monkeypatch
):
    import shutil

    import medssl.data.cache as cache

    root = write_ham_layout(tmp_path / "ham", n_lesions=4)

    def no_decoding(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("decoding started")

    monkeypatch.setattr(cache, "_decode_all", no_decoding)
    monkeypatch.setattr(cache, "available_memory", lambda: 10_000)  # 10 kB of memory
    argv = flags(root, tmp_path / "run")
    argv[argv.index("--image-size") + 1] = "64"  # 12 KiB an image
    assert main(["pretrain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medssl: error: --image-size 64: ") and "decoded images of 64x64" in err
    assert "of memory available" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setattr(cache, "available_memory", lambda: None)  # unknown: not checked
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=10_000))
    assert main(["pretrain", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("medssl: error: --image-size 64: ") and "in the image cache" in err
    assert "--cache-dir or MEDSSL_CACHE" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (root / "cache").exists()


_LIMITED_CLI = """
import resource, sys
from pathlib import Path
import medssl.commands.pretrain, medssl.train.pretrain
from medssl.cli import main
status = Path("/proc/self/status").read_text().splitlines()
used = int(next(x for x in status if x.startswith("VmSize:")).split()[1]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (used + (800 << 20), resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def test_an_image_size_over_the_process_memory_limit_is_refused_before_decoding(tmp_path):
    """Under ``ulimit -v`` the check read MemAvailable and cgroup limits only: the decoded
    array did not fit the process's address space, an _ArrayMemoryError traceback."""
    import os
    import subprocess
    import sys

    root = write_ham_layout(tmp_path / "ham", n_lesions=12)  # 24 images: 1.1 GiB at 4096 px
    argv = flags(root, tmp_path / "run")
    argv[argv.index("--image-size") + 1] = "4096"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", _LIMITED_CLI, "pretrain", *argv],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    err = done.stderr
    assert done.returncode == 2, err
    assert err.startswith("medssl: error: --image-size 4096: 24 decoded images"), err
    assert "of memory available" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists() and not (root / "cache").exists()

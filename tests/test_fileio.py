"""medssl.fileio: a file system that refuses a write is one line; the target stays intact."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap

import pytest

from medssl.errors import MedsslError
from medssl.fileio import atomic_write

#: the start of a subprocess under a 1 MB file-size limit (SIGXFSZ ignored: writes fail
#: with EFBIG)
LIMITED = """
import resource, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, 1_000_000))
"""


def run_limited(body: str) -> subprocess.CompletedProcess:
    """Python ``body`` in a subprocess under the file-size limit."""
    return subprocess.run(
        [sys.executable, "-c", LIMITED + textwrap.dedent(body)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def test_a_full_disk_is_one_line_and_leaves_the_old_file(tmp_path):
    target = tmp_path / "state.bin"
    target.write_bytes(b"old")

    def fills_the_disk(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(MedsslError, match=r"^cannot write .*state\.bin: No space left on device; "
                       r"the existing file is unchanged$"):  # fmt: skip
        atomic_write(target, fills_the_disk)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == [
        "state.bin"
    ]

    def buggy(tmp: str) -> None:  # not the disk: the writer's own error, as it was
        raise OSError("something else")

    with pytest.raises(OSError, match="something else") as caught:
        atomic_write(target, buggy)
    assert not isinstance(caught.value, MedsslError)


def test_a_file_size_limit_is_one_line_whatever_the_writer_says(tmp_path):
    # torch's C++ writer says "unexpected pos", numpy "requested and written", safetensors
    # "(os error 27)": each is the same one line, the old file intact, no temporary file
    writers = {
        "torch": "torch.save({'w': torch.zeros(1_000_000)}, tmp)",
        "numpy": "np.save(open(tmp, 'wb'), np.zeros(1_000_000))",
        "safetensors": "safetensors.torch.save_file({'w': torch.zeros(1_000_000)}, tmp)",
        "text": "open(tmp, 'w').write('x' * 2_000_000)",
    }
    lines = [
        f"try:\n    atomic_write({str(tmp_path / name)!r}, lambda tmp: {write})\n"
        "except MedsslError as exc:\n    print(exc)\n"
        for name, write in writers.items()
    ]
    for name in writers:
        (tmp_path / name).write_bytes(b"old")
    done = run_limited(
        "import numpy as np, torch, safetensors.torch\nfrom medssl.errors import MedsslError\n"
        "from medssl.fileio import atomic_write\n" + "".join(lines)
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        f"cannot write {tmp_path / name}: File too large (over the file-size limit: ulimit -f); "
        "the existing file is unchanged"
        for name in writers
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(writers)
    assert all((tmp_path / name).read_bytes() == b"old" for name in writers)


def test_a_full_disk_stops_training_in_one_line_and_the_run_resumes(tmp_path):
    """Under the file-size limit: the checkpoint of an extension and a new image cache."""
    from pathlib import Path

    from helpers.data import write_ham_layout
    from helpers.runs import tiny_pretrain_config
    from medssl.train.pretrain import pretrain
    from medssl.train.run import CHECKPOINT

    root = write_ham_layout(tmp_path / "ham", n_lesions=12)
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(root, run, epochs=1))
    before = (run / CHECKPOINT).read_bytes()
    assert len(before) > 1_000_000  # a checkpoint the limit refuses
    cache = tmp_path / "cache128"
    done = run_limited(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from helpers.runs import tiny_pretrain_config
        from medssl.errors import MedsslError
        from medssl.train.pretrain import pretrain
        for out, overrides in (
            ({str(run)!r}, dict(epochs=2, resume=True)),  # extends the run: a new checkpoint
            ({str(tmp_path / "big")!r}, dict(image_size=128, cache_dir={str(cache)!r})),
        ):  # 128 px: 24 images x 48 KiB, a new cache over the limit
            try:
                pretrain(tiny_pretrain_config({str(root)!r}, out, **overrides))
            except MedsslError as exc:
                print(exc)
    """)  # fmt: skip
    checkpoint, cached = done.stdout.splitlines()
    assert checkpoint == (
        f"cannot write {run / CHECKPOINT}: File too large (over the file-size limit: "
        "ulimit -f); the existing file is unchanged"
    ), done.stderr
    assert cached.startswith(f"cannot write {cache}") and "--cache-dir or MEDSSL_CACHE" in cached
    assert (run / CHECKPOINT).read_bytes() == before
    for folder in (run, run / "checkpoints", cache):
        assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]
    pretrain(tiny_pretrain_config(root, run, epochs=2, resume=True))  # resumes from epoch 1

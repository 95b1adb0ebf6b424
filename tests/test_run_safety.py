"""Data safety of run directories: the lock, extensions, temp files, atomic logs, failed
starts, whole-run metrics after a resume, moved runs and file permissions."""

from __future__ import annotations

import csv
import json
import os
import shutil
import socket
import stat
import subprocess
import sys

import pytest
import torch
import yaml

from helpers.data import write_ham_layout
from helpers.runs import interrupted_pretrain as interrupted
from helpers.runs import tiny_pretrain_config as tiny_config
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train.finetune import FinetuneConfig, finetune
from medssl.train.pretrain import pretrain
from medssl.train.run import CONFIG, LOCK, METRICS, RunDir

TIMING = {"pairs_per_s", "epoch_seconds"}


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=30)



def status(run) -> str:  # noqa: ANN001
    return json.loads((run / METRICS).read_text())["status"]


# --- 1. the lock ---------------------------------------------------------------------------


def test_second_writer_is_refused_with_the_holders_pid(tmp_path):
    run = tmp_path / "run"
    first = RunDir(run, {"epochs": 1}, resume=False)
    with pytest.raises(MedsslError) as caught:
        RunDir(run, {"epochs": 1}, resume=False)
    message = str(caught.value)
    assert f"is being written by process {os.getpid()} on host {socket.gethostname()}" in message
    assert "choose another --out" in message and "\n" not in message
    first.close()
    assert not (run / LOCK).exists()
    RunDir(run, {"epochs": 1}, resume=False).close()  # free again


def test_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    dead = int(ended.stdout)
    run = tmp_path / "run"
    run.mkdir()
    (run / LOCK).write_text(f"{dead} {socket.gethostname()}\n")
    taken = RunDir(run, {"epochs": 1}, resume=False)
    assert (run / LOCK).read_text().split()[0] == str(os.getpid())
    err = capsys.readouterr().err
    assert str(dead) in err and err.count("\n") == 1  # one warning line
    taken.close()
    assert not (run / LOCK).exists()


def test_finished_and_killed_runs_release_their_lock(ham_root, tmp_path, monkeypatch):
    pretrain(tiny_config(ham_root, tmp_path / "done", epochs=1))
    assert not (tmp_path / "done" / LOCK).exists()
    interrupted(tiny_config(ham_root, tmp_path / "killed", epochs=2), monkeypatch, at_epoch=1)
    assert not (tmp_path / "killed" / LOCK).exists()


# --- 2. extensions -------------------------------------------------------------------------


def test_killed_extension_is_unfinished_and_resumable(ham_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    pretrain(tiny_config(ham_root, run, epochs=1))
    interrupted(tiny_config(ham_root, run, epochs=3, resume=True), monkeypatch, at_epoch=2)
    assert status(run) != "complete"
    assert yaml.safe_load((run / CONFIG).read_text())["epochs"] == 3
    finetune_cfg = FinetuneConfig(
        data=DataSpec("ham10000", str(ham_root)).to_dict(), out=str(tmp_path / "ft"),
        init=str(run), image_size=16, epochs=1, batch_size=8, progress=False,
    )  # fmt: skip
    with pytest.raises(MedsslError, match=r"unfinished run \(epoch 2 of 3\); finish it with "):
        finetune(finetune_cfg)
    assert not (tmp_path / "ft").exists()
    with pytest.raises(MedsslError, match="unfinished run; pass --resume"):
        pretrain(tiny_config(ham_root, run, epochs=3))
    with pytest.raises(MedsslError, match="trained 2 epochs already"):
        pretrain(tiny_config(ham_root, run, epochs=1, resume=True))
    metrics = pretrain(tiny_config(ham_root, run, epochs=3, resume=True))
    assert metrics["epochs"] == 3 and status(run) == "complete"
    assert finetune_cfg.resolved().init == str(run.resolve())  # a finished run is accepted


def test_an_extension_stopped_before_its_checkpoint_leaves_no_stale_log_row(
    ham_root, tmp_path, monkeypatch
):
    """An extension (2 -> 3 epochs) stopped after logging epoch 3 but before saving it;
    ``--resume --epochs 2`` then finished the run with epoch 3's row still in log.csv."""
    from medssl.train.run import RunDir

    run = tmp_path / "run"
    pretrain(tiny_config(ham_root, run, epochs=2))
    save = RunDir.save_training_state

    def stopped(self, epoch, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if epoch == 3:
            raise KeyboardInterrupt
        return save(self, epoch, *args, **kwargs)

    monkeypatch.setattr(RunDir, "save_training_state", stopped)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny_config(ham_root, run, epochs=3, resume=True))
    monkeypatch.setattr(RunDir, "save_training_state", save)
    epochs = lambda: [int(r["epoch"]) for r in csv.DictReader((run / "log.csv").open())]  # noqa: E731
    assert epochs() == [1, 2, 3] and status(run) != "complete"
    metrics = pretrain(tiny_config(ham_root, run, epochs=2, resume=True))
    assert metrics["epochs"] == 2 and status(run) == "complete"
    assert epochs() == [1, 2]


# --- 3. stale temp files -------------------------------------------------------------------


def test_stale_temp_files_are_removed_when_a_run_resumes(ham_root, tmp_path, monkeypatch):
    run = tmp_path / "run"
    interrupted(tiny_config(ham_root, run, epochs=2), monkeypatch, at_epoch=1)
    stale = [run / ".log.csv.ab12cd34.tmp", run / "checkpoints" / ".last.pt.k_9zq1xw.tmp"]
    kept = [run / "notes.tmp", run / ".keep.tmp", run / "tb" / ".events.ab12cd34.tmp"]
    for path in stale + kept:  # as kills during atomic writes leave them, and bystanders
        path.parent.mkdir(exist_ok=True)
        path.write_text("x")
    pretrain(tiny_config(ham_root, run, epochs=2, resume=True))
    assert [p.exists() for p in stale] == [False, False]
    assert all(p.exists() for p in kept)


# --- 4. log.csv ----------------------------------------------------------------------------


def test_log_csv_survives_a_failed_rewrite(tmp_path, monkeypatch):
    run = RunDir(tmp_path / "run", {"epochs": 3}, resume=False)
    monkeypatch.setattr(run, "_tensorboard", lambda: None)
    run.log({"epoch": 1, "loss": 1.5})
    run.log({"epoch": 2, "loss": 1.25})
    before = (tmp_path / "run" / "log.csv").read_text()

    def killed_midway(self, rows):  # noqa: ANN001, ANN202
        self.writerow(next(iter(rows)))
        raise OSError("disk full")

    monkeypatch.setattr(csv.DictWriter, "writerows", killed_midway)
    with pytest.raises(OSError, match="disk full"):
        run.log({"epoch": 3, "loss": 1.0})
    assert (tmp_path / "run" / "log.csv").read_text() == before
    assert [p.name for p in (tmp_path / "run").iterdir() if p.suffix == ".tmp"] == []
    run.close()


# --- 5. failed starts ----------------------------------------------------------------------


def test_failed_start_leaves_no_folder_behind(ham_root, tmp_path):
    with pytest.raises(MedsslError, match="exceeds the"):
        pretrain(tiny_config(ham_root, tmp_path / "new" / "run", batch_size=512))
    assert not (tmp_path / "new").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(MedsslError, match="exceeds the"):
        pretrain(tiny_config(ham_root, tmp_path / "empty", batch_size=512))
    assert list((tmp_path / "empty").iterdir()) == []


# --- 6. metrics after a resume -------------------------------------------------------------


def test_resumed_metrics_describe_the_whole_run(ham_root, tmp_path, monkeypatch):
    pretrain(tiny_config(ham_root, tmp_path / "whole", epochs=2, knn_every=1))
    split = tiny_config(ham_root, tmp_path / "split", epochs=2, knn_every=1)
    interrupted(split, monkeypatch, at_epoch=1)
    pretrain(tiny_config(ham_root, tmp_path / "split", epochs=2, knn_every=1, resume=True))

    def saved(run: str) -> dict:
        found = json.loads((tmp_path / run / METRICS).read_text())
        return {k: v for k, v in found.items() if k not in TIMING}

    whole, resumed = saved("whole"), saved("split")
    assert "knn_accuracy_init" in whole and "knn_accuracy" in whole
    assert resumed.keys() == whole.keys()
    for key, value in whole.items():
        number = isinstance(value, float)
        assert resumed[key] == (pytest.approx(value, rel=1e-6) if number else value), key


# --- 7. paths ------------------------------------------------------------------------------


def test_moved_run_resumes_at_its_new_place(ham_root, tmp_path, monkeypatch):
    interrupted(tiny_config(ham_root, tmp_path / "a", epochs=2), monkeypatch, at_epoch=1)
    shutil.move(tmp_path / "a", tmp_path / "b")
    metrics = pretrain(tiny_config(ham_root, tmp_path / "b", epochs=2, resume=True))
    assert metrics["epochs"] == 2 and status(tmp_path / "b") == "complete"
    assert yaml.safe_load((tmp_path / "b" / CONFIG).read_text())["out"] == str(tmp_path / "b")


def test_init_is_recorded_as_an_absolute_path(ham_root, tmp_path, monkeypatch):
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "weights.pt")
    monkeypatch.chdir(tmp_path)
    expected = str((tmp_path / "weights.pt").resolve())
    assert tiny_config(ham_root, tmp_path / "r", init="weights.pt").resolved().init == expected
    finetune_cfg = FinetuneConfig(
        data=DataSpec("ham10000", str(ham_root)).to_dict(), out=str(tmp_path / "ft"),
        init="weights.pt", image_size=16,
    )  # fmt: skip
    assert finetune_cfg.resolved().init == expected


# --- 8. permissions ------------------------------------------------------------------------


def test_run_files_follow_the_umask(ham_root, tmp_path):
    previous = os.umask(0o027)
    try:
        pretrain(tiny_config(ham_root, tmp_path / "run", epochs=1))
    finally:
        os.umask(previous)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {"last.pt", "backbone.pt", "backbone.safetensors", "metrics.json"} <= {
        p.name for p in files
    }
    modes = {p.relative_to(tmp_path).as_posix(): oct(stat.S_IMODE(p.stat().st_mode)) for p in files}
    assert set(modes.values()) == {oct(0o640)}, modes


def test_resume_over_a_malicious_last_pt_is_refused_without_running_it(tmp_path, monkeypatch):
    """A ``last.pt`` whose pickle calls ``os.system``: one line, torch's advice to re-run
    with ``weights_only=False`` not repeated, nothing executed."""
    from helpers.pickles import PICKLED, CallsSystem

    root = write_ham_layout(tmp_path / "ham")
    config = tiny_config(root, tmp_path / "run")
    interrupted(config, monkeypatch, at_epoch=1)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    marker = tmp_path / "EXECUTED"
    torch.save({"epoch": 1, "model": CallsSystem(marker)}, last)
    config.resume = True
    with pytest.raises(MedsslError) as caught:
        pretrain(config)
    message = str(caught.value)
    assert PICKLED in message and str(last) in message and "\n" not in message
    assert "weights_only" not in message
    assert not marker.exists()


#: runs ``medssl ARGV``, with every epoch after the first held up for a minute, so that a
#: signal sent once the first checkpoint exists arrives mid-run whatever the machine's speed
_SLOW_CLI = """
import sys, time
from medssl.train.finetune import Finetuner
from medssl.train.pretrain import Pretrainer
for trainer in (Pretrainer, Finetuner):
    def slow(self, epoch, *args, _original=trainer.train_epoch, **kwargs):
        if epoch >= 1:
            time.sleep(60)
        return _original(self, epoch, *args, **kwargs)
    trainer.train_epoch = slow
from medssl.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize(
    ("command", "signal_name"), [("pretrain", "SIGTERM"), ("finetune", "SIGINT")]
)
def test_a_signal_says_where_the_run_stopped_and_resume_finishes_it(
    ham_root, tmp_path, command, signal_name
):
    """SIGTERM (a scheduler, ``kill``) ended a run without a word; now it says, as SIGINT
    does, how many epochs are saved and how to continue, and ``--resume`` finishes the run."""
    import signal
    import time

    from medssl.cli import main

    run = tmp_path / "run"
    argv = [
        command, "--dataset", "ham10000", "--root", str(ham_root), "--out", str(run),
        "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--precision", "fp32",
        "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"),
        "--quiet",
    ]  # fmt: skip
    if command == "pretrain":
        argv += ["--method", "micle", "--lr", "0.3", "--warmup-epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        [sys.executable, "-c", _SLOW_CLI, *argv], stderr=subprocess.PIPE, text=True, env=env
    )
    deadline = time.monotonic() + 120
    while not (run / "checkpoints" / "last.pt").is_file() and process.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint after 2 minutes"
        time.sleep(0.1)
    time.sleep(0.5)  # the checkpoint's rename is done; the run sleeps in epoch 2
    process.send_signal(getattr(signal, signal_name))
    _, err = process.communicate(timeout=60)
    number = getattr(signal, signal_name).value
    assert process.returncode == 128 + number, err
    lines = [line for line in err.splitlines() if line.startswith("medssl:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    expected = f"medssl: interrupted ({signal_name}): {run}: stopped in epoch 2 of 2"
    assert lines[0].startswith(expected), lines[0]
    assert "1 epoch saved" in lines[0] and "--resume" in lines[0], lines[0]
    assert main([*argv, "--resume"]) == 0
    assert status(run) == "complete"


def test_an_interrupted_sweep_says_how_to_continue(tmp_path, capsys, monkeypatch):
    """The sweep's words replace its run's: a sweep continues by running it again."""
    import medssl.sweep
    from medssl.cli import main
    from medssl.interrupts import Interrupted

    def killed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise Interrupted("SIGTERM", "run: stopped in epoch 2 of 2; run ... with --resume")

    monkeypatch.setattr(medssl.sweep, "run_sweep", killed)
    protocol, out = tmp_path / "p.yaml", tmp_path / "sweep"
    assert main(["sweep", str(protocol), "--out", str(out)]) == 128 + 15
    err = capsys.readouterr().err
    assert err == (
        f"medssl: interrupted (SIGTERM): sweep {out} stopped; its finished runs are kept and an "
        f"interrupted one resumes: run medssl sweep {protocol} --out {out} again to continue\n"
    )


def test_a_signal_during_a_checkpoint_save_stops_the_run_after_the_save(
    ham_root, tmp_path, monkeypatch, capsys
):
    """A Ctrl-C while ``last.pt`` was written reached torch.save's C++ writer: "unexpected pos"
    (a traceback) or lost (the run trained on). Now it waits for the save, then stops the run."""
    import signal

    from medssl.cli import main

    class SignalMidWrite:  # the file torch.save writes to; SIGINT at its second write
        def __init__(self, fh) -> None:  # noqa: ANN001
            self.fh, self.writes = fh, 0

        def write(self, data) -> int:  # noqa: ANN001
            self.writes += 1
            if self.writes == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return self.fh.write(data)

        def flush(self) -> None:
            self.fh.flush()

    real_save, interrupted_saves = torch.save, []

    def save(obj, f, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        if ".last.pt." in str(getattr(f, "name", "")) and not interrupted_saves:
            interrupted_saves.append(f.name)
            f = SignalMidWrite(f)
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    run = tmp_path / "run"
    argv = [
        "pretrain", "--dataset", "ham10000", "--root", str(ham_root), "--out", str(run),
        "--image-size", "16", "--epochs", "2", "--batch-size", "8", "--precision", "fp32",
        "--device", "cpu", "--num-workers", "0", "--cache-dir", str(tmp_path / "cache"),
        "--method", "micle", "--lr", "0.3", "--warmup-epochs", "1", "--quiet",
    ]  # fmt: skip
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert interrupted_saves and "Traceback" not in err, err
    assert err.startswith(f"medssl: interrupted (SIGINT): {run}: stopped in epoch 2 of 2"), err
    assert "1 epoch saved" in err and "--resume" in err, err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.pt"]

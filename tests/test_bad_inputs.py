"""Every bad input is one line on stderr and exit status 2: no traceback, no misleading words.

Nothing here trains: each case fails before the first epoch (most before any data is read).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from medssl.cli import main
from medssl.errors import MedsslError
from medssl.models.checkpoint import load_backbone_state

SYNTHETIC = ["--dataset", "synthetic", "--synthetic-cases", "8", "--image-size", "8"]


def fails(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """Run ``medssl argv``; assert exit 2 with one ``medssl: error:`` line; return it."""
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medssl: error:")]
    assert code == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# --- run directories and the files medssl reads back ----------------------------------------


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
def test_out_that_is_a_file_is_refused(capsys, tmp_path, command):
    afile = tmp_path / "afile"
    afile.write_text("not a folder")
    line = fails(capsys, command, *SYNTHETIC, "--out", afile, "--quiet")
    assert f"--out {afile} is not a folder" in line
    line = fails(capsys, command, *SYNTHETIC, "--out", afile / "run", "--quiet")
    assert f"{afile} is a file" in line
    assert afile.read_text() == "not a folder"


def test_sweep_out_that_is_a_file_is_refused(capsys, tmp_path):
    afile = tmp_path / "afile"
    afile.write_text("x")
    protocol = tmp_path / "p.yaml"
    protocol.write_text(yaml.safe_dump({
        "data": {"dataset": "synthetic", "options": {"synthetic_cases": 8}},
        "inits": ["random"], "label_fractions": [1.0], "splits": ["test"],
    }))  # fmt: skip
    assert "is not a folder" in fails(capsys, "sweep", protocol, "--out", afile)


def _damaged_run(run: Path, config_text: str, finished: bool) -> Path:
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(config_text)
    torch.save({"epoch": 1}, run / "checkpoints" / "last.pt")
    if finished:
        (run / "metrics.json").write_text(json.dumps({"status": "complete"}))
    return run


def test_malformed_config_yaml_on_resume(capsys, tmp_path):
    run = _damaged_run(tmp_path / "run", "epochs: [1\n", finished=False)
    line = fails(capsys, "pretrain", *SYNTHETIC, "--out", run, "--resume", "--quiet")
    assert f"{run / 'config.yaml'} is damaged: not valid YAML" in line
    (run / "config.yaml").write_text("- just\n- a list\n")
    line = fails(capsys, "pretrain", *SYNTHETIC, "--out", run, "--resume", "--quiet")
    assert "is damaged: expected a mapping" in line


def test_malformed_config_yaml_on_evaluate(capsys, tmp_path):
    run = _damaged_run(tmp_path / "run", "label_fraction: 1.0\ndata: {dataset: [\n", True)
    line = fails(capsys, "evaluate", "--model", run)
    assert "config.yaml is damaged" in line


def _finetune_run(run: Path, best: bytes) -> Path:
    """A finished finetune run's files (synthetic data) with ``best`` as its best.pt."""
    from medssl.data.spec import DataSpec

    data = DataSpec("synthetic", "", {"synthetic_cases": 8, "image_size": 8}).to_dict()
    manifest, _ = DataSpec.from_dict(data).load()
    config = {
        "data": data, "out": str(run), "init": "random", "label_fraction": 1.0, "seed": 0,
        "backbone": "resnet18", "small_stem": False, "image_size": 8, "cache_dir": None,
        "class_names": list(manifest.class_names), "task": manifest.task,
    }  # fmt: skip
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    (run / "metrics.json").write_text(json.dumps({"status": "complete"}))
    (run / "best.pt").write_bytes(best)
    return run


def test_truncated_best_pt_on_evaluate(capsys, tmp_path):
    whole = tmp_path / "whole.pt"
    torch.save({"model": {"w": torch.zeros(1000)}, "epoch": 1}, whole)
    run = _finetune_run(tmp_path / "run", whole.read_bytes()[:300])
    line = fails(capsys, "evaluate", "--model", run, "--n-boot", "0")
    assert f"cannot read checkpoint {run / 'best.pt'}" in line
    assert "pickled" not in line


def test_random_bytes_are_not_called_a_pickled_object(tmp_path):
    path = tmp_path / "random.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(MedsslError) as caught:
        load_backbone_state(path)
    message = str(caught.value)
    assert "not a torch.save or safetensors file" in message and "pickled" not in message


@pytest.mark.parametrize("left", [".lock", "checkpoints", "log.csv"])
def test_unfinished_run_without_config_given_as_init(capsys, tmp_path, left):
    """A run that is starting (or was stopped before its config.yaml) is an unfinished run."""
    run = tmp_path / "pre"
    run.mkdir()
    (run / left).mkdir() if left == "checkpoints" else (run / left).write_text("")
    line = fails(capsys, "finetune", *SYNTHETIC, "--init", run, "--out", tmp_path / "ft")
    assert f"--init {run} is an unfinished run" in line
    assert "not a medssl run" not in line

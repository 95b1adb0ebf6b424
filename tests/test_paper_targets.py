"""bench/paper_targets.py on what is not a finished paper sweep: one line each, no traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
RECORD = BENCH / "records" / "ham32-paper"


def paper_targets(*args: str, stdout: int | None = subprocess.PIPE) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BENCH / "paper_targets.py"), *args],
        stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=120,
    )  # fmt: skip


def another_protocols_sweep(folder: Path) -> Path:
    """paired.csv and results.csv of a sweep with other inits (random, simclr)."""
    folder.mkdir()
    rows = [
        {"init": i, "mode": "finetune", "label_fraction": 0.1, "seed": 0, "split": "test",
         "selected_val": 0.7}
        for i in ("random", "simclr")
    ]  # fmt: skip
    pd.DataFrame(rows).to_csv(folder / "results.csv", index=False)
    paired = {"mode": "finetune", "label_fraction": 0.1, "split": "test", "metric": "auc_macro",
              "a": "simclr", "b": "random", "seed": 0, "diff": 0.01}  # fmt: skip
    pd.DataFrame([paired]).to_csv(folder / "paired.csv", index=False)
    return folder


@pytest.mark.parametrize("case", ["missing", "no-paired", "other-protocol", "fraction"])
def test_what_is_missing_is_one_line(tmp_path: Path, case: str) -> None:
    """These were FileNotFoundError and IndexError tracebacks."""
    folder, args = tmp_path / "sweep", []
    if case == "no-paired":
        folder.mkdir()
    elif case == "other-protocol":
        another_protocols_sweep(folder)
    elif case == "fraction":
        folder, args = RECORD, ["--fraction", "2"]
    done = paper_targets(str(folder), *args)
    expected = {
        "missing": f"paper_targets: error: {folder}: no such folder",
        "no-paired": f"paper_targets: error: {folder / 'paired.csv'} not found: {folder} is "
        "not a finished sweep",
        "other-protocol": "paper_targets: error: results.csv has no fine-tuned test rows of "
        "natural, derm, natderm, micle, simclr_cont at fraction 0.1 (its fractions: 0.1): is "
        "it a sweep of protocols/ham10000-paper-32px.yaml?",
        "fraction": "paper_targets: error: --fraction: must be in (0, 1], got 2",
    }[case]
    assert (done.returncode, done.stderr, done.stdout) == (2, expected + "\n", "")


def test_a_closed_pipe_ends_it_quietly(tmp_path: Path) -> None:
    """``... | head`` ended in a BrokenPipeError traceback; it ends as medssl's CLI does."""
    read, write = os.pipe()
    os.close(read)  # the reader (head) has gone
    try:
        done = paper_targets(str(RECORD), stdout=write)
    finally:
        os.close(write)
    assert (done.returncode, done.stderr) == (0, "")

"""Runs say how many optimiser steps they skipped (metrics.json, log.csv)."""

from __future__ import annotations

import csv
import itertools
import json

import pytest

from helpers.data import write_ham_layout
from helpers.runs import (
    interrupted_finetune,
    interrupted_pretrain,
    tiny_finetune_config,
    tiny_pretrain_config,
)
from medssl.train.common import FiniteStepGuard
from medssl.train.finetune import finetune
from medssl.train.pretrain import pretrain


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=30)


@pytest.fixture
def every_third_step_nan(monkeypatch):
    """Every third optimiser step gets a NaN gradient, which the real guard then skips."""
    original, calls = FiniteStepGuard.step, itertools.count()

    def poisoned(self, model, optimizer, scheduler):  # noqa: ANN001, ANN202
        if next(calls) % 3 == 0:
            next(p for p in model.parameters() if p.grad is not None).grad.fill_(float("nan"))
        return original(self, model, optimizer, scheduler)

    monkeypatch.setattr(FiniteStepGuard, "step", poisoned)


def _skipped_per_epoch(run) -> list[int]:  # noqa: ANN001
    with (run / "log.csv").open() as fh:
        return [int(row["skipped_steps"]) for row in csv.DictReader(fh) if row["skipped_steps"]]


def _metrics(run) -> dict:  # noqa: ANN001
    return json.loads((run / "metrics.json").read_text())


@pytest.mark.parametrize("trainer", ["pretrain", "finetune"])
def test_metrics_json_holds_the_whole_runs_skipped_steps(
    trainer, ham_root, tmp_path, monkeypatch, every_third_step_nan
):
    """Over both epochs, also when the run was interrupted after the first and resumed
    (the resumed process only saw the second epoch's skips)."""
    config, run, interrupted = {
        "pretrain": (tiny_pretrain_config, pretrain, interrupted_pretrain),
        "finetune": (tiny_finetune_config, finetune, interrupted_finetune),
    }[trainer]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run(config(ham_root, whole, epochs=2))
    per_epoch = _skipped_per_epoch(whole)
    assert len(per_epoch) == 2 and min(per_epoch) > 0
    assert _metrics(whole)["skipped_steps"] == sum(per_epoch)

    interrupted(config(ham_root, resumed, epochs=2), monkeypatch, at_epoch=1)
    run(config(ham_root, resumed, epochs=2, resume=True))
    per_epoch = _skipped_per_epoch(resumed)
    assert len(per_epoch) == 2 and min(per_epoch) > 0
    assert _metrics(resumed)["skipped_steps"] == sum(per_epoch)


def test_a_run_without_skips_says_zero(ham_root, tmp_path):
    run = tmp_path / "run"
    pretrain(tiny_pretrain_config(ham_root, run, epochs=1))
    assert _metrics(run)["skipped_steps"] == 0 == sum(_skipped_per_epoch(run))

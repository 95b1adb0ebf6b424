"""``medssl knn``: the random reference, paired differences, and bad input."""

from __future__ import annotations

import json

import pytest
import torch

from helpers.data import write_ham_layout
from helpers.runs import tiny_pretrain_config
from medssl.cli import main
from medssl.commands.knn import compare_backbones
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.models.backbones import build_backbone
from medssl.models.checkpoint import save_state_dict_atomic
from medssl.train.pretrain import pretrain


@pytest.fixture(scope="module")
def ham(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=40)
    return root, DataSpec("ham10000", str(root)).to_dict()


@pytest.fixture(scope="module")
def run(ham, tmp_path_factory):
    """A one-epoch MICLe run whose log holds the k-NN scores of its random start."""
    root, _ = ham
    out = tmp_path_factory.mktemp("runs") / "micle"
    pretrain(tiny_pretrain_config(root, out, epochs=1, warmup_epochs=0, knn_every=1))
    return out


def test_random_reference_is_the_pretraining_runs_starting_point(ham, run):
    root, data = ham
    result = compare_backbones(data, [str(run)], n_boot=50, cache_dir=str(root / "cache"))
    assert result["image_size"] == 16 and result["backbone"] == "resnet18"
    logged = json.loads((run / "metrics.json").read_text())
    for key in ("accuracy", "balanced_accuracy", "auc_macro"):
        assert result["scores"]["random"][key] == pytest.approx(logged[f"knn_{key}_init"])
        assert result["scores"]["micle"][key] == pytest.approx(logged[f"knn_{key}"])
        diff = result["vs_random"]["micle"][key]
        expected = result["scores"]["micle"][key] - result["scores"]["random"][key]
        assert diff["difference"] == pytest.approx(expected)
        lo, hi = diff["ci"]
        assert lo <= hi


def test_identical_backbones_differ_by_exactly_zero(ham, tmp_path):
    """A checkpoint of the random reference itself: every resample's difference is 0."""
    root, data = ham
    torch.manual_seed(3)
    backbone, _ = build_backbone("resnet18")
    save_state_dict_atomic(backbone.state_dict(), tmp_path / "same.pt")
    result = compare_backbones(
        data, [str(tmp_path / "same.pt")], image_size=16, seed=3, n_boot=30,
        cache_dir=str(root / "cache"),
    )  # fmt: skip
    assert result["scores"]["same"] == result["scores"]["random"]
    for diff in result["vs_random"]["same"].values():
        assert diff["difference"] == 0 and diff["ci"] == [0, 0]


def test_cli_prints_the_table_and_rejects_bad_options(ham, run, capsys, tmp_path):
    root, _ = ham
    base = ["knn", "--dataset", "ham10000", "--root", str(root), "--cache-dir",
            str(root / "cache"), "--n-boot", "20"]  # fmt: skip
    assert main([*base, "--init", str(run)]) == 0
    out = capsys.readouterr().out
    assert "random" in out and "micle" in out and "auc_macro - random" in out
    assert main([*base, "--init", str(run), "--image-size", "32"]) == 2
    assert "--image-size 32 differs from the --init run's 16" in capsys.readouterr().err
    assert main([*base, "--split", "train"]) == 2
    assert "--split train: not a query split" in capsys.readouterr().err
    assert main([*base, "--init", str(tmp_path / "missing.pt")]) == 2
    assert "missing.pt: no such file" in capsys.readouterr().err
    with pytest.raises(MedsslError, match="--k must be at least 1"):
        compare_backbones(DataSpec("ham10000", str(root)).to_dict(), [], k=0)

"""Pretraining: resume equivalence, run-directory protection, export, MICLe logging."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
import yaml

from helpers.data import write_ham_layout
from helpers.runs import interrupted_pretrain as interrupted
from helpers.runs import tiny_pretrain_config as tiny_config
from medssl.cli import main
from medssl.errors import MedsslError
from medssl.models.checkpoint import load_backbone_state
from medssl.train.pretrain import Pretrainer, pretrain


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=30)



def test_resume_ends_with_the_same_weights(ham_root, tmp_path, monkeypatch):
    whole = pretrain(tiny_config(ham_root, tmp_path / "whole", epochs=3))
    interrupted(tiny_config(ham_root, tmp_path / "split", epochs=3), monkeypatch, at_epoch=2)
    # without --resume the unfinished run is protected
    with pytest.raises(MedsslError, match="unfinished run; pass --resume"):
        pretrain(tiny_config(ham_root, tmp_path / "split", epochs=3))
    resumed = pretrain(tiny_config(ham_root, tmp_path / "split", epochs=3, resume=True))

    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-6)
    a = load_backbone_state(tmp_path / "whole")
    b = load_backbone_state(tmp_path / "split")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_finished_run_is_never_overwritten(ham_root, tmp_path):
    pretrain(tiny_config(ham_root, tmp_path / "run", epochs=1))
    before = (tmp_path / "run" / "backbone.safetensors").read_bytes()
    with pytest.raises(MedsslError, match="already holds a finished run"):
        pretrain(tiny_config(ham_root, tmp_path / "run", epochs=1))
    with pytest.raises(MedsslError, match="already holds a finished run"):
        pretrain(tiny_config(ham_root, tmp_path / "run", epochs=1, resume=True))
    assert (tmp_path / "run" / "backbone.safetensors").read_bytes() == before


def test_resume_with_another_configuration_is_refused(ham_root, tmp_path, monkeypatch):
    interrupted(tiny_config(ham_root, tmp_path / "run", epochs=2), monkeypatch, at_epoch=1)
    with pytest.raises(MedsslError, match="different configuration.*temperature"):
        pretrain(tiny_config(ham_root, tmp_path / "run", temperature=0.5, resume=True))


def test_resume_accepts_a_run_made_before_a_setting_existed(ham_root, tmp_path, monkeypatch):
    """A key missing from an older run's config.yaml is fine at its default, not otherwise."""
    interrupted(tiny_config(ham_root, tmp_path / "run", epochs=2), monkeypatch, at_epoch=1)
    config_file = tmp_path / "run" / "config.yaml"
    old = yaml.safe_load(config_file.read_text())
    for key in ("prefetch_factor", "knn_k", "source_scale", "head_output_bn"):
        del old[key]  # as if written before these settings existed
    config_file.write_text(yaml.safe_dump(old, sort_keys=False))
    with pytest.raises(MedsslError, match=r"different configuration \(knn_k: None -> 5\)"):
        pretrain(tiny_config(ham_root, tmp_path / "run", epochs=2, knn_k=5, resume=True))
    metrics = pretrain(tiny_config(ham_root, tmp_path / "run", epochs=2, resume=True))
    assert metrics["epochs"] == 2


def test_head_output_bn_trains_resumes_and_initialises(ham_root, tmp_path, monkeypatch):
    """--head-output-bn: the head's last layer is a batch norm, the run records it and
    resumes with it (its checkpoint holds that layer); its backbone initialises a run of
    today's head; source_scale 2 with the k-NN monitor on its S x S evaluation images."""
    config = tiny_config(ham_root, tmp_path / "bn", epochs=2, head_output_bn=True,
                         source_scale=2, knn_every=1)  # fmt: skip
    interrupted(config, monkeypatch, at_epoch=1)
    saved = yaml.safe_load((tmp_path / "bn" / "config.yaml").read_text())
    assert saved["head_output_bn"] is True and saved["source_scale"] == 2
    state = torch.load(tmp_path / "bn" / "checkpoints" / "last.pt", weights_only=True)
    assert "head.net.4.weight" in state["model"]  # the output batch norm
    trainer = Pretrainer(tiny_config(ham_root, tmp_path / "bn", epochs=2, head_output_bn=True,
                                     source_scale=2, knn_every=1, resume=True))  # fmt: skip
    assert isinstance(trainer.model.head.net[-1], torch.nn.BatchNorm1d)
    assert trainer.pixels.shape[1:] == (32, 43, 3)  # the 4:3 sources the views are cut from
    metrics = trainer.fit()
    assert metrics["epochs"] == 2 and 0 <= metrics["knn_accuracy"] <= 1
    with pytest.raises(MedsslError, match="different configuration.*head_output_bn"):
        pretrain(tiny_config(ham_root, tmp_path / "bn", epochs=3, source_scale=2,
                             knn_every=1, resume=True))  # fmt: skip
    pretrain(tiny_config(ham_root, tmp_path / "plain", epochs=1, init=str(tmp_path / "bn")))


def test_export_loads_into_torchvision_and_run_logs(ham_root, tmp_path):
    metrics = pretrain(tiny_config(ham_root, tmp_path / "run", epochs=1, knn_every=1))
    model = torchvision.models.resnet18()
    missing, unexpected = model.load_state_dict(
        load_backbone_state(tmp_path / "run" / "backbone.pt"), strict=False
    )
    assert set(missing) == {"fc.weight", "fc.bias"} and not unexpected
    # MICLe: the share of distinct-image pairs is logged and matches the bag structure
    assert 0.3 < metrics["distinct_pair_share"] < 0.9
    assert "knn_accuracy_init" in metrics and 0 <= metrics["knn_accuracy"] <= 1
    assert 0 <= metrics["knn_balanced_accuracy"] <= 1 and "knn_auc_macro_init" in metrics
    log = (tmp_path / "run" / "log.csv").read_text().splitlines()
    assert log[0].startswith("epoch") and len(log) == 3  # header, epoch 0 k-NN, epoch 1
    saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert saved["status"] == "complete"
    assert list((tmp_path / "run" / "tb").glob("events.*"))


def test_simclr_pairs_one_image_and_init_from_run(ham_root, tmp_path):
    first = pretrain(tiny_config(ham_root, tmp_path / "a", method="simclr", epochs=1))
    assert first["distinct_pair_share"] == 0.0
    # a later stage starts from the exported backbone (the paper's ImageNet -> medical)
    pretrain(tiny_config(ham_root, tmp_path / "b", epochs=1, init=str(tmp_path / "a")))
    with pytest.raises(MedsslError, match="does not fit the backbone"):
        pretrain(tiny_config(ham_root, tmp_path / "c", epochs=1, backbone="resnet34",
                             init=str(tmp_path / "a")))  # fmt: skip


def test_cli_pretrain_bad_option_is_one_line(ham_root, tmp_path, capsys):
    code = main([
        "pretrain", "--dataset", "ham10000", "--root", str(ham_root), "--out",
        str(tmp_path / "r"), "--aug", "blurr_p=0", "--epochs", "1", "--quiet",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--aug blurr_p: is not a setting; did you mean blur_p?" in err
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists()


def test_config_file_sets_options_and_flags_win(ham_root, tmp_path):
    config = tmp_path / "pretrain.yaml"
    config.write_text(
        "dataset: ham10000\n"
        f"root: {ham_root}\n"
        "method: simclr\nimage-size: 16\nepochs: 1\nbatch_size: 8\nnum_workers: 0\n"
        f"cache_dir: {ham_root / 'cache'}\ntemperature: 0.3\n"
    )
    out = tmp_path / "run"
    code = main(["pretrain", "--config", str(config), "--out", str(out), "--temperature", "0.2",
                 "--quiet"])  # fmt: skip
    assert code == 0
    import yaml

    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["method"] == "simclr" and saved["image_size"] == 16
    assert saved["temperature"] == 0.2  # the command line wins over the file
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    assert main(["pretrain", "--config", str(bad), "--out", str(tmp_path / "x")]) == 2

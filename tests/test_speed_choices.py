"""Automatic speed choices: augmentation mode, precision and workers, recorded and resumable."""

from __future__ import annotations

import json
import math

import pytest
import torch
import yaml

from helpers.data import write_ham_layout
from helpers.runs import interrupted_finetune, interrupted_pretrain, tiny_pretrain_config
from medssl.augment import finetune_augment, finetune_transform, resolve_augment_mode
from medssl.cli import main
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train import common
from medssl.train.common import resolve_num_workers, resolve_precision
from medssl.train.finetune import FinetuneConfig, finetune
from medssl.train.pretrain import pretrain

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ham_root(tmp_path_factory):
    return write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=30)


def test_auto_augment_mode_is_batch_with_kornia_and_old_names_map_with_a_warning(capsys):
    pytest.importorskip("kornia")
    assert resolve_augment_mode("auto") == "batch"
    assert resolve_augment_mode("per-sample") == "per-sample"
    assert resolve_augment_mode("cpu") == "per-sample"
    assert resolve_augment_mode("gpu") == "batch"
    err = capsys.readouterr().err
    assert err.count("deprecated") == 2 and "--augment-mode per-sample" in err
    with pytest.raises(MedsslError, match="--augment-mode 'fast' is not one of"):
        resolve_augment_mode("fast")


def test_auto_augment_mode_without_kornia_is_per_sample(monkeypatch):
    monkeypatch.setattr("medssl.augment.kornia_available", lambda: False)
    assert resolve_augment_mode("auto") == "per-sample"


@pytest.mark.parametrize("native", [True, False])
def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(monkeypatch, native):
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", CPU, 64) == ("bf16" if native else "fp32")
    assert resolve_precision("fp32", CPU, 64) == "fp32"
    with pytest.raises(MedsslError, match="--precision 'half' is not one of"):
        resolve_precision("half", CPU, 64)


@pytest.mark.parametrize(
    ("image_size", "small_stem", "expected"),
    [(16, False, "fp32"), (23, False, "fp32"), (24, False, "bf16"), (32, False, "bf16"),
     (64, False, "bf16"), (8, True, "bf16"), (16, True, "bf16")],
)  # fmt: skip
def test_auto_precision_on_the_cpu_takes_bf16_only_where_it_measured_faster(
    monkeypatch, image_size, small_stem, expected
):
    """docs/PERFORMANCE.md: at 16 px (ImageNet stem) bf16 was no faster than fp32 (1.06x,
    0.89-1.29), from 24 px on it was 1.3x and more; the small stem keeps 4x larger maps
    (16 px: 2.0x). An explicit choice is kept at any size."""
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    assert resolve_precision("auto", CPU, image_size, small_stem) == expected
    assert resolve_precision("bf16", CPU, 16) == "bf16"


def test_workers_default_to_none_for_batch_views_on_the_cpu():
    assert resolve_num_workers(None, "batch", CPU) == 0
    assert resolve_num_workers(None, "per-sample", CPU) >= 1
    assert resolve_num_workers(3, "batch", CPU) == 3
    with pytest.raises(MedsslError, match="--num-workers must be >= 0"):
        resolve_num_workers(-1, "batch", CPU)


def test_finetune_views_are_the_same_family_in_both_modes():
    pytest.importorskip("kornia")
    from helpers.augment_family import describe_batch, describe_transform
    from medssl.batch_augment import BatchViewAugment

    for rotation in (0.0, 45.0):
        batch = describe_batch(BatchViewAugment(finetune_augment(rotation), 24))
        per_sample = describe_transform(finetune_transform(24, rotation))
        assert batch == per_sample
        assert batch["jitter"] is None and not batch["blur"] and batch["crop_scale"] == (0.5, 1)


def test_pretrain_records_its_automatic_choices(ham_root, tmp_path, monkeypatch):
    pytest.importorskip("kornia")
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    config = tiny_pretrain_config(
        ham_root, tmp_path / "run", epochs=1, precision="auto", image_size=24
    )  # 24 px: where auto takes bf16 on such a CPU
    config.num_workers = None
    metrics = pretrain(config)
    assert torch.isfinite(torch.tensor(metrics["loss"]))  # bf16 autocast trains
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert (saved["augment_mode"], saved["precision"], saved["num_workers"]) == ("batch", "bf16", 0)


def test_resuming_an_old_run_keeps_its_choices(ham_root, tmp_path, monkeypatch):
    """A run made before --augment-mode (augment_on: cpu, fp32) resumes as it began."""
    monkeypatch.setattr(common, "cpu_has_native_bf16", lambda: True)
    whole = pretrain(tiny_pretrain_config(ham_root, tmp_path / "whole", augment_mode="per-sample"))
    old = tiny_pretrain_config(ham_root, tmp_path / "old", augment_mode="per-sample")
    interrupted_pretrain(old, monkeypatch, at_epoch=1)
    config_file = tmp_path / "old" / "config.yaml"
    legacy = yaml.safe_load(config_file.read_text())
    legacy.pop("augment_mode")
    legacy["augment_on"] = "cpu"
    config_file.write_text(yaml.safe_dump(legacy, sort_keys=False))

    resumed = pretrain(
        tiny_pretrain_config(ham_root, tmp_path / "old", precision="auto", resume=True)
    )
    saved = yaml.safe_load(config_file.read_text())
    assert (saved["augment_mode"], saved["precision"]) == ("per-sample", "fp32")
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-6)


@pytest.mark.filterwarnings("ignore:.*pin_memory.*:UserWarning")  # pinning without a GPU
def test_a_run_resumes_with_another_pin_memory(ham_root, tmp_path, monkeypatch):
    """pin_memory follows the device by default, so a run begun on a GPU (pinned) must
    resume on the CPU (not pinned), and the other way round (tests/test_cuda.py)."""
    run = tmp_path / "run"
    pinned = tiny_pretrain_config(ham_root, run, pin_memory=True)
    interrupted_pretrain(pinned, monkeypatch, at_epoch=1)
    metrics = pretrain(tiny_pretrain_config(ham_root, run, resume=True))
    assert metrics["epochs"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["pin_memory"] is False


@pytest.mark.parametrize("mode", ["per-sample", "batch"])
def test_pretrain_resumes_identically_in_both_modes(ham_root, tmp_path, monkeypatch, mode):
    if mode == "batch":
        pytest.importorskip("kornia")
    whole = pretrain(tiny_pretrain_config(ham_root, tmp_path / "whole", augment_mode=mode))
    split = tiny_pretrain_config(ham_root, tmp_path / "split", augment_mode=mode)
    interrupted_pretrain(split, monkeypatch, at_epoch=1)
    resumed = pretrain(
        tiny_pretrain_config(ham_root, tmp_path / "split", augment_mode=mode, resume=True)
    )
    assert resumed["loss"] == pytest.approx(whole["loss"], rel=1e-6)


def _finetune_config(root, out, **overrides) -> FinetuneConfig:  # noqa: ANN001
    settings = dict(
        data=DataSpec("ham10000", str(root)).to_dict(), out=str(out), image_size=16,
        epochs=2, batch_size=8, progress=False, cache_dir=str(root / "cache"),
        precision="fp32",
    )  # fmt: skip
    settings.update(overrides)
    return FinetuneConfig(**settings)


@pytest.mark.parametrize("mode", ["per-sample", "batch"])
def test_finetune_trains_and_resumes_identically_in_both_modes(
    ham_root, tmp_path, monkeypatch, mode
):
    if mode == "batch":
        pytest.importorskip("kornia")
    whole = finetune(_finetune_config(ham_root, tmp_path / "whole", augment_mode=mode))
    config = _finetune_config(ham_root, tmp_path / "split", augment_mode=mode)
    interrupted_finetune(config, monkeypatch, at_epoch=1)
    resumed = finetune(
        _finetune_config(ham_root, tmp_path / "split", augment_mode=mode, resume=True)
    )
    assert resumed == whole
    a = torch.load(tmp_path / "whole" / "best.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "split" / "best.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)
    saved = yaml.safe_load((tmp_path / "whole" / "config.yaml").read_text())
    assert saved["augment_mode"] == mode


def test_cli_old_augment_on_flag_still_works_with_a_warning(ham_root, tmp_path, capsys):
    code = main([
        "pretrain", "--dataset", "ham10000", "--root", str(ham_root), "--out",
        str(tmp_path / "r"), "--augment-on", "cpu", "--image-size", "16", "--epochs", "1",
        "--batch-size", "8", "--precision", "fp32", "--cache-dir", str(ham_root / "cache"),
        "--quiet", "--json",
    ])  # fmt: skip
    captured = capsys.readouterr()
    assert code == 0 and "augment_on 'cpu' is deprecated" in captured.err
    assert json.loads(captured.out)["epochs"] == 1
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert saved["augment_mode"] == "per-sample" and saved["augment_on"] == ""


def test_a_step_with_non_finite_gradients_is_skipped_and_a_run_of_them_is_an_error() -> None:
    import warnings

    from medssl.train.common import FiniteStepGuard

    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    guard = FiniteStepGuard(limit=3)
    before = model.weight.detach().clone()
    model(torch.ones(1, 3)).sum().backward()
    model.bias.grad[0] = float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a skipped first step makes torch warn by default
        assert guard.step(model, optimizer, scheduler) is False
    torch.testing.assert_close(model.weight.detach(), before)  # nothing written
    assert model.weight.grad is None  # and the bad gradients are gone
    assert scheduler.last_epoch == 1  # the schedule moved on all the same
    model(torch.ones(1, 3)).sum().backward()
    assert guard.step(model, optimizer, scheduler) is True
    assert not torch.equal(model.weight.detach(), before)
    assert guard.end_epoch(0) == 1 and guard.end_epoch(1) == 0
    with pytest.raises(MedsslError, match="3 optimiser steps in a row had NaN or infinite"):
        for _ in range(3):
            model(torch.ones(1, 3)).sum().backward()
            model.weight.grad[0, 0] = float("inf")
            guard.step(model, optimizer, scheduler)


def test_fp16_steps_go_through_a_loss_scaler_whose_state_is_checkpointed() -> None:
    from medssl.train.common import FiniteStepGuard

    assert FiniteStepGuard.for_precision("bf16", torch.device("cpu")).scaler is None
    guard = FiniteStepGuard.for_precision("fp16", torch.device("cpu"))
    assert guard.scaler is not None and guard.limit == 26  # 10 + 16 halvings of 2**16
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scale = guard.scaler.get_scale()
    # a loss whose scaled gradient overflows: the step is skipped and the scale halves
    guard.backward(model(torch.full((1, 3), 1e34)).sum())
    before = model.weight.detach().clone()
    assert guard.step(model, optimizer, scheduler) is False
    assert torch.equal(model.weight.detach(), before)
    assert guard.scaler.get_scale() == scale / 2
    # an ordinary loss: the step applies the unscaled gradient (SGD: w -= lr * x)
    guard.backward(model(torch.ones(1, 3)).sum())
    assert guard.step(model, optimizer, scheduler) is True
    torch.testing.assert_close(model.weight.detach(), before - 0.1)
    saved = guard.state_dict()
    fresh = FiniteStepGuard.for_precision("fp16", torch.device("cpu"))
    fresh.load_state_dict(saved)
    assert fresh.scaler.get_scale() == scale / 2
    assert FiniteStepGuard.for_precision("fp32", torch.device("cpu")).state_dict() == {}


def test_an_fp16_run_resumes_with_its_loss_scale(ham_root, tmp_path, monkeypatch):
    from medssl.train.pretrain import pretrain

    config = tiny_pretrain_config(ham_root, tmp_path / "r", precision="fp16", epochs=2)
    interrupted_pretrain(config, monkeypatch, at_epoch=1)
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)
    assert state["grad_scaler"]["scale"] > 0
    resumed = pretrain(tiny_pretrain_config(ham_root, tmp_path / "r", precision="fp16",
                                            epochs=2, resume=True))  # fmt: skip
    assert math.isfinite(resumed["loss"])

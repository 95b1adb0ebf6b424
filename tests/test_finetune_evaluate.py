"""Fine-tuning and evaluation end to end on tiny data in the published layouts."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from helpers.data import write_ham_layout
from helpers.runs import tiny_finetune_config
from medssl.cli import main
from medssl.commands.evaluate import evaluate_run
from medssl.data.spec import DataSpec
from medssl.errors import MedsslError
from medssl.train.finetune import FinetuneConfig, finetune


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    root = write_ham_layout(tmp_path_factory.mktemp("ham"), n_lesions=36)
    out = tmp_path_factory.mktemp("runs") / "ft"
    finetune(tiny_finetune_config(root, out, precision="auto"))
    return root, out


def test_shift_evaluation_writes_metrics_and_predictions(finetuned):
    _, run = finetuned
    metrics = evaluate_run(run, "shift", n_boot=50)
    assert metrics["split"] == "shift" and metrics["n"] > 0
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["evaluation"]["shift"]["accuracy"] == metrics["accuracy"]
    with np.load(run / "predictions_shift.npz") as npz:
        assert npz["probs"].shape == (metrics["n"], 7)  # the seven HAM10000 classes
        np.testing.assert_allclose(npz["probs"].sum(1), 1, rtol=1e-5)


def test_external_dataset_with_class_mapping(finetuned, tmp_path, capsys):
    _, run = finetuned
    ext = tmp_path / "external"
    ext.mkdir()
    rows = []
    for i, label in enumerate(["naevus", "melanoma", "other"] * 4):
        Image.new("RGB", (20, 20), (30 * i % 255, 90, 60)).save(ext / f"img{i}.png")
        rows.append({"image": f"img{i}.png", "label": label, "patient": f"p{i // 2}"})
    pd.DataFrame(rows).to_csv(ext / "labels.csv", index=False)
    mapping = tmp_path / "map.yaml"
    mapping.write_text("naevus: nv\nmelanoma: mel\nother: null\n")
    code = main([
        "evaluate", "--model", str(run), "--dataset", "csv", "--root", str(ext),
        "--csv-case", "patient", "--split", "all", "--class-map", str(mapping),
        "--n-boot", "20", "--cache-dir", str(tmp_path / "cache"), "--json",
    ])  # fmt: skip
    assert code == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["n"] == 8  # the four "other" images are excluded ...
    assert metrics["class_mapping"]["unmapped"] == {"other": 4}  # ... and reported
    bad = tmp_path / "bad.yaml"
    bad.write_text("naevus: naevus_in_model\n")
    with pytest.raises(MedsslError, match="not a model class"):
        evaluate_run(run, "all", DataSpec("csv", str(ext), {"csv_case": "patient"}).to_dict(),
                     str(bad), n_boot=10)  # fmt: skip


def test_min_steps_repeats_the_few_labelled_images_within_each_epoch(finetuned, tmp_path):
    from medssl.train.finetune import Finetuner

    root, _ = finetuned
    config = tiny_finetune_config(root, tmp_path / "few", label_fraction=0.25, batch_size=4)
    plain = Finetuner(config)
    n, batch = len(plain.dataset), plain.batch_size
    assert plain.steps_per_epoch == n // batch  # default: one pass per epoch
    # one pass draws the same batches as a shuffled DataLoader with drop_last would
    reference = torch.utils.data.DataLoader(
        plain.dataset, batch_size=batch, shuffle=True, drop_last=True,
        generator=torch.Generator().manual_seed(config.seed * 1_000_003 + 0),
    )  # fmt: skip
    ours = [ids.tolist() for _, _, ids in plain._loader(0)]
    assert ours == [ids.tolist() for _, _, ids in reference]

    longer = tiny_finetune_config(
        root, tmp_path / "few2", label_fraction=0.25, batch_size=4, epochs=2, min_steps=10 * n
    )
    trainer = Finetuner(longer)
    assert trainer.steps_per_epoch == math.ceil(10 * n / 2)  # 10n steps over 2 epochs
    ids = torch.cat([ids for _, _, ids in trainer._loader(0)])
    assert len(ids) == trainer.steps_per_epoch * batch
    counts = torch.bincount(ids, minlength=n)
    assert counts.min() >= len(ids) // n and counts.max() <= len(ids) // n + 1  # whole passes
    trainer.fit()
    log = pd.read_csv(tmp_path / "few2" / "log.csv")
    assert len(log) == 2 and np.isfinite(log["loss"]).all()


def test_label_fraction_run_trains_on_the_nested_subset(finetuned, tmp_path):
    root, _ = finetuned
    metrics = finetune(
        FinetuneConfig(
            data=DataSpec("ham10000", str(root)).to_dict(),
            out=str(tmp_path / "f10"),
            image_size=16,
            epochs=1,
            batch_size=4,
            num_workers=0,
            progress=False,
            label_fraction=0.25,
            cache_dir=str(root / "cache"),
        )  # fmt: skip
    )
    full = json.loads((finetuned[1] / "metrics.json").read_text())
    assert 0 < metrics["train_cases"] < full["train_cases"]
    with pytest.raises(MedsslError, match="not a finished medssl finetune run"):
        evaluate_run(tmp_path / "nothing", "test")


def _labels_csv(root, labels):  # noqa: ANN001, ANN202
    """A ``--dataset csv`` folder: one 16 px PNG per label."""
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(len(labels)):
        pixels = rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"i{i}.png")
    frame = pd.DataFrame({"image": [f"i{i}.png" for i in range(len(labels))], "label": labels})
    frame.to_csv(root / "labels.csv", index=False)
    return root


@pytest.mark.parametrize(
    ("labels", "expected"),
    [(["a"], "1 labelled training image"), (["a"] * 12, "only class 'a'")],
)
def test_a_training_set_that_cannot_train_a_classifier_is_refused(
    tmp_path, capsys, labels, expected
):
    """One labelled row (BatchNorm's ValueError mid-epoch) or one class (a 'complete' run
    with a null AUC): one line before training, and no run directory left behind."""
    root = _labels_csv(tmp_path / "data", labels)
    out = tmp_path / "run"
    code = main([
        "finetune", "--dataset", "csv", "--root", str(root), "--image-size", "16",
        "--epochs", "1", "--out", str(out), "--quiet", "--precision", "fp32", "--device", "cpu",
        "--cache-dir", str(tmp_path / "cache"),
    ])  # fmt: skip
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("medssl: error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    assert expected in lines[0] and "csv" in lines[0], lines[0]
    assert not (out / "metrics.json").exists()


def test_a_split_without_validation_images_keeps_the_last_epoch(tmp_path):
    """12 lesions split at this seed leave the validation split empty: the fine-tune has
    nothing to select on, trains to the end and keeps its last epoch (was an IndexError)."""
    ham = write_ham_layout(tmp_path / "ham", n_lesions=12)
    data = DataSpec("ham10000", str(ham), split_seed=2**32 - 1)
    assert len(data.load()[1]["val"]) == 0
    cfg = tiny_finetune_config(ham, tmp_path / "run", data=data.to_dict(), epochs=2)
    metrics = finetune(cfg)
    assert metrics["best_val_auc_macro"] is None
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert best["epoch"] == 2

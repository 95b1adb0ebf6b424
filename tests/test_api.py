"""The Python API: the README's example session on tiny synthetic data, and its errors."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from PIL import Image

import medssl
from medssl.errors import MedsslError


def test_readme_example_session(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # the README's calls, with the smallest settings that exercise them
    data = medssl.data.load("synthetic", synthetic_cases=60)
    splits = data.summary()["splits"]
    assert set(splits) == {"train", "val", "test", "shift"} and splits["val"]["images"] > 0
    pt = medssl.pretrain(data, "runs/micle", method="micle", image_size=16, epochs=1,
                         batch_size=16, progress=False, precision="fp32")  # fmt: skip
    assert pt["method"] == "micle" and pt["epochs"] == 1
    ft = medssl.finetune(data, "runs/ft", init="runs/micle", epochs=1, batch_size=16,
                         progress=False, precision="fp32")  # fmt: skip
    assert ft["train_images"] == splits["train"]["images"]
    assert medssl.FinetuneConfig  # the config classes are part of the API
    metrics = medssl.evaluate("runs/ft", "shift", n_boot=20)
    assert metrics["n"] == splits["shift"]["images"] and "auc_macro" in metrics["ci"]

    (tmp_path / "new_images").mkdir()
    for i in range(4):
        Image.fromarray(data.manifest.pixels[i]).save(tmp_path / f"new_images/img{i}.png")
    preds = medssl.predict("runs/ft", "new_images", "predictions.csv", progress=False)
    assert preds.images["image"].tolist() == [f"img{i}.png" for i in range(4)]
    assert preds.class_names == data.manifest.class_names
    written = pd.read_csv(tmp_path / "predictions.csv")
    np.testing.assert_allclose(written.filter(like="prob_").to_numpy(), preds.probs, atol=1e-6)

    from medssl.commands.export import export_model

    meta = export_model("runs/ft", "onnx", "classifier.onnx")
    assert meta["input"] == "RGB images, NCHW (N, 3, 16, 16), float32 in [0, 1]"


def test_api_errors_name_the_option(tmp_path):
    with pytest.raises(MedsslError, match="needs a root folder"):
        medssl.data.load("ham10000")
    with pytest.raises(MedsslError, match=r"unknown option\(s\) synthetic_case \("):
        medssl.data.load("synthetic", synthetic_case=10)
    data = medssl.data.load("synthetic", synthetic_cases=12, split_seed=1)
    assert data.spec.split_seed == 1 and data.spec.options == {"synthetic_cases": 12}
    with pytest.raises(MedsslError, match=r"pretrain: unknown option\(s\) epoch \(valid: "):
        medssl.pretrain(data, tmp_path / "run", epoch=1)
    with pytest.raises(MedsslError, match="finetune: give out"):
        medssl.finetune(data)
    with pytest.raises(MedsslError, match="data must come from medssl.data.load"):
        medssl.finetune("synthetic", tmp_path / "run")
    from medssl.api import _config  # a ready config works too; options replace its fields

    given = medssl.FinetuneConfig(data=data.spec.to_dict(), out="elsewhere")
    config = _config(medssl.FinetuneConfig, "finetune", given, tmp_path / "ft", {"epochs": 3})
    assert (config.epochs, config.out) == (3, str(tmp_path / "ft"))


def test_import_is_cheap_and_the_api_names_are_functions():
    code = (
        "import sys, medssl; assert 'torch' not in sys.modules and 'pandas' not in sys.modules;"
        "from medssl import predict, evaluate; import medssl.api as api;"
        "assert predict is api.predict and evaluate is api.evaluate is medssl.evaluate;"
        "import medssl.commands.evaluate as e, medssl.commands.predict as p;"
        "assert e.evaluate_run and p.predict_images and medssl.predict is api.predict"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

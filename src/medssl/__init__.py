"""medssl: self-supervised pretraining (SimCLR, MICLe) for medical image classifiers.

The Python API (README, "Python API")::

    data = medssl.data.load("ham10000", "path/to/HAM10000")
    medssl.pretrain(data, "runs/micle", method="micle", epochs=100)
    medssl.finetune(data, "runs/ft", init="runs/micle", label_fraction=0.1)
    medssl.evaluate("runs/ft", "shift")
    medssl.predict("runs/ft", "new_images/", "predictions.csv")
    medssl.embed("runs/micle", "new_images/", "embeddings.parquet")
    medssl.export("runs/micle", "onnx", "backbone.onnx")
    medssl.knn(data, ["runs/micle"])
    medssl.run_sweep("protocol.yaml", "sweeps/one")

Everything is imported on first use, so ``import medssl`` loads neither torch nor pandas.
"""

from __future__ import annotations

import importlib
from typing import Any

from medssl.errors import MedsslError

__version__ = "0.1.0"
__all__ = [
    "DataSpec", "Embeddings", "FinetuneConfig", "LoadedData", "MedsslError", "Predictions",
    "PretrainConfig", "__version__", "data", "embed", "evaluate", "export", "finetune", "knn",
    "nearest", "predict", "pretrain", "run_sweep",
]  # fmt: skip

#: name -> the module that defines it
_LAZY = {
    "pretrain": "medssl.api",
    "finetune": "medssl.api",
    "evaluate": "medssl.api",
    "predict": "medssl.api",
    "embed": "medssl.api",
    "nearest": "medssl.api",
    "export": "medssl.api",
    "knn": "medssl.api",
    "run_sweep": "medssl.api",
    "PretrainConfig": "medssl.train.pretrain",
    "FinetuneConfig": "medssl.train.finetune",
    "DataSpec": "medssl.data.spec",
    "LoadedData": "medssl.data",
    "Predictions": "medssl.prediction",
    "Embeddings": "medssl.embedding",
}


def __getattr__(name: str) -> Any:
    if name == "data":
        return importlib.import_module("medssl.data")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))

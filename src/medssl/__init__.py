"""medssl: self-supervised pretraining (SimCLR, MICLe) for medical image classifiers.

The Python API (README, "Python API")::

    data = medssl.data.load("ham10000", "path/to/HAM10000")
    medssl.pretrain(data, "runs/micle", method="micle", epochs=100)
    medssl.finetune(data, "runs/ft", init="runs/micle", label_fraction=0.1)
    medssl.evaluate("runs/ft", "shift")
    medssl.predict("runs/ft", "new_images/", "predictions.csv")

Everything is imported on first use, so ``import medssl`` loads neither torch nor pandas.

``medssl.predict`` is also the name of a module (the ``medssl evaluate`` command). That
module stays what it was -- ``from medssl import predict; predict.evaluate_run(...)`` works as
before -- and calling it calls the API function :func:`medssl.api.predict` (whose ``help()``
shows its arguments).
"""

from __future__ import annotations

import importlib
import sys
import types
from typing import Any

from medssl.errors import MedsslError

__version__ = "0.1.0"
__all__ = [
    "DataSpec", "FinetuneConfig", "LoadedData", "MedsslError", "Predictions", "PretrainConfig",
    "__version__", "data", "evaluate", "finetune", "predict", "pretrain",
]  # fmt: skip

#: name -> the module that defines it
_LAZY = {
    "pretrain": "medssl.api",
    "finetune": "medssl.api",
    "evaluate": "medssl.api",
    "PretrainConfig": "medssl.train.pretrain",
    "FinetuneConfig": "medssl.train.finetune",
    "DataSpec": "medssl.data.spec",
    "LoadedData": "medssl.data",
    "Predictions": "medssl.inference",
}
#: submodules that are also API functions
_CALLABLE_MODULES = ("predict",)


class _CallableModule(types.ModuleType):
    """A submodule that, called, runs the API function of its name in :mod:`medssl.api`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from medssl import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        # The import system sets each imported submodule as an attribute of its package:
        # the moment to make medssl.predict callable.
        if name in _CALLABLE_MODULES and type(value) is types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


def __getattr__(name: str) -> Any:
    if name in _CALLABLE_MODULES or name == "data":
        return importlib.import_module(f"medssl.{name}")
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'medssl' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


sys.modules[__name__].__class__ = _Package

"""medssl: self-supervised pretraining (SimCLR, MICLe) for medical image classifiers."""

from medssl.errors import MedsslError

__version__ = "0.1.0"
__all__ = ["MedsslError", "__version__"]

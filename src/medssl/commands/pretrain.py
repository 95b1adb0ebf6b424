"""``medssl pretrain``: SimCLR or MICLe self-supervised pretraining into a run directory.

The trainer and its options are :mod:`medssl.train.pretrain` (:class:`PretrainConfig`,
:func:`~medssl.train.pretrain.pretrain`); the command line builds the config from its flags
and ``--config`` file (:func:`medssl.cli_options.trainer_config`) and runs it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.train.pretrain import PretrainConfig


def run_pretrain(config: PretrainConfig, name: Callable[[str], str]) -> dict[str, Any]:
    """Pretrain ``config``; return the run's final metrics.

    ``name`` names an option as the user wrote it (a flag or a ``--config`` key), for the
    library's messages (:func:`medssl.options.spelling`).
    """
    from medssl.options import spelling
    from medssl.train.pretrain import pretrain

    with spelling(name):
        return pretrain(config)

"""``medssl finetune``: supervised fine-tuning (or a linear probe) with a label fraction.

The trainer and its options are :mod:`medssl.train.finetune` (:class:`FinetuneConfig`,
:func:`~medssl.train.finetune.finetune`); the command line builds the config from its flags
and ``--config`` file (:func:`medssl.cli_options.trainer_config`) and runs it here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from medssl.train.finetune import FinetuneConfig


def run_finetune(config: FinetuneConfig, name: Callable[[str], str]) -> dict[str, Any]:
    """Fine-tune ``config``; return the run's final metrics.

    ``name`` names an option as the user wrote it (a flag or a ``--config`` key), for the
    library's messages (:func:`medssl.options.spelling`).
    """
    from medssl.options import spelling
    from medssl.train.finetune import finetune

    with spelling(name):
        return finetune(config)

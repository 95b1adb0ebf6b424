"""Warnings of the data layer, shown once per process on stderr.

Adapters, the image cache and the split code record what a user should know about their
data in :attr:`Manifest.warnings <medssl.data.manifest.Manifest.warnings>` and
:attr:`Splits.warnings <medssl.data.splits.Splits.warnings>`: a CSV without a case column
(every image its own case, so MICLe finds no pairs), a publisher's split that leaks patients,
how many unreadable images ``--skip-unreadable`` dropped. Every command that loads data does
so through :func:`medssl.train.common.load_data`, which passes them to :func:`announce`. A
sweep loads the same data for every run; each message is printed once per process.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import TextIO

PREFIX = "medssl: warning: "
_shown: set[str] = set()


def announce(messages: Iterable[str], stream: TextIO | None = None) -> list[str]:
    """Print each message not printed before in this process; return the ones printed."""
    out = stream if stream is not None else sys.stderr
    printed = []
    for message in messages:
        if message in _shown:
            continue
        _shown.add(message)
        printed.append(message)
        print(f"{PREFIX}{message}", file=out, flush=True)
    return printed


def forget() -> None:
    """Show every message again (for tests, and for a long-lived process that wants it)."""
    _shown.clear()

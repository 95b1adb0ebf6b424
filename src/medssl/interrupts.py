"""SIGINT and SIGTERM end a command the same way: a :class:`Interrupted` exception.

Python turns only SIGINT into ``KeyboardInterrupt``; SIGTERM (``kill``, a job scheduler's
time limit) ends the process on the spot, with no message and no cleanup. Within
:func:`signals_interrupt` both raise :class:`Interrupted` (a ``KeyboardInterrupt``, so every
``finally`` and ``except KeyboardInterrupt`` runs as for Ctrl-C). A trainer or a sweep that
catches it on the way out adds where it stopped and how to continue (:func:`stopped`), and
the CLI prints that as one line and exits with 128 + the signal's number. Within
:func:`deferred` (a file being written) a signal waits until the block ends.

This module imports nothing of medssl: every layer may use it.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["Interrupted", "deferred", "signals_interrupt", "stopped"]

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A command stopped by a signal; ``where``: where it stopped and how to continue."""

    def __init__(self, signal_name: str = "SIGINT", where: str = "") -> None:
        super().__init__(where or signal_name)
        self.signal_name = signal_name
        self.where = where

    @property
    def exit_status(self) -> int:
        """The shell's status for a process ended by this signal: 128 + its number."""
        return 128 + int(getattr(signal, self.signal_name, signal.SIGINT))


def stopped(exc: BaseException, where: str) -> Interrupted:
    """``exc`` (an :class:`Interrupted`, or a plain ``KeyboardInterrupt``: SIGINT) saying
    ``where``; the outermost caller's words win, so a sweep's replace its run's."""
    return Interrupted(getattr(exc, "signal_name", "SIGINT"), where)


def _raise(signum: int, _frame: Any) -> None:
    raise Interrupted(signal.Signals(signum).name)


@contextlib.contextmanager
def signals_interrupt() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise :class:`Interrupted` (main thread only:
    Python takes signal handlers nowhere else); the previous handlers come back after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, _raise) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM wait: a signal that arrives is honoured (its
    handler runs) as the block ends, so a file being written is finished or removed first.

    An exception raised inside a C++ writer's callback is lost there (``torch.save``: "unexpected
    pos", or nothing at all). Only Python handlers wait; nested blocks defer to the outermost.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def hold(signum: int, _frame: Any) -> None:
        caught.append(signum)

    hold.deferring = True  # type: ignore[attr-defined]
    previous = {
        s: signal.signal(s, hold)
        for s in SIGNALS
        if callable(signal.getsignal(s)) and not getattr(signal.getsignal(s), "deferring", False)
    }
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if caught:
            previous[caught[0]](caught[0], None)

"""``medssl sweep``: pretraining runs, then inits x label fractions x seeds -> table + report.

The protocol format, the planning of runs and their resumption are :mod:`medssl.sweep` (a
library the demo uses too); this module is the command's entry point into it.
"""

from __future__ import annotations

from pathlib import Path


def run_sweep(protocol: str | Path, out: str | Path, progress: bool = True) -> Path:
    """Run (or resume) the sweep of the ``protocol`` file into ``out``; return its results.csv.

    ``progress``: the runs' per-epoch output (the sweep's own lines are always printed).
    """
    from medssl.sweep import run_sweep as sweep

    return sweep(protocol, out, progress=progress)

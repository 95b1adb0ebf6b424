"""``medssl sweep``: pretraining runs, then inits x label fractions x seeds -> table + report.

The protocol format, the planning of runs and their resumption are :mod:`medssl.sweep` (a
library the demo uses too); this module is the command's entry point into it.
"""

from __future__ import annotations

from pathlib import Path


def run_sweep(
    protocol: str | Path, out: str | Path, progress: bool = True, record: str | None = None
) -> Path:
    """Run (or resume) the sweep of the ``protocol`` file into ``out``; return its results.csv.

    ``progress``: the runs' per-epoch output (the sweep's own lines are always printed);
    ``record``: the folder of the sweep's record (restored first, updated per seed).
    """
    from medssl.interrupts import stopped
    from medssl.sweep import run_sweep as sweep

    try:
        return sweep(protocol, out, progress=progress, record=record)
    except KeyboardInterrupt as exc:  # SIGINT or SIGTERM, in a run or between runs
        raise stopped(
            exc,
            f"sweep {out} stopped; its finished runs are kept and an interrupted one resumes: "
            f"run medssl sweep {protocol} --out {out}"
            f"{f' --record {record}' if record is not None else ''} again to continue",
        ) from None

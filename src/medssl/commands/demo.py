"""``medssl demo``: SimCLR vs MICLe vs random end to end, as one generated sweep.

The demo's protocol (synthetic data, budgets, the printed headline) is :mod:`medssl.demo`;
this module is the command's entry point into it.
"""

from __future__ import annotations

from pathlib import Path

from medssl.errors import MedsslError


def run_demo(
    out: str | Path = "medssl-demo",
    dataset: str | None = None,
    root: str | None = None,
    budget: str = "default",
    progress: bool = True,
    seed: int = 0,
) -> Path:
    """Run (or reuse) the demo in ``out`` (see :func:`medssl.demo.run_demo`); return results.csv.

    ``root`` needs ``dataset``: without one the demo runs on synthetic data.
    """
    from medssl.demo import run_demo as demo

    if root and not dataset:
        raise MedsslError("--root needs --dataset (the demo runs on synthetic data without)")
    return demo(out, dataset, root, budget, progress=progress, seed=seed)

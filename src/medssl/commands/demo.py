"""``medssl demo``: SimCLR vs MICLe vs random end to end, as one generated sweep.

The demo is a library function (:func:`medssl.demo.run_demo`: the protocol, its budgets and
the printed headline); the command calls it as it is.
"""

from __future__ import annotations

from medssl.demo import run_demo

__all__ = ["run_demo"]

"""Pickles that a safe loader must refuse without running them."""

from __future__ import annotations

import os
from pathlib import Path

#: what medssl says of a file holding pickled objects, for every torch version
PICKLED = "refusing to load: the file holds pickled objects"


class CallsSystem:
    """Unpickled, it calls ``os.system`` (harmlessly: it touches ``marker``, which a test
    then checks is absent)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch {self.marker}",))


class CallsExec:
    """Unpickled, it calls ``builtins.exec``: a callable in a module that plain containers
    come from too."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204
        return (exec, (f"open({str(self.marker)!r}, 'w')",))


class PlainObject:
    """A class instance: no callable, but neither a tensor nor a plain container."""

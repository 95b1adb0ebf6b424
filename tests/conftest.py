"""Shared fixtures. Helpers that tests import (data layouts, tiny runs) are in helpers/."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Each test session decodes into its own cache, never the user's."""
    monkeypatch.setenv("MEDSSL_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))

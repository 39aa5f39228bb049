"""Fixtures shared by the test modules."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def defacer():
    """The shipped model on the CPU with the atlas guard (the default), loaded once for the whole
    run (tests must not change it)."""
    from deepdefacer.model import load_defacer

    return load_defacer("cpu")

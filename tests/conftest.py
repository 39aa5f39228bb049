"""Fixtures shared by the test modules."""

from __future__ import annotations

import os

import pytest

# One ITK thread for antspyx (ITK reads this when antspyx loads, later than this file), which only the
# training's reference labels and the pydeface baseline use since stop 20: with several threads ITK
# sums its metric in a varying order and reruns differ. The atlas guard's own registration
# (deepdefacer.registration) is bit-identical on any number of threads.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(scope="session")
def defacer():
    """The shipped model on the CPU with the atlas guard (the default), loaded once for the whole
    run (tests must not change it)."""
    from deepdefacer.model import load_defacer

    return load_defacer("cpu")


@pytest.fixture(scope="session")
def network():
    """The shipped model with the network's brain guard alone (--no-atlas-guard), loaded once."""
    from deepdefacer.model import load_defacer

    defacer = load_defacer("cpu")
    defacer.atlas_guard = False
    return defacer

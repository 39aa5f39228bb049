"""Fixtures shared by the test modules, and the ``data`` marker's skip.

Markers (pyproject.toml): ``slow`` (the model on whole scans or datasets, the atlas registration,
the app in subprocesses) and ``data`` (needs the shared data folder, tests/shared_data.py). The
quick loop: ``bash tests/run.sh -m "not slow and not data"``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared_data import SHARED_DATA, SKIP_REASON, available

# One ITK thread for antspyx (ITK reads this when antspyx loads, later than this file), which only the
# training's reference labels and the pydeface baseline use: with several threads ITK sums its metric
# in a varying order and reruns differ. The atlas guard's own registration (deepdefacer.registration)
# is bit-identical on any number of threads.
os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")


@pytest.fixture(autouse=True)
def in_process_runs_stay_in_this_process(request, monkeypatch):
    """A run started in the test's process (``main([...])``) counts one CPU, so without --n-procs
    it defaces in this process, where the test's monkeypatches apply (worker processes would not
    see them). Runs in subprocesses keep the default, a process a CPU; tests/test_parallel_default.py
    compares that default with one process. Tests marked ``real_cpus`` count the real ones."""
    from deepdefacer import parallel

    if request.node.get_closest_marker("real_cpus") is None:
        monkeypatch.setattr(parallel, "usable_cpus", lambda: 1)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data folder (../shared/data), read-only; the test is skipped without it."""
    if not available():
        pytest.skip(SKIP_REASON)
    return SHARED_DATA


def pytest_collection_modifyitems(config, items):
    """Tests that use the shared_data fixture are marked ``data``; every ``data`` test is skipped,
    with one reason, when the folder is absent."""
    skip = pytest.mark.skip(reason=SKIP_REASON)
    for item in items:
        if "shared_data" in getattr(item, "fixturenames", ()) and item.get_closest_marker("data") is None:
            item.add_marker(pytest.mark.data)
        if item.get_closest_marker("data") is not None and not available():
            item.add_marker(skip)


@pytest.fixture(scope="session")
def defacer():
    """The shipped model on the CPU with the atlas guard (the default), loaded once for the whole
    run (tests must not change it)."""
    from deepdefacer.pipeline import load_defacer

    return load_defacer("cpu")


@pytest.fixture(scope="session")
def network(defacer):
    """The shipped model with the network's brain guard alone (--no-atlas-guard)."""
    from deepdefacer.pipeline import Defacer

    return Defacer(defacer.predictor, atlas_guard=False)

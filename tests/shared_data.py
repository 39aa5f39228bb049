"""Where the shared test data lies (``../shared/data`` from the repository root), defined once.

Helpers that need paths when they are imported use these constants; tests that need the folder
either ask for the ``shared_data`` fixture (tests/conftest.py) or carry the ``data`` marker
(``needs_shared_data`` below, on a test or as a module's ``pytestmark``). Either way conftest.py
marks them ``data`` and skips them, with one reason, when the folder is absent:
``pytest -m "not data"`` runs without it.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
HEADS = SHARED_DATA / "heads"
IXI = SHARED_DATA / "ixi"
BIDS_EXAMPLES = SHARED_DATA / "bids-examples-anat"
SKIP_REASON = f"shared test data not found at {SHARED_DATA}"

# A marker, not a skipif: conftest.py turns it into the skip, so the test is also selectable as data.
needs_shared_data = pytest.mark.data


def available() -> bool:
    return SHARED_DATA.is_dir()

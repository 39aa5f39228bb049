"""`deepdefacer` with a fault injected at one write step (tests/test_faults.py).

DEEPDEFACER_TEST_FAULT="kill:PATTERN" (or "term:PATTERN"): once the temporary file of the first
output whose path matches PATTERN is written, and before it is renamed into place, the process
sends itself SIGKILL (or SIGTERM).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys

import deepdefacer.bids.layout_bids  # noqa: F401  (imported so that its names can be patched)
import deepdefacer.bids.outputs  # noqa: F401
import deepdefacer.bids.process  # noqa: F401
import deepdefacer.qc.participant  # noqa: F401
import deepdefacer.qc.render  # noqa: F401
from deepdefacer import files
from deepdefacer.cli.run import main

ACTION, PATTERN = os.environ["DEEPDEFACER_TEST_FAULT"].split(":", 1)
SIGNALS = {"kill": signal.SIGKILL, "term": signal.SIGTERM}
original = files.atomic_output


@contextlib.contextmanager
def faulty_output(final_path):
    with original(final_path) as temporary:
        yield temporary
        if re.search(PATTERN, str(final_path)):
            os.kill(os.getpid(), SIGNALS[ACTION])


for module in list(sys.modules.values()):
    if getattr(module, "atomic_output", None) is original:
        module.atomic_output = faulty_output

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

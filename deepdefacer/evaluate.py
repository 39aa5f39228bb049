"""``python -m deepdefacer.evaluate``: score the model against the reference labels.

A thin entry point: the evaluation is training-side code (``deepdefacer.train.evaluate``, which
needs the ``train`` extra, ``labels/`` and ../shared/data) and is imported only when run.
"""

import sys

if __name__ == "__main__":
    from deepdefacer.train.evaluate import main

    sys.argv[0] = "python -m deepdefacer.evaluate"
    sys.exit(main())

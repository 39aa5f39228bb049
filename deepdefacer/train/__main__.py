"""``python -m deepdefacer.train``: train the face/brain U-Net (the same as ``deepdefacer-train``)."""

import sys

from deepdefacer.train.train import main

sys.argv[0] = "python -m deepdefacer.train"
sys.exit(main())

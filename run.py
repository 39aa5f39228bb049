#!/usr/bin/env python3
"""The BIDS App entry point (BIDS Apps convention): same as the `deepdefacer` command."""
import sys

from deepdefacer.cli.run import main

if __name__ == "__main__":
    sys.exit(main())

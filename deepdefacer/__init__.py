"""Deepdefacer: remove faces from MRI head scans with a 3D U-Net (a BIDS App)."""

from importlib.metadata import PackageNotFoundError, version as _version

# The method lives in deepdefacer.pipeline: a submodule named "deface" would replace this
# function as a package attribute the first time it is imported.
from deepdefacer.pipeline import deface

try:
    __version__ = _version("deepdefacer")
except PackageNotFoundError:  # running from a source tree that is not installed
    from pathlib import Path as _Path

    __version__ = (_Path(__file__).resolve().parents[1] / "version").read_text().strip()

__all__ = ["deface", "__version__"]

"""Deepdefacer: remove faces from MRI head scans with a 3D U-Net (a BIDS App)."""

# The method lives in deepdefacer.pipeline: a submodule named "deface" would replace this
# function as a package attribute the first time it is imported.
from deepdefacer.pipeline import Defacer, deface, deface_with_details, load_defacer
from deepdefacer.provenance import version as _version

__version__ = _version()

__all__ = ["Defacer", "deface", "deface_with_details", "load_defacer", "__version__"]

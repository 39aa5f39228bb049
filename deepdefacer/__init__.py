"""Deepdefacer: remove faces from MRI head scans with a 3D U-Net (a BIDS App)."""

from importlib.metadata import PackageNotFoundError, version as _version

try:
    __version__ = _version("deepdefacer")
except PackageNotFoundError:  # running from a source tree that is not installed
    from pathlib import Path as _Path

    __version__ = (_Path(__file__).resolve().parents[1] / "version").read_text().strip()


def deface(img, defacer=None):
    """Remove the face: ``deface(img) -> (defaced_img, mask_img)`` (see deepdefacer.deface)."""
    from deepdefacer.deface import deface as _deface

    return _deface(img, defacer)


__all__ = ["deface", "__version__"]

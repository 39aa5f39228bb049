"""Ear removal (``--remove-ears``, off by default): the pinnae, with a margin, never near the brain.

Ethics committees ask for it: an ear's shape identifies a person too. The ears are placed by the
atlas guard's own fit of the scan (``deepdefacer.atlas``, the fit that places the new face in
reface mode): mridefacer's two ear regions (``face_teeth_ear_mask``, MIT; each ear with the air
around it), carried onto the atlas by ``python -m deepdefacer.train.make_ear_template`` and shipped
at 3 mm (``models/ears_pydeface_3mm.npz``, a probability), are mapped onto the scan's grid and grown
by ``MARGIN_MM`` (the fit's error, ears larger than the average). Every voxel closer than
``BRAIN_CLEARANCE_MM`` to the guarded brain is kept: the brain guard is the face mask's (the
network's brain and the registered atlas brain), so the skull, the temporal bone's inside and
the scalp next to the brain stay. Without a trusted fit the ears cannot be placed, and the scan
fails with that reason (fail closed): nothing is written as "ears removed" that was not.
"""

from __future__ import annotations

from importlib import resources

import numpy as np
from scipy import ndimage

from deepdefacer.conform import native_box
from deepdefacer.errors import InputError, ModelLoadError
from deepdefacer.mask import guard_allows
from deepdefacer.resample import resample

EARS_NAME = "ears_pydeface_3mm.npz"
EAR_PROBABILITY = 0.5  # where the shipped ear region is
MARGIN_MM = 10.0  # the region grown by this on the scan's grid
# Nothing closer than this to the brain guard is removed. Scalp and skull lateral to the temporal
# lobe are ~8-12 mm thick; the pinna stands outside them. Half of the ear regions' tissue lies
# beyond 19 mm of the brain on mridefacer's average head, and beyond 14 mm on the atlas's (whose
# brain reaches the inner skull).
BRAIN_CLEARANCE_MM = 12.0

_EARS: dict = {}


def load_ears() -> dict:
    """The shipped ear probability (float32, 0-1) on the atlas's grid and its affine, read once."""
    if not _EARS:
        with resources.as_file(resources.files("deepdefacer.models") / EARS_NAME) as path:
            with np.load(path) as z:
                _EARS.update(ears=z["ears"].astype(np.float32) / 255, affine=z["affine"].astype(float))
                labels, count = ndimage.label(_EARS["ears"] >= EAR_PROBABILITY)
                _EARS["regions"] = [labels == label for label in range(1, count + 1)]
    return _EARS


def require_ears() -> None:
    """Read the ear regions now, so that a run that cannot remove ears stops before any scan."""
    try:
        load_ears()
    except OSError as exc:
        raise ModelLoadError(f"--remove-ears cannot read its ear regions: {exc}") from exc


def ear_mask(scanner_to_atlas, affine: np.ndarray, shape, predictions, thresholds,
             name: str = "<image>") -> np.ndarray:
    """The voxels of the ears on the scan's grid (bool): each ear region placed by the fit
    (``scanner_to_atlas``: the scanner's world to the atlas's), grown by ``MARGIN_MM``, where
    every prediction's brain guard (``predictions``: their brain holds the atlas brain too) is
    at least ``BRAIN_CLEARANCE_MM`` away."""
    if scanner_to_atlas is None:
        raise InputError(name, "the ears cannot be removed: the atlas guard's registration of the "
                               "head was not trusted for this scan, so where the ears lie is unknown "
                               "(the scan is not written; without --remove-ears it is defaced)")
    ears = load_ears()
    shape = tuple(int(n) for n in shape)
    ears_world = np.linalg.inv(np.asarray(scanner_to_atlas, float)) @ ears["affine"]
    # Millimetres as the prediction has them: the header's, or plausible ones for a lying header.
    grid = predictions[0].native_affine if predictions else affine
    voxel_mm = np.sqrt((np.asarray(grid)[:3, :3] ** 2).sum(axis=0))
    pad = int(np.ceil(MARGIN_MM / float(np.min(np.abs(np.linalg.svd(ears_world[:3, :3])[1]))))) + 1
    out = np.zeros(shape, bool)
    for region in ears["regions"]:
        low, high = native_box(region, ears_world, affine, shape, pad)
        if np.any(high <= low):
            continue  # this ear lies outside the field of view
        shift = np.eye(4)
        shift[:3, 3] = low
        placed = resample(ears["ears"], ears_world, np.asarray(affine, float) @ shift, high - low,
                          order=1) >= EAR_PROBABILITY
        if not placed.any():
            continue
        grown = ndimage.distance_transform_edt(~placed, sampling=voxel_mm) <= MARGIN_MM
        box = (low, high)
        allowed = np.ones(tuple(high - low), bool)
        for prediction in predictions:
            allowed &= guard_allows(prediction, thresholds.brain, BRAIN_CLEARANCE_MM,
                                    thresholds.edge_mm, box)[low[0]:high[0], low[1]:high[1], low[2]:high[2]]
        out[low[0]:high[0], low[1]:high[1], low[2]:high[2]] |= grown & allowed
    return out

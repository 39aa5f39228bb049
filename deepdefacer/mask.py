"""From the network's probabilities on the cube to the mask of removed voxels on the input grid.

Back to the input grid, then clean up: the face region, grown into its uncertain edges, kept a
margin away from the (guarded) brain, carried out to a field of view that cuts through the face,
and reduced to one connected region. Pure functions on arrays and affines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deepdefacer.conform import native_box, to_native
from deepdefacer.resample import voxel_sizes
from deepdefacer.regions import largest_component


@dataclass(frozen=True)
class Prediction:
    """The network's face and brain probabilities on the canonical cube, and both grids."""

    face: np.ndarray
    brain: np.ndarray
    cube_affine: np.ndarray
    voxel_mm: float
    native_affine: np.ndarray
    native_shape: tuple


def union_of_masks(masks, predictions, thresholds) -> np.ndarray:
    """What any mask removes, less what any prediction's brain guard keeps.

    For a scan whose true size is uncertain (an implausible header), each size estimate
    gives its own prediction and mask. A voxel is removed when any mask removes it, and kept
    when any prediction calls it brain or puts it within the brain margin of its brain.
    """
    mask = np.logical_or.reduce(masks)
    if not mask.any():
        return mask
    where = np.argwhere(mask)
    box = (where.min(axis=0), where.max(axis=0) + 1)
    margin = min(thresholds.brain_margin_mm, thresholds.growth_margin_mm)
    for prediction in predictions:
        mask &= guard_allows(prediction, thresholds.brain, margin, thresholds.edge_mm, box)
    return largest_region_in_box(mask, box)


def face_mask(pred: Prediction, face_threshold: float, brain_threshold: float,
              brain_margin_mm: float, face_dilate_mm: float = 0.0,
              growth_margin_mm: float | None = None, edge_mm: float = 0.0) -> np.ndarray:
    """The mask of removed voxels on the native grid (bool).

    Face = the largest connected region of face probability >= ``face_threshold``, kept
    only farther than ``brain_margin_mm`` from the predicted brain; plus that region grown
    by ``face_dilate_mm``, kept only farther than ``growth_margin_mm`` (default: the brain
    margin) from the brain, so growth fills in the model's uncertain edges in front of and
    below the face but not towards the brain. Every field is mapped to the native grid
    trilinearly (smooth edges at the input's own resolution), only inside the face's box.
    ``edge_mm`` > 0 handles edges: every cube field is held at its edge value for
    ``edge_mm`` beyond the cube, and where the scan's field of view cuts through the face
    the mask is carried out to the cut over its last ``edge_mm`` (``continue_to_edges``),
    under the same brain margin as growth.
    """
    if growth_margin_mm is None:
        growth_margin_mm = brain_margin_mm
    face_cube = largest_region(pred.face, face_threshold)
    region = face_cube >= face_threshold
    grown = None
    if face_dilate_mm > 0 and region.any():
        # Positive within face_dilate_mm of the face region: a distance field, so the
        # grown edge is smooth on fine native grids too.
        grown = (face_dilate_mm - ndimage.distance_transform_edt(~region, sampling=pred.voxel_mm)
                 ).astype(np.float32)
        region = grown >= -pred.voxel_mm
    brain_mm = brain_distance(pred.brain, brain_threshold, pred.voxel_mm)
    (face_cube, region, brain_mm, brain, grown), cube_affine = held_beyond_cube(
        (face_cube, region, brain_mm, pred.brain, grown), pred, edge_mm)
    box = native_box(region | (face_cube >= face_threshold / 2), cube_affine,
                     pred.native_affine, pred.native_shape)

    def native(cube):
        return to_native(cube, cube_affine, pred.native_affine, pred.native_shape, box)

    # Distance (mm) to the predicted brain; 0 outside the box and the cube (never removed).
    brain_mm = native(brain_mm)
    # The interpolated brain probability also keeps what it calls brain on this grid (a cube
    # voxel is 5 mm: the distance alone can miss a thin fold).
    not_brain = native(brain) < brain_threshold
    mask = (native(face_cube) >= face_threshold) & (brain_mm > brain_margin_mm)
    if grown is not None:
        mask |= (native(grown) > 0) & (brain_mm > growth_margin_mm)
    mask &= not_brain
    if edge_mm > 0:
        mask = continue_to_edges(mask, (brain_mm > growth_margin_mm) & not_brain,
                                 voxel_sizes(pred.native_affine), edge_mm)
    return largest_region_in_box(mask, box)


def held_beyond_cube(fields, pred: Prediction, edge_mm: float):
    """``fields`` (cube arrays, or None) each held at its edge value for ``edge_mm`` beyond the
    cube, and the padded cube's affine.

    The cube's outermost voxel centres lie half a voxel inside its faces, and a head filling
    a 256 mm field of view reaches past them (NiChart Subj1_T1 kept the front 4 mm of its nose).
    """
    if edge_mm <= 0:
        return tuple(fields), pred.cube_affine
    pad = int(np.ceil(edge_mm / pred.voxel_mm))
    cube_affine = np.array(pred.cube_affine, dtype=float)
    cube_affine[:3, 3] -= cube_affine[:3, :3] @ np.full(3, pad)
    return tuple(None if a is None else np.pad(a, pad, mode="edge") for a in fields), cube_affine


def guard_allows(pred: Prediction, brain_threshold: float, margin_mm: float, edge_mm: float,
                 box) -> np.ndarray:
    """Where the brain guard of ``pred`` lets a voxel of the native grid go (False outside ``box``)."""
    brain_mm = brain_distance(pred.brain, brain_threshold, pred.voxel_mm)
    (brain_mm, brain), cube_affine = held_beyond_cube((brain_mm, pred.brain), pred, edge_mm)

    def native(cube):
        return to_native(cube, cube_affine, pred.native_affine, pred.native_shape, box)

    return (native(brain_mm) > margin_mm) & (native(brain) < brain_threshold)


def continue_to_edges(mask: np.ndarray, allowed: np.ndarray, voxel_mm, edge_mm: float) -> np.ndarray:
    """Carry the mask out to each side of the field of view over its last ``edge_mm``.

    A scan cut through the face (at the nose, the mouth or the chin) ends in an
    artificial edge; the network's face probability fades over the last ~10 mm before
    it, so the nose or mouth lying in the outermost slices was kept (the 6 mm IXI002
    PDw/T2w, NiChart Subj1_T1). Each of the outermost slices of a side takes the mask of
    the first slice inside that band, where ``allowed`` (the brain guard) permits.
    """
    out = mask.copy()
    for axis, size in enumerate(mask.shape):
        band = int(np.ceil(edge_mm / float(voxel_mm[axis])))
        if band < 1 or 2 * band >= size:
            continue
        for edge, source in ((slice(0, band), band), (slice(size - band, size), size - band - 1)):
            where = [slice(None)] * 3
            where[axis] = edge
            where = tuple(where)
            inner = np.take(mask, [source], axis=axis)
            out[where] |= inner & allowed[where]
    return out



def largest_region(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Zero the probability outside the largest connected region above threshold."""
    region = prob >= threshold
    if not region.any():
        return np.zeros_like(prob)
    keep = largest_component(region)
    if np.array_equal(keep, region):
        return prob
    # Keep the soft edge around the kept region, so the trilinear map back stays smooth.
    keep = ndimage.binary_dilation(keep, iterations=1)
    return np.where(keep, prob, 0.0).astype(np.float32)

def brain_distance(brain_prob: np.ndarray, threshold: float, voxel_mm: float) -> np.ndarray:
    """Distance (mm) from each cube voxel to the predicted brain (0 inside it).

    A distance field, unlike a binary mask, interpolates smoothly onto fine native
    grids, so a margin holds at the input's own resolution.
    """
    brain = brain_prob >= threshold
    if not brain.any():
        return np.full(brain_prob.shape, 1e3, np.float32)
    return ndimage.distance_transform_edt(~brain, sampling=voxel_mm).astype(np.float32)




def largest_region_in_box(mask: np.ndarray, box) -> np.ndarray:
    """The largest connected region of the part of ``mask`` inside ``box`` (the mask as it is
    when that part has at most one)."""
    lo, hi = box
    if np.any(hi <= lo) or not mask.any():
        return mask
    inside = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    kept = largest_component(mask[inside])
    if np.array_equal(kept, mask[inside]):
        return mask
    out = np.zeros_like(mask)
    out[inside] = kept
    return out

"""Is the removed region plausible for this head, and did it stay off the brain?

No brain segmentation is run here (QC must stay cheap and contrast-agnostic);
the brain's front-lower boundary is located from the face itself: above the
nasion (the top of the nose ridge found by the face check on the original) and
deeper than the scalp and skull, there is only brain. Removing tissue there is
what "the mask reached the brain" means in practice.

Distances are in standard-head mm (see facecheck.STANDARD_HEAD_WIDTH_MM).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from deepdefacer.qc.facecheck import FaceEvidence

# Scalp plus skull at the forehead is 10-15 mm in adults; deeper than this,
# above the nasion, is brain (frontal lobe).
BRAIN_DEPTH_MM = 15.0
# The frontal lobes sit on the orbital roofs, a little above the nasion.
BRAIN_ABOVE_NASION_MM = 10.0
# More removed tissue than this in the brain zone is flagged (ml of a standard head).
BRAIN_REMOVED_MAX_ML = 1.0
# Share of the head's volume a face mask removes: pydeface's mask removes 2.7-9.5%
# of the head on heads/ and NiChart, a 35 mm slab 1.7-7.9% (docs/qc.md); the range
# is wide so that only masks that are clearly wrong are flagged.
REMOVED_FRACTION_RANGE = (0.005, 0.30)


FRONTMOST_REACH_MM = 5.0


def frontmost_left(head: np.ndarray, removed: np.ndarray, voxel_mm: float, scale: float = 1.0) -> bool:
    """True when nothing is removed within FRONTMOST_REACH_MM (standard-head mm) of any of
    the head's frontmost voxels (the last two coronal layers; axis 1 runs to anterior).

    Every frontmost voxel counts, not one: a head cut by the field of view at the front
    has a whole layer at the edge, and a mask touching any of it is not flagged.
    """
    front_y = np.flatnonzero(head.any(axis=(0, 2)))
    if front_y.size == 0:
        return False
    y_max = int(front_y[-1])
    reach = max(1, int(np.ceil(FRONTMOST_REACH_MM * scale / voxel_mm)))
    low = max(y_max - 1 - reach, 0)
    near = ndimage.maximum_filter(removed[:, low:, :].astype(np.uint8), size=2 * reach + 1) > 0
    front = head[:, low:, :].copy()
    front[:, : max(y_max - 1 - low, 0), :] = False
    return not near[front].any()


def check_mask(head: np.ndarray, removed: np.ndarray, voxel_mm: float, original_face: FaceEvidence) -> dict:
    """Mask plausibility and brain check on the QC grid (RAS, isotropic).

    head: the original head (bool); removed: voxels the mask removes (bool);
    original_face: the face check on the original's front depth map, which
    locates the nose ridge (rows are superior to inferior, top row = highest z).
    Returns {"flags": [reason, ...], "notes": [...], metrics...}.
    """
    flags: list[str] = []
    notes: list[str] = []
    scale = original_face.scale if original_face.head_width_mm > 0 else 1.0
    voxel_ml = voxel_mm ** 3 / 1000.0
    head_ml = float(head.sum()) * voxel_ml
    removed_head = removed & head
    removed_ml = float(removed_head.sum()) * voxel_ml
    fraction = removed_ml / head_ml if head_ml > 0 else 0.0
    metrics = {"head_ml": round(head_ml, 1), "removed_ml": round(removed_ml, 1),
               "removed_fraction": round(fraction, 4), "brain_removed_ml": None}

    low, high = REMOVED_FRACTION_RANGE
    if removed_ml == 0:
        flags.append("mask removes nothing from the head")
    elif fraction < low:
        flags.append(f"mask removes only {100 * fraction:.1f}% of the head (expected {100 * low:.1f}-{100 * high:.0f}%)")
    elif fraction > high:
        flags.append(f"mask removes {100 * fraction:.0f}% of the head (expected at most {100 * high:.0f}%)")

    if removed_head.any():
        head_centre = np.argwhere(head).mean(axis=0)
        removed_points = np.argwhere(removed_head)
        # A face mask lies in front of the head's centre; one behind it was placed on the wrong side.
        behind = float(np.mean(removed_points[:, 1] < head_centre[1]))
        metrics["removed_behind_centre_fraction"] = round(behind, 3)
        metrics["removed_centroid_anterior_mm"] = round(
            float(removed_points[:, 1].mean() - head_centre[1]) * voxel_mm * scale, 1)
        if behind > 0.10:
            flags.append(f"{100 * behind:.0f}% of the removed region lies behind the head's centre "
                         "(a face mask lies in front)")

    if original_face.face_present and removed_head.any() and frontmost_left(head, removed, voxel_mm, scale):
        # The frontmost point of a head with a face is the nose tip (or the chin): a defacing
        # that keeps it has left part of the face, even when no nose ridge is left to see.
        flags.append(f"the head's frontmost point (nose tip or chin) is left in place: nothing removed "
                     f"within {FRONTMOST_REACH_MM:.0f} mm of it")

    if original_face.face_present and removed_head.any():
        brain_removed = _removed_in_brain_zone(head, removed_head, voxel_mm, scale, original_face)
        brain_removed_ml = float(brain_removed) * voxel_ml
        metrics["brain_removed_ml"] = round(brain_removed_ml, 2)
        # Compared in standard-head volume, so a header with the wrong voxel size still counts.
        if brain_removed_ml * scale ** 3 > BRAIN_REMOVED_MAX_ML:
            flags.append(f"removed region reaches the brain: {brain_removed_ml:.1f} ml removed above the nasion "
                         f"and deeper than {BRAIN_DEPTH_MM:.0f} mm")
    elif not original_face.face_present:
        notes.append("brain check skipped: no face found on the original to locate the nasion")
    return {"flags": flags, "notes": notes, **metrics}


def _removed_in_brain_zone(head, removed_head, voxel_mm: float, scale: float, face: FaceEvidence) -> int:
    """Count removed voxels above the nasion and deeper than scalp and skull (brain)."""
    # Front depth map rows run from the top of the grid (highest z) down.
    nasion_z = head.shape[2] - 1 - face.nose_top_row
    lowest_z = max(int(np.ceil(nasion_z + BRAIN_ABOVE_NASION_MM / (voxel_mm * scale))), 0)
    candidates = removed_head.copy()
    candidates[:, :, :lowest_z] = False
    if not candidates.any():
        return 0
    # The depth test only needs the surface within BRAIN_DEPTH_MM of a candidate,
    # so the distance transform runs on a padded box around them (4x faster).
    # Enclosed air and dark fluid (sinuses, vitreous) are inside the head: filled,
    # they do not make the orbitofrontal cortex above them look shallow.
    pad = int(np.ceil(BRAIN_DEPTH_MM / (voxel_mm * scale))) + 2
    points = np.argwhere(candidates)
    lower = np.maximum(points.min(axis=0) - pad, 0)
    upper = np.minimum(points.max(axis=0) + pad + 1, head.shape)
    box = tuple(slice(a, b) for a, b in zip(lower, upper))
    depth_std = ndimage.distance_transform_edt(ndimage.binary_fill_holes(head[box])) * voxel_mm * scale
    return int((candidates[box] & (depth_std > BRAIN_DEPTH_MM)).sum())

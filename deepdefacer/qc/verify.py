"""Is the face really gone? The check every defaced scan must pass before it counts as defaced.

    verify_defacing(original_img, defaced_img, mask) -> Verification

A defacer's worst outcome is a face shipped as "defaced", so the face check of the QC
(``deepdefacer.qc.facecheck``: the nose ridge on the head's front surface) is run on every
scan as part of the job, and a scan that fails it is a failed scan. It must not trust the
header's orientation (the geometry it checks may be the very thing that went wrong), so when the
header's front shows no face on the original, the original is looked at from every side with
every side up, and the defaced scan is judged in each view in which the original shows a face.
Only those views: looked at from every side, a defaced head shows ridges that are not noses (the
cut's edge and the brow seen rotated by 90 degrees fired on 6 of 12 defaced heads when tried).
Rates and cost: docs/reliability.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from deepdefacer.qc.facecheck import (RIDGE_MIN_LENGTH_MM, FaceEvidence, face_evidence,
                                      proper_rotations, rotated)
from deepdefacer.qc.render import depth_map
from deepdefacer.qc.volume import RasVolume, ras_intensity, ras_volume, with_threshold

HEADER_VIEW = ((0, 1, 2), (False, False, False))
# The same front seen upside down: a face upside down is still a face, and the two views of
# one face fire together (every original measured).
UPSIDE_DOWN = ((0, 1, 2), (True, False, True))
# On an original, a midline ridge this long (standard-head mm) is taken for its nose: shorter than
# the QC's nose (RIDGE_MIN_LENGTH_MM, set so that defaced heads do not show one), so that a flat
# nose (IXI575: 12 mm) or a coarse block's (the 64^3 crop: 9 mm) is found too. The defaced scan is
# then judged against that nose: no ridge of REMNANT_FRACTION of its length may be left, nor a
# nose by the QC's measure.
ORIGINAL_MIN_RIDGE_MM = 9.0
REMNANT_FRACTION = 0.75


@dataclass
class Verification:
    verified: bool
    reason: str  # why the scan is failed, or what was checked
    face_before: FaceEvidence  # the original in its face view
    face_after: FaceEvidence | None  # the defaced scan in that view (None: nothing checked)
    view: tuple  # (permutation, flips) of the face view; HEADER_VIEW when the header's front
    removed_voxels: int
    # The original and the defaced scan on the QC grid (the defaced one at the original's head
    # threshold; None when not checked), for the QC figures to reuse.
    volumes: tuple = field(default=(None, None), repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"Verified": self.verified, "Reason": self.reason,
                "FaceView": "header" if self.view == HEADER_VIEW else view_name(self.view),
                "FaceBefore": self.face_before.reason,
                "FaceAfter": None if self.face_after is None else self.face_after.reason}


def verify_defacing(original_img, defaced_img, mask) -> Verification:
    """Fail a defacing whose mask removes nothing, whose original shows no face to compare
    with, or whose output still shows a face."""
    removed = int(np.count_nonzero(np.asanyarray(mask)))
    original = ras_volume(original_img)
    before, views = face_views(original)
    if removed == 0:
        return Verification(False, "the mask removes nothing: the face was not found", before,
                            None, views[0], removed, (original, None))
    if not before.face_present:
        # The check is blind on this scan (a field of view that stops above the nose, a cropped
        # block, slice artefacts), so it cannot tell a defaced scan from one with its face.
        return Verification(False, f"the face check finds no face on the original either "
                                   f"({before.reason}), so it cannot confirm the defacing",
                            before, None, views[0], removed, (original, None))
    # Two surfaces: at the original's head threshold (the defaced scan seen exactly as the
    # original was, so the two differ only by the mask) and at its own (what anyone rendering the
    # shared file sees: removing the face moves the threshold, and a remnant can show on one
    # surface only, docs/qc.md).
    intensity, voxel_mm = ras_intensity(defaced_img, original.voxel_mm)
    surfaces = [same_shape(with_threshold(intensity, voxel_mm, threshold), original.intensity.shape)
                for threshold in (original.threshold, None)]
    remnant_mm = min(RIDGE_MIN_LENGTH_MM, REMNANT_FRACTION * before.nose_length_mm)
    after, view = face_left(surfaces, views, remnant_mm)
    volumes = (original, surfaces[0])
    if after.face_present:
        return Verification(False, f"face still present after defacing: {after.reason}",
                            before, after, view, removed, volumes)
    return Verification(True, f"no face left ({after.reason})", before, after, view, removed,
                        volumes)


def face_views(volume: RasVolume) -> tuple[FaceEvidence, list]:
    """The views in which a head shows its face, and the evidence in the first.

    The header's front when it shows the face (upright or upside down). Otherwise every one of
    the 24 rotations that shows a face: seen rotated, an original can show ridges that are not
    its nose (the brow, the lips: 1 to 3 extra views fired on half the heads measured), and
    the defaced scan must pass in each, since which one is the face is not known.
    """
    evidence = {}
    for view in (HEADER_VIEW, UPSIDE_DOWN):
        evidence[view] = _evidence(volume, view, min_length_mm=ORIGINAL_MIN_RIDGE_MM)
        if evidence[view].face_present:
            return evidence[view], [HEADER_VIEW]
    evidence.update({view: _evidence(volume, view, min_length_mm=ORIGINAL_MIN_RIDGE_MM)
                     for view in proper_rotations() if view not in evidence})
    found = sorted((view for view, e in evidence.items() if e.face_present),
                   key=lambda view: (-evidence[view].nose_length_mm, -evidence[view].nose_drop_mm))
    if not found:
        return evidence[HEADER_VIEW], [HEADER_VIEW]
    return evidence[found[0]], found


def face_left(surfaces, views, min_length_mm: float) -> tuple[FaceEvidence, tuple]:
    """The face check on each surface of the defaced scan in each of ``views``, upright and
    upside down, a ridge of ``min_length_mm`` counting as a nose left. A face on any of them
    counts: returns it and its view, else the evidence of the first view."""
    first = None
    for view in views:
        for volume in surfaces:
            for twin in (False, True):
                evidence = _evidence(volume, view, upside_down=twin, min_length_mm=min_length_mm)
                if evidence.face_present:
                    return evidence, view
                first = first or (evidence, view)
    return first


def _evidence(volume: RasVolume, view, upside_down: bool = False,
              min_length_mm: float = RIDGE_MIN_LENGTH_MM) -> FaceEvidence:
    permutation, flips = view
    intensity = rotated(volume.intensity, permutation, flips)
    head = rotated(volume.head, permutation, flips)
    if upside_down:
        intensity, head = (rotated(a, *UPSIDE_DOWN) for a in (intensity, head))
    return face_evidence(depth_map(RasVolume(intensity, volume.voxel_mm, head, volume.threshold),
                                   "front"), volume.voxel_mm, min_length_mm)


def same_shape(volume: RasVolume, shape) -> RasVolume:
    """Two images of one scanner grid can resample to grids a voxel apart at the edge."""
    if volume.intensity.shape == shape:
        return volume

    def fit(array, fill):
        out = np.full(shape, fill, dtype=array.dtype)
        common = tuple(slice(0, min(a, b)) for a, b in zip(shape, array.shape))
        out[common] = array[common]
        return out

    return RasVolume(fit(volume.intensity, 0), volume.voxel_mm, fit(volume.head, False),
                     volume.threshold)


def view_name(view) -> str:
    """Where the face points and where the top of the head is, in the array's axes."""
    permutation, flips = view

    def axis(index):
        return ("-" if flips[index] else "+") + "ijk"[permutation[index]]

    return f"the face along {axis(1)}, the top of the head along {axis(2)} of the array"

"""Is a face still there? Geometric evidence from the front depth map.

Why geometry and not a face detector: on grey surface renders OpenCV's Haar
cascade fires on most originals but also on the face-shaped hole that defacing
leaves, and dlib/MTCNN rarely fire at all. What defacing reliably destroys is
relief: the nose is a narrow ridge standing 10-30 mm in front of the cheeks on
both sides, and the eye sockets are recesses on both sides of that ridge. A hole
or a flat cut is the opposite shape (its middle is deeper than its sides), so it
cannot pass the ridge test whatever its outline looks like.

All distances are scaled by the head's width (`STANDARD_HEAD_WIDTH_MM` / width),
so a scan whose header states the wrong voxel size (conformed 64^3 volumes) or a
child's head is judged on the same shape.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage

STANDARD_HEAD_WIDTH_MM = 150.0

# Thresholds in standard-head millimetres (measured: see docs/qc.md).
# The nose stands in front of the surface at EVERY lateral offset in this range:
# a real face falls away from the nose all the way out to the cheeks, while
# a defacing cut that exposes the nasal septum between two air cavities comes
# back to the septum's level a few cm out, at the cut surface (measured: taking
# the best offset instead of the worst let 29% of cut heads through).
RIDGE_OFFSETS_MM = (14.0, 20.0, 26.0, 32.0, 38.0)
RIDGE_MIN_DROP_MM = 6.0  # the ridge stands this far in front of both sides
RIDGE_MIN_LENGTH_MM = 13.5  # vertical run of the ridge (the nasal dorsum is 35-50 mm)
# A nose is a bump ON the head's curvature: the forehead seen from the front also
# falls away on both sides, but smoothly, so a parabola through the surface at
# these lateral offsets predicts it, while it misses the nose by 10-30 mm.
CURVATURE_OFFSETS_MM = (18.0, 30.0)
BUMP_MIN_MM = 4.0
# A nose's front is the face's frontmost point, or close to it (a chin or brow may
# stand a few mm further forward). What remains of the nasal cavity behind a
# defacing cut can be ridge-shaped too, but it lies 30-50 mm behind the forehead.
NOSE_MAX_RECESS_MM = 15.0
MIDLINE_BAND = 0.12  # the ridge lies within this fraction of the head width of the midline
# Near the crown the skull's cross-section is small, so seen from the front its
# curvature looks like a ridge too; the face lies where the head is nearly full width.
FACE_ROW_MIN_WIDTH = 0.75


@dataclass
class FaceEvidence:
    face_present: bool
    reason: str
    nose_length_mm: float  # vertical extent of the midline ridge, standard-head mm
    nose_drop_mm: float  # how far the ridge stands in front of both sides, at its peak, standard-head mm
    nose_row: int  # where the ridge stands out most, in the front depth map (-1 when none)
    nose_column: int
    nose_top_row: int  # the ridge's upper end, near the nasion (-1 when none)
    nose_recess_mm: float  # how far the ridge's front lies behind the face's frontmost point
    nose_projection_mm: float  # how far the ridge's front stands ahead of its upper end (tip vs nasion)
    head_width_mm: float
    scale: float  # standard-head mm per scan mm

    def to_dict(self) -> dict:
        return asdict(self)


def _shift_columns(image: np.ndarray, offset: int) -> np.ndarray:
    """out[:, c] = image[:, c + offset], NaN where that falls outside."""
    out = np.full_like(image, np.nan)
    width = image.shape[1]
    if offset >= 0:
        out[:, : width - offset] = image[:, offset:]
    else:
        out[:, -offset:] = image[:, : width + offset]
    return out


def row_spans_px(depth_mm: np.ndarray) -> np.ndarray:
    """Left-right extent (pixels) of the head's front silhouette on every row (0 if none)."""
    hit = np.isfinite(depth_mm)
    columns = np.arange(hit.shape[1])
    first = np.where(hit, columns, hit.shape[1]).min(axis=1)
    last = np.where(hit, columns, -1).max(axis=1)
    return np.maximum(last - first + 1, 0)


def head_width_mm(depth_mm: np.ndarray, pixel_mm: float) -> float:
    """Left-right width of the head's front silhouette (95th percentile over rows)."""
    spans = row_spans_px(depth_mm)
    spans = spans[spans > 0]
    return float(np.percentile(spans, 95)) * pixel_mm if spans.size else 0.0


def lateral_drop(protrusion: np.ndarray, offsets_px) -> np.ndarray:
    """How far each pixel stands in front of the surface on BOTH sides, at EVERY
    given lateral offset (the smallest of those drops); -inf where a side is unknown."""
    worst = np.full(protrusion.shape, np.inf)
    for offset in offsets_px:
        left = protrusion - _shift_columns(protrusion, -offset)
        right = protrusion - _shift_columns(protrusion, offset)
        both = np.fmin(left, right)
        both = np.where(np.isnan(left) | np.isnan(right), -np.inf, both)
        worst = np.minimum(worst, both)
    return worst


def bump_above_curvature(protrusion: np.ndarray, inner_px: int, outer_px: int) -> np.ndarray:
    """How far each pixel stands in front of the even parabola through the row's
    surface at +-inner and +-outer pixels; -inf where any of them is unknown."""
    inner = (_shift_columns(protrusion, -inner_px) + _shift_columns(protrusion, inner_px)) / 2
    outer = (_shift_columns(protrusion, -outer_px) + _shift_columns(protrusion, outer_px)) / 2
    # a + c*x^2 through (inner, m1) and (outer, m2), evaluated at x = 0
    baseline = (inner * outer_px ** 2 - outer * inner_px ** 2) / float(outer_px ** 2 - inner_px ** 2)
    bump = protrusion - baseline
    return np.where(np.isnan(bump), -np.inf, bump)


def face_evidence(depth_mm: np.ndarray, pixel_mm: float,
                  min_length_mm: float = RIDGE_MIN_LENGTH_MM) -> FaceEvidence:
    """Judge a front depth map (see render.depth_map(volume, 'front')): a nose is a midline
    ridge at least ``min_length_mm`` long (standard-head mm)."""
    width_mm = head_width_mm(depth_mm, pixel_mm)
    if width_mm <= 0:
        return FaceEvidence(False, "no head found in the image", 0.0, 0.0, -1, -1, -1, 0.0, 0.0, 0.0, 1.0)
    scale = STANDARD_HEAD_WIDTH_MM / width_mm
    pixel_std = pixel_mm * scale  # standard-head mm per pixel
    protrusion_std = -depth_mm * scale  # larger = further forward

    offsets = sorted({max(1, int(round(o / pixel_std))) for o in RIDGE_OFFSETS_MM})
    drop = lateral_drop(protrusion_std, offsets)
    inner, outer = (max(1, int(round(o / pixel_std))) for o in CURVATURE_OFFSETS_MM)
    bump = bump_above_curvature(protrusion_std, inner, outer)

    hit = np.isfinite(depth_mm)
    columns = np.arange(depth_mm.shape[1])
    midline = float(np.average(columns, weights=hit.sum(axis=0)))
    band = np.abs(columns - midline) <= MIDLINE_BAND * width_mm / pixel_mm
    face_rows = row_spans_px(depth_mm) * pixel_mm >= FACE_ROW_MIN_WIDTH * width_mm
    ridge = (drop >= RIDGE_MIN_DROP_MM) & (bump >= BUMP_MIN_MM) & band[None, :] & face_rows[:, None]

    labels, count = ndimage.label(ridge, structure=np.ones((3, 3)))
    frontmost = float(np.nanmax(np.where(face_rows[:, None], protrusion_std, np.nan))) if face_rows.any() else 0.0
    best = (0.0, 0.0, -1, -1, -1, 0.0, 0.0)
    for index, region in enumerate(ndimage.find_objects(labels), start=1):
        rows = region[0]
        length = (rows.stop - rows.start) * pixel_std
        inside = labels[region] == index
        region_drop = np.where(inside, drop[region], -np.inf)
        peak = np.unravel_index(int(np.argmax(region_drop)), inside.shape)
        front = float(np.nanmax(np.where(inside, protrusion_std[region], np.nan)))
        recess = frontmost - front
        projection = front - float(np.nanmean(np.where(inside[0], protrusion_std[region][0], np.nan)))
        candidate = (length, float(region_drop[peak]), rows.start + peak[0], region[1].start + peak[1], rows.start,
                     recess, projection)
        if recess <= NOSE_MAX_RECESS_MM and candidate[:2] > best[:2]:
            best = candidate
    length, peak_drop, row, column, top_row, recess, projection = best
    present = length >= min_length_mm
    if present:
        reason = (f"nose ridge at the midline, {length:.0f} mm long, standing {peak_drop:.0f} mm in front of "
                  f"both cheeks")
    elif length > 0:
        reason = f"no nose: longest midline ridge {length:.0f} mm (a nose is >= {min_length_mm:.0f} mm)"
    else:
        reason = "no nose: no midline ridge in front of the cheeks"
    return FaceEvidence(bool(present), reason, round(length, 1), round(peak_drop, 1), int(row), int(column),
                        int(top_row), round(recess, 1), round(projection, 1), round(width_mm, 1), round(scale, 3))


def check_image(img) -> FaceEvidence:
    """The face check on one image (any orientation, contrast or resolution)."""
    # Imported here: the array functions above need neither loading nor rendering.
    from deepdefacer.qc.render import depth_map
    from deepdefacer.qc.volume import ras_volume

    volume = ras_volume(img)
    return face_evidence(depth_map(volume, "front"), volume.voxel_mm)


def proper_rotations() -> list[tuple[tuple[int, int, int], tuple[bool, bool, bool]]]:
    """The 24 axis-aligned rotations of an array as (axis permutation, flips).

    Mirror images are left out: a nose ridge looks the same mirrored, so the 24 rotations
    cover all 48 axis orders an image can be stored in.
    """
    rotations = []
    for permutation in itertools.permutations(range(3)):
        for flips in itertools.product((False, True), repeat=3):
            matrix = np.zeros((3, 3))
            for row, (axis, flip) in enumerate(zip(permutation, flips)):
                matrix[row, axis] = -1.0 if flip else 1.0
            if np.linalg.det(matrix) > 0:
                rotations.append((permutation, flips))
    return rotations


def rotated(array: np.ndarray, permutation, flips) -> np.ndarray:
    """A view of ``array`` with its axes permuted and flipped (no copy)."""
    out = np.transpose(array, permutation)
    for axis, flip in enumerate(flips):
        if flip:
            out = np.flip(out, axis)
    return out


def face_evidence_any_orientation(volume) -> tuple[FaceEvidence, tuple]:
    """The face check looking at the head from every side, with every side up.

    A header may lie about which way the head faces (orientation codes 0, a wrong axis
    order), so the gate cannot take "front" from it. Returns the strongest evidence over the
    24 views and the view's (permutation, flips); the header's own front view comes first, so
    its evidence is the one reported when it finds the face.
    """
    from deepdefacer.qc.render import depth_map
    from deepdefacer.qc.volume import RasVolume

    best, best_view = None, None
    for permutation, flips in proper_rotations():
        view = RasVolume(rotated(volume.intensity, permutation, flips), volume.voxel_mm,
                         rotated(volume.head, permutation, flips), volume.threshold)
        evidence = face_evidence(depth_map(view, "front"), volume.voxel_mm)
        if evidence.face_present:
            return evidence, (permutation, flips)
        if best is None or (evidence.nose_length_mm, evidence.nose_drop_mm) > \
                (best.nose_length_mm, best.nose_drop_mm):
            best, best_view = evidence, (permutation, flips)
    return best, best_view

"""Conform any head scan onto the model's canonical grid, and map results back.

The canonical grid is a cube of ``size`` voxels of ``voxel_mm`` each, with its axes
along scanner RAS (so any of the 48 axis orders, and oblique affines, land the same
way), centred left-right and front-back on the head and hanging from the top of the
head. A fixed physical voxel size keeps heads at one scale for the network whatever
the field of view; the top-of-head anchor keeps the face inside the cube for scans
that include the neck.

Everything here is a pure function of arrays and affines.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from deepdefacer.regions import largest_component
from deepdefacer.resample import block_reduce, resample


@dataclass(frozen=True)
class GridPlan:
    """The canonical grid a model was trained on (stored in its model card)."""

    size: int = 64
    voxel_mm: float = 4.0
    top_margin_mm: float = 12.0

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.size)


@dataclass
class Conformed:
    """An image on the canonical grid and the affine of that grid (voxel -> RAS mm)."""

    array: np.ndarray
    affine_ras: np.ndarray


def background_intensity(data: np.ndarray) -> float:
    """The air's intensity: 0, unless the scan's background is negative (a signed 8-bit scan
    whose air is stored at -128), then the median over the array's outermost faces.

    Removed voxels take it (filled with 0 there, the face became a mid-grey block that surface
    renders, and the face check, read as the face's surface), and the QC's head threshold
    counts from it."""
    faces = [np.take(data, index, axis=axis).ravel() for axis in range(3) for index in (0, -1)]
    return min(0.0, float(np.median(np.concatenate(faces))))


def head_mask_coarse(data: np.ndarray) -> np.ndarray:
    """Foreground of a (coarse) head image: the largest bright connected region."""
    smooth = ndimage.gaussian_filter(data.astype(np.float32, copy=False), 1.0)
    finite = smooth[np.isfinite(smooth)]
    low, high = np.percentile(finite, [1, 99.5]) if finite.size else (0.0, 0.0)
    if high <= low:
        return np.zeros(data.shape, bool)
    return largest_component(smooth > low + 0.12 * (high - low))


def world_extent(affine: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """RAS (min, max) of the centres of a grid's corner voxels."""
    corners = np.array(np.meshgrid(*[(0, n - 1) for n in shape[:3]], indexing="ij")).reshape(3, -1)
    ras = np.asarray(affine)[:3, :3] @ corners + np.asarray(affine)[:3, 3:4]
    return ras.min(axis=1), ras.max(axis=1)


def head_box_ras(data: np.ndarray, affine: np.ndarray, step_mm: float = 4.0):
    """(min, max) corners in RAS mm of the head.

    Found on a coarse grid anchored in world coordinates (multiples of ``step_mm``),
    sampled from the scan: the same points whatever the scan's axis order, so the
    box, and with it the canonical cube, does not depend on how the scan was stored.
    """
    low, high = world_extent(affine, data.shape)
    origin = np.floor(low / step_mm) * step_mm
    shape = np.floor((high - origin) / step_mm).astype(int) + 1
    grid = np.diag([step_mm] * 3 + [1.0])
    grid[:3, 3] = origin
    coarse = resample(data, affine, grid, shape, order=1)
    mask = head_mask_coarse(coarse)
    if not mask.any():
        return low, high
    ijk = np.array(np.nonzero(mask), dtype=float)
    return origin + (ijk.min(axis=1) - 0.5) * step_mm, origin + (ijk.max(axis=1) + 0.5) * step_mm


# The smallest head is a newborn's, ~120 mm front to back. A "head" smaller than this in
# every direction means the header's voxel sizes are wrong (e.g. a 4 mm conformed volume
# stored with 1 mm voxels), not a tiny head.
MIN_HEAD_MM = 100.0
ASSUMED_HEAD_MM = 200.0
# One axis alone can give the lie away: a head under MIN_HEAD_MM wide (left-right: fields of
# view are often tight there, but never narrower than a head), or a whole head (not cut by the
# field of view) that short along another axis (a 2 mm head stored as 1 mm is ~85 mm wide), or a
# head wider than MAX_WIDTH_MM or longer than MAX_HEAD_MM along any axis (a 1 mm head stored as
# 2 mm). On every real scan here the head's box is 156-216 mm wide (left-right) and at most
# 256 mm along any axis (docs/reliability.md). Such a head is scaled so that its width is
# TYPICAL_WIDTH_MM: the width is the axis a field of view cuts least.
MAX_WIDTH_MM = 260.0
MAX_HEAD_MM = 320.0
TYPICAL_WIDTH_MM = 180.0
# A head box within this of the field of view's edge is taken to be cut there (the box is
# found on a 4 mm grid).
FOV_EDGE_MM = 6.0


def plausible_affine(data: np.ndarray, affine: np.ndarray, box=None):
    """The affine to use for the model, and the scale applied to the header's voxel sizes.

    When the head would be implausibly small in every direction, the voxel sizes are scaled
    (about the head's centre) so that it spans ``ASSUMED_HEAD_MM``; when it is implausible
    along one axis (``implausible_extent``), so that its width is ``TYPICAL_WIDTH_MM``. The
    output keeps the original header. ``box``: ``head_box_ras(data, affine)`` when the caller
    already has it.
    """
    box_min, box_max = head_box_ras(data, affine) if box is None else box
    extent = float(np.max(box_max - box_min))
    if extent < MIN_HEAD_MM:
        scale = ASSUMED_HEAD_MM / max(extent, 1.0)
    elif implausible_extent(box_min, box_max, world_extent(affine, data.shape)):
        scale = TYPICAL_WIDTH_MM / max(float(box_max[0] - box_min[0]), 1.0)
    else:
        return np.asarray(affine, float), 1.0
    centre = (box_min + box_max) / 2.0
    about_centre = np.eye(4)
    about_centre[:3, :3] *= scale
    about_centre[:3, 3] = centre - scale * centre
    return about_centre @ np.asarray(affine, float), scale


def implausible_extent(box_min, box_max, field_of_view) -> str | None:
    """Why a head's RAS box cannot be a head at the header's voxel sizes, or None."""
    extent = np.asarray(box_max, float) - np.asarray(box_min, float)
    fov_min, fov_max = field_of_view
    whole = (np.asarray(box_min) > fov_min + FOV_EDGE_MM) & (np.asarray(box_max) < fov_max - FOV_EDGE_MM)
    for axis, name in enumerate(("left-right", "front-back", "top-bottom")):
        if (whole[axis] or axis == 0) and extent[axis] < MIN_HEAD_MM:
            return f"the whole head is only {extent[axis]:.0f} mm {name}"
        if extent[axis] > MAX_HEAD_MM or (axis == 0 and extent[axis] > MAX_WIDTH_MM):
            return f"the head is {extent[axis]:.0f} mm {name}"
    return None


def cube_affine(box_min: np.ndarray, box_max: np.ndarray, plan: GridPlan) -> np.ndarray:
    """Affine of the canonical cube for a head occupying the RAS box."""
    side = plan.size * plan.voxel_mm
    centre = (np.asarray(box_min) + np.asarray(box_max)) / 2.0
    # The cube hangs from the top of the head: scans with a long neck keep the face
    # inside, and a slab (cropped field of view) sits where the top of a head would.
    centre[2] = box_max[2] + plan.top_margin_mm - side / 2.0
    origin = centre - (plan.size - 1) / 2.0 * plan.voxel_mm
    affine = np.diag([plan.voxel_mm] * 3 + [1.0])
    affine[:3, 3] = origin
    return affine


def normalise(cube: np.ndarray) -> np.ndarray:
    """Robust intensity scaling: background to 0, bright head tissue to about 1.

    Percentiles rather than min-max: one hot voxel (vessel, artefact) or a
    background offset must not change the scaling.
    """
    low = float(np.percentile(cube, 2))
    head = cube[cube > low + 0.05 * (float(cube.max()) - low)]
    high = float(np.percentile(head, 98)) if head.size else low + 1.0
    if high <= low:
        return np.zeros_like(cube, dtype=np.float32)
    return np.clip((cube - low) / (high - low), 0.0, 1.5).astype(np.float32)


def conform(data: np.ndarray, affine: np.ndarray, plan: GridPlan, box=None) -> Conformed:
    """Native scan -> normalised canonical cube (RAS axes, fixed voxel size).

    ``box``: ``head_box_ras(data, affine)`` when the caller already has it (it is ~0.1 s of
    a 1 mm scan's ~0.6 s without the atlas guard).
    """
    data = np.asarray(data, dtype=np.float32)
    box_min, box_max = head_box_ras(data, affine) if box is None else box
    target = cube_affine(box_min, box_max, plan)
    reduced, reduced_affine = block_reduce(data, affine, plan.voxel_mm)
    cube = resample(reduced, reduced_affine, target, plan.shape, order=1,
                    cval=float(np.min(reduced)) if reduced.size else 0.0)
    return Conformed(normalise(cube), target)


def to_native(cube: np.ndarray, cube_affine_ras: np.ndarray, native_affine: np.ndarray,
              native_shape, box=None) -> np.ndarray:
    """Trilinear map of a cube-grid quantity (a probability) onto the native grid.

    ``box`` = (lo, hi) voxel index bounds on the native grid limits the work to
    where the quantity can be non-zero; outside it the result is 0.
    """
    native_shape = tuple(int(n) for n in native_shape)
    if box is None:
        return resample(cube, cube_affine_ras, native_affine, native_shape, order=1)
    lo, hi = (np.asarray(b, dtype=int) for b in box)
    out = np.zeros(native_shape, np.float32)
    if np.any(hi <= lo):
        return out
    shift = np.eye(4)
    shift[:3, 3] = lo
    out[lo[0]: hi[0], lo[1]: hi[1], lo[2]: hi[2]] = resample(
        cube, cube_affine_ras, np.asarray(native_affine) @ shift, hi - lo, order=1)
    return out


def native_box(cube_mask: np.ndarray, cube_affine_ras: np.ndarray, native_affine: np.ndarray,
               native_shape, pad_voxels: int = 2):
    """Native voxel-index bounds (lo, hi) that contain a mask given on the cube grid."""
    if not cube_mask.any():
        return np.zeros(3, int), np.zeros(3, int)
    ijk = np.array(np.nonzero(cube_mask), dtype=float)
    lo, hi = ijk.min(axis=1) - pad_voxels, ijk.max(axis=1) + pad_voxels
    corners = np.array(np.meshgrid(*zip(lo, hi), indexing="ij")).reshape(3, -1)
    mapping = np.linalg.inv(native_affine) @ cube_affine_ras
    native = mapping[:3, :3] @ corners + mapping[:3, 3:4]
    low = np.clip(np.floor(native.min(axis=1)).astype(int), 0, native_shape)
    high = np.clip(np.ceil(native.max(axis=1)).astype(int) + 1, 0, native_shape)
    return low, high

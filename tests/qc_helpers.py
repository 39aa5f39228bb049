"""Shared by the QC tests and bench/bench_qc.py: real heads, and defaced versions of them.

The defaced versions come from a geometric slab cut that does not use the face
check at all: it removes every head voxel within 35 mm behind the head's
frontmost point (the nose tip on every head in heads/) and below 45 mm above it,
which takes nose, eyes and mouth, the way a careful manual defacing would.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

try:
    from shared_data import HEADS, SHARED_DATA as DATA, needs_shared_data as requires_heads
except ImportError:  # imported as tests.qc_helpers (bench/bench_qc.py)
    from tests.shared_data import HEADS, SHARED_DATA as DATA, needs_shared_data as requires_heads


def head_paths() -> list[Path]:
    return sorted(HEADS.glob("*.nii*")) if HEADS.is_dir() else []


def reorient(img, permutation, flips):
    """The same image stored in another axis order: array and affine changed together."""
    data = np.transpose(np.asanyarray(img.dataobj), permutation)
    affine = img.affine.copy()
    affine[:, :3] = affine[:, list(permutation)]
    for axis, flip in enumerate(flips):
        if flip:
            data = np.flip(data, axis)
            affine[:, 3] += affine[:, axis] * (data.shape[axis] - 1)
            affine[:, axis] = -affine[:, axis]
    return nib.Nifti1Image(np.ascontiguousarray(data), affine, img.header)


def slab_deface(img, depth_mm: float = 35.0, above_tip_mm: float = 45.0):
    """(defaced_img, mask_img) on the image's own grid; mask 1 = removed."""
    from deepdefacer.qc.volume import as_ras, ras_volume, voxel_sizes_mm

    # Its own grid (not the QC grid), so the cut stays the same when QC's grid changes;
    # on a coarser grid the thin nose tip can fall under the threshold and the brow
    # becomes the frontmost point.
    volume = ras_volume(img, voxel_mm=max(float(voxel_sizes_mm(img.affine).min()), 1.5))
    points = np.argwhere(volume.head)
    width_mm = np.ptp(points[:, 0]) * volume.voxel_mm
    scale = width_mm / 150.0  # cut sizes follow the head's size (and wrong voxel-size headers)
    tip = points[np.argmax(points[:, 1])]
    cut_qc = np.zeros(volume.head.shape, dtype=bool)
    y_from = int(np.floor(tip[1] - depth_mm * scale / volume.voxel_mm))
    z_to = int(np.ceil(tip[2] + above_tip_mm * scale / volume.voxel_mm))
    cut_qc[:, max(y_from, 0):, : max(z_to, 0)] = True
    cut_qc &= volume.head

    # Back onto the image's own grid: QC grid -> canonical grid (per-axis nearest
    # neighbour) -> the stored axis order (flips and swaps only).
    ornt = nib.orientations.io_orientation(img.affine)
    canonical_shape = as_ras(img).shape
    canonical_mm = voxel_sizes_mm(as_ras(img).affine)
    index = [np.clip(np.rint((np.arange(n) + 0.5) * size / volume.voxel_mm - 0.5).astype(int), 0, m - 1)
             for n, size, m in zip(canonical_shape, canonical_mm, cut_qc.shape)]
    cut_canonical = cut_qc[np.ix_(*index)]
    removed = nib.orientations.apply_orientation(
        cut_canonical, nib.orientations.ornt_transform(nib.orientations.axcodes2ornt("RAS"), ornt))

    data = np.asanyarray(img.dataobj)
    if data.ndim > 3:
        data = data[..., 0]
    defaced = np.where(removed, 0, data).astype(data.dtype)
    return (nib.Nifti1Image(defaced, img.affine, img.header),
            nib.Nifti1Image(removed.astype(np.uint8), img.affine))

"""Carry a face mask from the scan it was computed on to other scans of the same session.

Curators deface T2w and FLAIR with the mask of the session's T1w, and echoes or inversions of one
acquisition with a single mask. The scans share the scanner's world coordinates (not their voxel
grids), so the mask is resampled through the two affines: pure functions on arrays and affines.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def resample_mask(mask: np.ndarray, mask_affine: np.ndarray, target_shape,
                  target_affine: np.ndarray) -> np.ndarray:
    """The mask (1 = remove) on the target grid: linear interpolation, kept where >= 0.5.

    Outside the mask's field of view the nearest mask voxel is used: a face that continues past
    the edge of the reference scan is still removed rather than silently kept.
    """
    mask = np.asarray(mask)
    target_shape = tuple(int(n) for n in target_shape[:3])
    if mask.shape == target_shape and np.allclose(mask_affine, target_affine, atol=1e-4):
        return (mask > 0).astype(np.uint8)
    target_to_mask_voxels = np.linalg.inv(mask_affine) @ np.asarray(target_affine, dtype=float)
    values = ndimage.affine_transform(
        (mask > 0).astype(np.float32), target_to_mask_voxels[:3, :3],
        offset=target_to_mask_voxels[:3, 3], output_shape=target_shape, order=1, mode="nearest")
    return (values >= 0.5).astype(np.uint8)


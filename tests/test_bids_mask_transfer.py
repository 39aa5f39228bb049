"""Carrying a mask between grids through the scanner affines (pure functions, real geometry)."""

from __future__ import annotations

import nibabel as nib
import numpy as np

from bids_app_helpers import HEADS, needs_shared_data
from deepdefacer.mask_transfer import resample_mask
from deepdefacer.nifti import load_volume
from deepdefacer.pipeline import apply_face_mask

pytestmark = needs_shared_data


def _world(img):
    ijk = np.indices(img.shape[:3]).reshape(3, -1)
    return (img.affine[:3, :3] @ ijk + img.affine[:3, 3:4]).reshape((3,) + img.shape[:3])


def test_same_grid_is_returned_unchanged():
    img = nib.load(HEADS / "ixi002_t1_6mm.nii.gz")
    mask = np.zeros(img.shape, np.uint8)
    mask[5:20, 3:9, 100:150] = 1
    np.testing.assert_array_equal(resample_mask(mask, img.affine, img.shape, img.affine), mask)


def test_face_region_lands_on_the_same_anatomy_in_another_grid():
    # The IXI T1w is 6 mm along y, the T2w 6 mm along z, in different voxel orders: a mask
    # defined in world coordinates on one grid must fall on the same world region in the other.
    t1 = nib.load(HEADS / "ixi002_t1_6mm.nii.gz")
    t2 = nib.load(HEADS / "ixi002_t2_6mm.nii.gz")
    threshold_mm = float(np.median(_world(t1)[1]))
    mask_t1 = (_world(t1)[1] > threshold_mm).astype(np.uint8)
    carried = resample_mask(mask_t1, t1.affine, t2.shape, t2.affine)
    world_y_t2 = _world(t2)[1]
    expected = world_y_t2 > threshold_mm
    disagree = carried.astype(bool) != expected
    assert carried.shape == t2.shape and carried.dtype == np.uint8
    assert disagree.mean() < 0.02
    # Only voxels within one coarse voxel (6 mm) of the boundary may differ.
    assert np.all(np.abs(world_y_t2[disagree] - threshold_mm) <= 6.0)


def test_a_carried_mask_changes_only_masked_voxels():
    volume = load_volume(HEADS / "colin27_t1w_2mm.nii")
    mask = np.zeros(volume.img.shape, np.uint8)
    mask[:, 70:, :30] = 1
    defaced = apply_face_mask(volume, mask).raw
    assert np.all(defaced[mask > 0] == 0)
    np.testing.assert_array_equal(defaced[mask == 0], volume.raw[mask == 0])
    assert np.any(volume.raw[mask > 0] != 0)  # there was something to remove

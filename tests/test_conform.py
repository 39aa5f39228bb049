"""Canonical grid: resampling, round trips and orientation invariance on real heads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from deepdefacer.conform import GridPlan, conform, native_box, resample, to_native

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not SHARED.is_dir(), reason=f"shared data not found at {SHARED}")


def _scipy_trilinear(data, affine_in, affine_out, shape):
    mapping = np.linalg.inv(affine_in) @ affine_out
    return ndimage.affine_transform(data.astype(np.float32), mapping[:3, :3], offset=mapping[:3, 3],
                                    output_shape=shape, order=1, mode="constant", prefilter=False)


@needs_data
@pytest.mark.parametrize("name", ["ixi002_pd_6mm.nii.gz", "colin27_t1w_2mm.nii", "ndd_example4_crop_psr.nii.gz"])
def test_fast_resampling_equals_scipy_affine_transform(name):
    img = nib.load(SHARED / "heads" / name)
    data = img.get_fdata(dtype=np.float32)
    cube = np.diag([4.0, 4.0, 4.0, 1.0])
    cube[:3, 3] = img.affine[:3, 3] - 30
    fast = resample(data, img.affine, cube, (40, 40, 40))
    assert fast.any()
    np.testing.assert_allclose(fast, _scipy_trilinear(data, img.affine, cube, (40, 40, 40)),
                               atol=1e-3 * float(data.max()))
    back = to_native(fast, cube, img.affine, data.shape)
    np.testing.assert_allclose(back, _scipy_trilinear(fast, cube, img.affine, data.shape),
                               atol=1e-3 * float(data.max()))


@needs_data
def test_oblique_grids_fall_back_to_the_general_transform():
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    data = img.get_fdata(dtype=np.float32)
    angle = np.deg2rad(12)
    rotation = np.eye(4)
    rotation[:2, :2] = [[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]]
    oblique = rotation @ img.affine
    cube = np.diag([4.0, 4.0, 4.0, 1.0])
    cube[:3, 3] = -100
    np.testing.assert_allclose(resample(data, oblique, cube, (50, 50, 50)),
                               _scipy_trilinear(data, oblique, cube, (50, 50, 50)), atol=1e-3)


@needs_data
def test_canonicalisation_round_trip_recovers_a_smooth_map():
    """A smooth quantity on the native grid survives native -> cube -> native."""
    img = nib.load(SHARED / "heads" / "t1w_head_ext2.nii.gz")
    plan = GridPlan(size=64, voxel_mm=4.0)
    conformed = conform(img.get_fdata(dtype=np.float32), img.affine, plan)
    assert conformed.array.shape == plan.shape
    # The head is inside the cube and normalised to about [0, 1].
    assert 0.9 <= np.percentile(conformed.array[conformed.array > 0.1], 99) <= 1.5
    ijk = np.indices(img.shape, dtype=np.float32)
    world = np.tensordot(img.affine[:3, :3], ijk, axes=1) + img.affine[:3, 3, None, None, None]
    smooth = np.exp(-((world[0] - 5) ** 2 + (world[1] - 60) ** 2 + (world[2] + 20) ** 2) / (2 * 40.0 ** 2))
    on_cube = resample(smooth, img.affine, conformed.affine_ras, plan.shape)
    box = native_box(on_cube > 0.05, conformed.affine_ras, img.affine, img.shape)
    back = to_native(on_cube, conformed.affine_ras, img.affine, img.shape, box)
    cube_voxel = np.tensordot(np.linalg.inv(conformed.affine_ras)[:3, :3], world, axes=1) \
        + np.linalg.inv(conformed.affine_ras)[:3, 3, None, None, None]
    in_cube = np.all((cube_voxel >= 0) & (cube_voxel <= plan.size - 1), axis=0)
    assert in_cube.mean() > 0.5
    # One cube voxel (4 mm = 2.5 native voxels) from the scan's border mixes with the
    # outside (zero) by construction; compare away from it.
    interior = np.zeros(img.shape, bool)
    interior[3:-3, 3:-3, 3:-3] = True
    inside = (smooth > 0.1) & in_cube & interior
    assert np.abs(back[inside] - smooth[inside]).max() < 0.02


@needs_data
def test_every_axis_order_gives_the_same_cube():
    """The 48 stored axis orders of one image conform to the same canonical array."""
    paths = sorted((SHARED / "orientation").glob("*.nii.gz"))
    assert len(paths) == 48
    plan = GridPlan(size=48, voxel_mm=5.0)
    reference = None
    for path in paths:
        img = nib.load(path)
        cube = conform(img.get_fdata(dtype=np.float32), img.affine, plan)
        if reference is None:
            reference = cube
            continue
        np.testing.assert_allclose(cube.affine_ras, reference.affine_ras, atol=1e-3, err_msg=path.name)
        np.testing.assert_allclose(cube.array, reference.array, atol=1e-3, err_msg=path.name)

"""Canonical grid: resampling, round trips and orientation invariance on real heads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data
from scipy import ndimage

from deepdefacer.conform import GridPlan, conform, native_box, to_native
from deepdefacer.resample import block_reduce, resample

SHARED = SHARED_DATA
needs_data = needs_shared_data


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


@needs_data
def test_the_arrays_memory_order_does_not_change_the_result():
    """nibabel hands over Fortran-ordered arrays; resampling and block reduction run in the
    array's own memory order (no transposed copy of the whole scan) and give the same values
    for the C-ordered copy and for a transposed view of it."""
    from deepdefacer.conform import head_box_ras

    img = nib.load(SHARED / "heads" / "chris_t1w.nii.gz")
    fortran = np.asarray(img.dataobj, dtype=np.float32)
    assert fortran.flags.f_contiguous and not fortran.flags.c_contiguous
    swap = np.eye(4)[[1, 0, 2, 3]]
    layouts = {"fortran": (fortran, img.affine), "c": (np.ascontiguousarray(fortran), img.affine),
               "transposed view": (np.transpose(np.ascontiguousarray(fortran), (1, 0, 2)), img.affine @ swap)}
    cube = np.diag([4.0, 4.0, 4.0, 1.0])
    cube[:3, 3] = img.affine[:3, 3] - 20
    results = {}
    for name, (data, affine) in layouts.items():
        reduced, reduced_affine = block_reduce(data, affine, 4.5)
        results[name] = (resample(data, affine, cube, (50, 50, 50)), head_box_ras(data, affine),
                         resample(reduced, reduced_affine, cube, (50, 50, 50)))
    expected = _scipy_trilinear(fortran, img.affine, cube, (50, 50, 50))
    np.testing.assert_allclose(results["fortran"][0], expected, atol=1e-3 * float(fortran.max()))
    for name in ("c", "transposed view"):
        for got, want in zip(results[name], results["fortran"]):
            np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5, atol=1e-4)


def test_block_reduce_is_the_mean_of_each_whole_block():
    """Per-axis sums of strided slices (fast) against the plain block mean in float64, for odd
    shapes (the trailing partial blocks are dropped) and the block centre in the affine."""

    rng = np.random.default_rng(7)
    data = rng.normal(100.0, 30.0, (31, 20, 17)).astype(np.float32)
    affine = np.diag([1.0, 1.5, 3.0, 1.0])
    for target, factors in ((4.5, (3, 2, 1)), (9.0, (6, 4, 2))):
        reduced, reduced_affine = block_reduce(np.asfortranarray(data), affine, target)
        n = [s // f for s, f in zip(data.shape, factors)]
        blocks = data[: n[0] * factors[0], : n[1] * factors[1], : n[2] * factors[2]].astype(np.float64)
        expected = blocks.reshape(n[0], factors[0], n[1], factors[1], n[2], factors[2]).mean(axis=(1, 3, 5))
        assert reduced.dtype == np.float32 and reduced.shape == tuple(n)
        np.testing.assert_allclose(reduced, expected, rtol=1e-5)
        centre = affine @ np.array([(f - 1) / 2 for f in factors] + [1.0])
        np.testing.assert_allclose(reduced_affine[:, 3], centre)

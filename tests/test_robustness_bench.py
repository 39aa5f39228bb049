"""bench/robustness.py changes a scan and its labels together: check the geometry it relies on."""

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bench.robustness import NotApplicable, crop_world, perturb, thick_slices

DEMO = Path(__file__).resolve().parents[1] / "examples" / "ds-demo" / "sub-01" / "ses-1" / "anat"


def world(affine, ijk):
    """RAS of voxel indices: one (3,) or many (3, N)."""
    ijk = np.asarray(ijk, float)
    shift = np.asarray(affine)[:3, 3]
    return np.asarray(affine)[:3, :3] @ ijk + (shift if ijk.ndim == 1 else shift[:, None])


@pytest.fixture(scope="module")
def scan():
    img = nib.load(DEMO / "sub-01_ses-1_T2w.nii.gz")
    data = img.get_fdata(dtype=np.float32)
    # Labels stand-ins with known content: a voxel index code, to follow each voxel.
    code = np.arange(data.size, dtype=np.int64).reshape(data.shape)
    return data, img.affine, code


@pytest.mark.parametrize("world_axis, keep_below", [(1, True), (2, False), (2, True), (0, False)])
def test_crop_keeps_every_voxel_at_its_world_position(scan, world_axis, keep_below):
    data, affine, code = scan
    limit = float(world(affine, (np.array(data.shape) - 1) / 2.0)[world_axis]) + 7.0
    cropped, new_affine, labels = crop_world(data, affine, {"landmarks": code}, world_axis, limit, keep_below)
    assert 0 < cropped.size < data.size
    originals = np.unravel_index(labels["landmarks"].ravel(), data.shape)
    here = np.indices(cropped.shape).reshape(3, -1)
    np.testing.assert_allclose(world(new_affine, here), world(affine, np.array(originals)), atol=1e-6)
    np.testing.assert_array_equal(cropped.ravel(), data[originals])
    coordinate = world(new_affine, here)[world_axis]
    # Every kept voxel centre lies on the kept side of the limit (the demo scan is not oblique).
    assert np.all(coordinate <= limit + 1e-6) if keep_below else np.all(coordinate >= limit - 1e-6)


@pytest.mark.parametrize("world_axis", [0, 1])
def test_thick_slices_sit_at_the_centre_of_the_voxels_they_average(scan, world_axis):
    data, affine, code = scan
    brain = (data > np.percentile(data, 70)).astype(np.uint8)
    thick, new_affine, labels = thick_slices(data, affine, {"landmarks": code, "brain": brain,
                                                            "face": brain}, world_axis)
    axis = int(np.argmax(np.abs(np.asarray(affine)[world_axis, :3])))
    factor = data.shape[axis] // thick.shape[axis]
    assert factor >= 2 and thick.shape[axis] * factor <= data.shape[axis]
    # The first thick slice: the mean of the first `factor` thin ones, placed at their centre.
    first = np.take(data, np.arange(factor), axis=axis).mean(axis=axis)
    np.testing.assert_allclose(np.take(thick, 0, axis=axis), first, rtol=1e-5, atol=1e-4)
    centre = [0, 0, 0]
    centre[axis] = (factor - 1) / 2.0
    np.testing.assert_allclose(world(new_affine, [0, 0, 0]), world(affine, centre), atol=1e-6)
    # Brain: any thin voxel makes the thick one brain; face: most of them.
    thin = np.take(brain, np.arange(factor), axis=axis)
    np.testing.assert_array_equal(np.take(labels["brain"], 0, axis=axis), thin.max(axis=axis))
    np.testing.assert_array_equal(np.take(labels["face"], 0, axis=axis), thin.mean(axis=axis) >= 0.5)


def test_slices_already_thick_and_headers_already_wrong_are_not_perturbed(scan):
    data, affine, code = scan
    with pytest.raises(NotApplicable, match="already 6.0 mm"):  # the demo T2w: 6 mm axial slices
        thick_slices(data, affine, {"landmarks": code}, 2)
    tiny = np.array(affine, float)
    tiny[:3, :3] /= 4.0  # a 170 mm head now measures ~43 mm: the pipeline would rescale it
    for kind in ("thick_ap_5mm", "crop_top", "header_x3"):
        with pytest.raises(NotApplicable, match="implausible"):
            perturb(kind, data, tiny, {"landmarks": code}, "demo")
    assert perturb("noise_bias", data, tiny, {}, "demo")[1] is tiny


def test_header_x3_shrinks_the_voxels_about_the_centre_and_keeps_the_data(scan):
    data, affine, code = scan
    same, new_affine, labels = perturb("header_x3", data, affine, {"landmarks": code}, "demo")
    assert same is data and labels["landmarks"] is code
    centre = (np.array(data.shape) - 1) / 2.0
    np.testing.assert_allclose(world(new_affine, centre), world(affine, centre), atol=1e-6)
    zooms = np.sqrt((np.asarray(new_affine)[:3, :3] ** 2).sum(axis=0))
    np.testing.assert_allclose(zooms, np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(axis=0)) / 3.0)


def test_noise_is_seeded_by_the_scan_name(scan):
    data, affine, code = scan
    a = perturb("noise_bias", data, affine, {}, "sub-01_T2w")[0]
    b = perturb("noise_bias", data, affine, {}, "sub-01_T2w")[0]
    c = perturb("noise_bias", data, affine, {}, "sub-02_T2w")[0]
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c) and a.shape == data.shape and np.all(a >= 0)

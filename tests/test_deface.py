"""deface() with the shipped model on real heads: what it removes, what it keeps."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer import deface
from deepdefacer.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
LABELS = REPO / "labels"
needs_data = needs_shared_data


def _labels(name):
    """The reference face and brain (the deformable brain where it exists, as scored)."""
    from deepdefacer.train.evaluate import reference_labels

    return {k: v.astype(bool) for k, v in reference_labels(LABELS, name).items()}


@needs_data
@pytest.mark.parametrize("storage", ["nii", "hdr/img pair"])
@pytest.mark.slow
def test_scaled_input_reads_back_the_same_intensities_in_memory(tmp_path, defacer, storage):
    """A uint8 FLAIR stored with scl_slope 3.43: the returned image, before any save, reads the
    input's scaled intensities outside the mask (an array image would read raw uint8 values)."""
    img = nib.load(SHARED / "nichart" / "Subj8_FL.nii.gz")
    if storage == "hdr/img pair":
        pair = nib.Nifti1Pair(np.asarray(img.dataobj.get_unscaled()), img.affine, img.header)
        pair.header.set_slope_inter(img.dataobj.slope, img.dataobj.inter)
        nib.save(pair, tmp_path / "Subj8_FL.img")
        img = nib.load(tmp_path / "Subj8_FL.img")
        assert isinstance(img, nib.Nifti1Pair) and not isinstance(img, nib.Nifti1Image)
    assert img.dataobj.slope != 1.0
    defaced, mask_img = deface(img, defacer)
    mask = np.asarray(mask_img.dataobj).astype(bool)
    original, result = img.get_fdata(), defaced.get_fdata()
    assert mask.any()
    assert np.array_equal(result[~mask], original[~mask])
    assert np.all(result[mask] == 0)
    assert np.array_equal(np.asarray(defaced.dataobj.get_unscaled())[~mask],
                          np.asarray(img.dataobj.get_unscaled())[~mask])


@needs_data
@pytest.mark.parametrize("name", ["colin27_t1w_2mm.nii", "ixi002_t2_6mm.nii.gz", "t1w_mni_2mm.nii.gz"])
@pytest.mark.slow
def test_header_dtype_scaling_kept_and_outside_voxels_bit_identical(tmp_path, defacer, name):
    source = SHARED / "heads" / name
    img = nib.load(source)
    defaced, mask_img = deface(img, defacer)
    out = tmp_path / ("defaced_" + name)
    nib.save(defaced, out)
    back = nib.load(out)
    mask = np.asarray(mask_img.dataobj).astype(bool)
    assert mask.any(), "nothing was removed"
    assert mask_img.shape == img.shape and np.allclose(mask_img.affine, img.affine)
    assert back.get_data_dtype() == img.get_data_dtype()
    assert (back.dataobj.slope, back.dataobj.inter) == (img.dataobj.slope, img.dataobj.inter)
    for key in img.header.keys():
        a, b = np.asarray(img.header[key]), np.asarray(back.header[key])
        assert a.tobytes() == b.tobytes(), key
    raw_in = np.asarray(img.dataobj.get_unscaled())
    raw_out = np.asarray(back.dataobj.get_unscaled())
    assert np.array_equal(raw_in[~mask], raw_out[~mask])
    assert np.all(back.get_fdata()[mask] == 0)


@needs_data
@pytest.mark.parametrize("name", ["t1w_head_ext2", "colin27_t1w_1mm", "chris_t1w"])
@pytest.mark.slow
def test_brain_guard_holds_even_when_the_face_prediction_covers_everything(defacer, name):
    """A hostile face map (1 everywhere) removes nothing within the margin of the predicted
    brain, and keeps at least 99% of the reference brain (the model's brain is the guard)."""
    from deepdefacer.conform import conform, to_native

    class Hostile:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, attr):
            return getattr(self.inner, attr)

        def predict(self, cube):
            _, brain = self.inner.predict(cube)
            return np.ones_like(brain), brain

    suffix = ".nii" if (SHARED / "heads" / f"{name}.nii").exists() else ".nii.gz"
    img = nib.load(SHARED / "heads" / f"{name}{suffix}")
    _, mask_img = deface(img, Hostile(defacer))
    mask = np.asarray(mask_img.dataobj).astype(bool)
    brain = _labels(name)["brain"]
    assert mask.sum() > brain.sum() * 0.2, "the hostile map should remove a lot"
    predictor = defacer.predictor
    cube = conform(img.get_fdata(dtype=np.float32), img.affine, predictor.plan)
    predicted = to_native(predictor.predict(cube.array)[1], cube.affine_ras, img.affine, img.shape)
    assert not (mask & (predicted >= predictor.thresholds.brain)).any()
    assert (mask & brain).sum() <= 0.01 * brain.sum(), f"{(mask & brain).sum()} brain voxels removed"


@pytest.mark.parametrize("shape, reason", [
    ((20, 20, 20, 3), "one 3D volume"), ((64, 64), "needs three dimensions"),
    ((40, 40, 2), "too small to be a head scan")])
@pytest.mark.slow
def test_images_that_are_not_3d_heads_are_refused(defacer, shape, reason):
    img = nib.Nifti1Image(np.random.default_rng(0).random(shape).astype(np.float32), np.eye(4))
    with pytest.raises(InputError, match=reason):
        deface(img, defacer)


@pytest.mark.slow
def test_nan_and_empty_images_are_refused(defacer):
    data = np.random.default_rng(0).random((30, 30, 30)).astype(np.float32)
    data[3, 4, 5] = np.nan
    with pytest.raises(InputError, match="NaN"):
        deface(nib.Nifti1Image(data, np.eye(4)), defacer)
    with pytest.raises(InputError, match="empty"):
        deface(nib.Nifti1Image(np.zeros((30, 30, 30), np.int16), np.eye(4)), defacer)


@pytest.mark.slow
def test_package_level_deface_stays_the_function_after_the_pipeline_is_used(defacer):
    import deepdefacer
    import deepdefacer.pipeline  # noqa: F401

    img = nib.Nifti1Image(np.zeros((8, 8, 8), np.float32), np.eye(4))
    with pytest.raises(InputError):
        defacer.deface(img)
    assert callable(deepdefacer.deface) and deepdefacer.deface is deface


def test_face_growth_extends_the_face_by_its_distance_and_never_into_the_guard():
    """face_mask on known probability cubes: growing by g mm moves the face's edge out by
    about g mm on a fine native grid, and nothing within the brain margin is removed."""
    from deepdefacer.mask import Prediction, face_mask

    voxel, size = 4.0, 32
    cube_affine = np.diag([voxel] * 3 + [1.0])
    cube_affine[:3, 3] = -voxel * (size - 1) / 2  # cube centred on the origin
    centres = np.arange(size) * voxel - voxel * (size - 1) / 2
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    face = (y > 30.0).astype(np.float32)                    # a slab in front: y > 30 mm
    brain = (x**2 + y**2 + z**2 < 20.0**2).astype(np.float32)  # a ball of 20 mm
    native_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    native_affine[:3, 3] = -50.0
    shape = (101, 101, 101)                                 # 1 mm voxels, -50..50 mm
    pred = Prediction(face, brain, cube_affine, voxel, native_affine, shape)
    ys = np.arange(shape[1]) - 50.0
    far = (slice(0, 10), slice(None), slice(0, 10))         # a corner far from the brain

    def front_edge(mask):
        return ys[mask[far].any(axis=(0, 2))].min()

    plain = face_mask(pred, 0.5, 0.5, 4.0, 0.0)
    grown = face_mask(pred, 0.5, 0.5, 4.0, 10.0)
    assert np.all(grown >= plain)
    # the cube's face edge is halfway between the last 0 and first 1 voxel centres
    assert abs(front_edge(plain) - 30.0) <= voxel / 2 + 1
    assert abs((front_edge(plain) - front_edge(grown)) - 10.0) <= voxel / 2 + 1
    # the grown face reaches the ball's margin and stops there
    gx, gy, gz = np.meshgrid(ys, ys, ys, indexing="ij")
    distance_to_brain = np.sqrt(gx**2 + gy**2 + gz**2) - 20.0
    assert grown[distance_to_brain < 4.0 - voxel / 2].sum() == 0
    assert grown[(distance_to_brain < 8.0) & (gy > 20)].any()


def test_continue_to_edges_carries_the_innermost_band_slice_out_to_the_cut_where_allowed():
    from deepdefacer.mask import continue_to_edges

    mask = np.zeros((40, 30, 20), bool)
    mask[10:20, 5:27, 3:8] = True                  # reaches into the last 4 slices of axis 1
                                                   # (26-29) but fades before the cut
    allowed = np.ones_like(mask)
    allowed[15:20] = False                         # the brain guard
    out = continue_to_edges(mask, allowed, voxel_mm=(1.0, 1.0, 6.0), edge_mm=4.0)
    assert np.all(out >= mask)
    # axis 1, far side: the band is slices 26-29, filled from slice 25 where allowed
    assert out[10:15, 26:30, 3:8].all() and not out[15:20, 27:30, 3:8].any()
    # nothing touched the other sides; axis 2 (6 mm voxels: a 1-slice band) is empty at its edges
    assert np.array_equal(out[:, :26], mask[:, :26])
    assert not out[..., 0].any() and not out[..., -1].any()
    # an axis too thin for two bands is left alone (here a band would fill slices 5 and 0-3)
    plane = np.zeros((10, 10, 6), bool)
    plane[..., 4] = True
    assert np.array_equal(continue_to_edges(plane, np.ones_like(plane), (1.0, 1.0, 1.0), 4.0), plane)


@needs_data
@pytest.mark.parametrize("name, path, landmarks", [
    ("ixi002_t2_6mm", "heads/ixi002_t2_6mm.nii.gz", ("mouth",)),   # mouth in the bottom slice
    ("Subj1_T1", "nichart/Subj1_T1.nii.gz", ("nose", "mouth")),      # beyond the cube's last voxels
])
@pytest.mark.slow
def test_a_face_at_the_edge_of_the_scan_or_the_cube_is_removed_up_to_it(defacer, name, path, landmarks):
    """What the edge handling adds takes the nose or mouth that the field of view (or the
    cube) cuts through, and none of the reference (SyN) brain."""
    import dataclasses

    from deepdefacer.train.evaluate import LANDMARK_NAMES

    predictor = defacer.predictor
    assert predictor.thresholds.edge_mm > 0
    img = nib.load(SHARED / path)
    mask = np.asarray(deface(img, defacer)[1].dataobj).astype(bool)
    no_edges = dataclasses.replace(predictor, thresholds=dataclasses.replace(predictor.thresholds, edge_mm=0.0))
    without = np.asarray(deface(img, dataclasses.replace(defacer, predictor=no_edges))[1].dataobj).astype(bool)
    labels = _labels(name)
    added = mask & ~without
    assert added.any() and not (added & labels["brain"]).any()
    spots = np.asarray(nib.load(LABELS / f"{name}_landmarks.nii.gz").dataobj)
    for landmark in landmarks:
        spot = spots == LANDMARK_NAMES.index(landmark) + 1
        assert spot.sum() >= 5
        assert (mask & spot).sum() / spot.sum() >= 0.9, landmark


def test_edge_band_holds_the_cube_edge_values_beyond_the_cube():
    """A face reaching the cube's front face: without the edge band the mask stops at the
    cube's last voxel centres (half a voxel inside the cube); with it, it goes on to the scan's edge."""
    from deepdefacer.mask import Prediction, face_mask

    voxel, size = 4.0, 32
    cube_affine = np.diag([voxel] * 3 + [1.0])
    cube_affine[:3, 3] = -voxel * (size - 1) / 2            # centres -62..62 mm
    centres = np.arange(size) * voxel - voxel * (size - 1) / 2
    x, y, z = np.meshgrid(centres, centres, centres, indexing="ij")
    face = (y > 30.0).astype(np.float32)
    brain = (x**2 + y**2 + z**2 < 20.0**2).astype(np.float32)
    native_affine = np.diag([1.0, 1.0, 1.0, 1.0])
    native_affine[:3, 3] = -70.0
    shape = (141, 141, 141)                                  # 1 mm voxels, -70..70 mm
    pred = Prediction(face, brain, cube_affine, voxel, native_affine, shape)
    ys = np.arange(shape[1]) - 70.0
    plain = face_mask(pred, 0.5, 0.5, 4.0, 0.0)
    banded = face_mask(pred, 0.5, 0.5, 4.0, 0.0, edge_mm=8.0)
    assert ys[plain.any(axis=(0, 2))].max() == 62.0
    assert ys[banded.any(axis=(0, 2))].max() == 70.0
    inside = np.abs(ys) <= 62.0                              # within the cube's centres
    assert np.array_equal(banded[np.ix_(inside, inside, inside)], plain[np.ix_(inside, inside, inside)])
    assert banded[np.abs(ys) > 62.0].any()                   # the slab's sides go on too

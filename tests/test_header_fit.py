"""Implausible headers: the atlas fit measures the voxel sizes, and the face is removed
under both size estimates (the head-size rule and the fit)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from shared_data import SHARED_DATA, needs_shared_data

from deepdefacer.conform import GridPlan, plausible_affine
from deepdefacer.resample import voxel_sizes
from deepdefacer.mask import Prediction, face_mask
from deepdefacer.nifti import read_volume
from deepdefacer.pipeline import deface_with_details
from deepdefacer.predictor import Thresholds

REPO = Path(__file__).resolve().parents[1]
SHARED = SHARED_DATA
LABELS = REPO / "labels"
# 1 x 6 x 1 mm, a 2D coronal acquisition with its face (in the repo's example dataset).
SCAN = REPO / "examples" / "ds-demo" / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"
PLAN = GridPlan(48, 5.3333, 12.0)


def _shrunk(path, factor=3.0):
    """The scan with its header's voxel sizes ``factor`` x too small (a volume saved without its zooms)."""
    img = nib.load(path)
    affine = img.affine.copy()
    affine[:3, :3] /= factor
    out = nib.Nifti1Image(np.asanyarray(img.dataobj), affine, img.header)
    out.set_sform(affine, 1)
    out.set_qform(affine, 1)
    return img, out


@pytest.mark.slow
def test_the_atlas_fit_measures_voxel_sizes_the_header_has_wrong():
    """A 1 x 6 x 1 mm scan stored with 0.33 x 2 x 0.33 mm voxels: the head-size rule (200 mm across)
    gives ~0.93 x 5.6 x 0.93 mm; the atlas's fit comes within 5% of the truth on every axis."""
    from deepdefacer.atlas import fitted_voxel_sizes

    img, shrunk = _shrunk(SCAN)
    data = read_volume(shrunk).data
    assumed, scale = plausible_affine(data, shrunk.affine)
    assert scale > 2  # implausible: the rule rescales it
    fitted, zooms, reason = fitted_voxel_sizes(data, assumed, PLAN)
    truth = np.array(img.header.get_zooms()[:3])
    assert reason is None and fitted is not None
    np.testing.assert_allclose(voxel_sizes(fitted), zooms)
    assert np.all(np.abs(zooms / truth - 1) < 0.05), zooms
    assert np.max(np.abs(voxel_sizes(assumed) / truth - 1)) > np.max(np.abs(zooms / truth - 1))
    # Only the voxel sizes change: the axes' directions and the volume's centre are the header's.
    np.testing.assert_allclose(fitted[:3, :3] / zooms, assumed[:3, :3] / voxel_sizes(assumed), atol=1e-9)
    centre = (np.array(data.shape) - 1) / 2
    np.testing.assert_allclose(fitted[:3, :3] @ centre + fitted[:3, 3],
                               assumed[:3, :3] @ centre + assumed[:3, 3], atol=1e-6)


@pytest.mark.slow
def test_an_implausible_header_costs_two_more_registrations(defacer, monkeypatch):
    """The fit of the sizes, then each size's own guard registration: two more in all."""
    from deepdefacer import atlas

    calls = []
    register = atlas.register_brain
    monkeypatch.setattr(atlas, "register_brain", lambda *a, **k: calls.append(1) or register(*a, **k))
    img, shrunk = _shrunk(SCAN)
    _, _, details = deface_with_details(shrunk, defacer)
    assert details["HeaderVoxelSizes"]["AtlasFitUsed"] and len(calls) == 3
    deface_with_details(img, defacer)
    assert len(calls) == 4  # a plausible header: the guard's one registration


def test_an_implausible_fit_is_not_used(monkeypatch):
    from deepdefacer import atlas

    def absurd(data, affine, cube_affine, plan, seed=1, fit=None):
        fit.update(world=np.diag([4.0, 4.0, 4.0, 1.0]))  # every axis 4x the assumption
        return np.zeros(plan.shape, np.float32)

    monkeypatch.setattr(atlas, "register_brain", absurd)
    _, shrunk = _shrunk(SCAN)
    data = read_volume(shrunk).data
    assumed, _ = plausible_affine(data, shrunk.affine)
    fitted, zooms, reason = atlas.fitted_voxel_sizes(data, assumed, PLAN)
    assert fitted is None and "implausible" in reason
    np.testing.assert_allclose(zooms, 4 * voxel_sizes(assumed))


def test_the_union_keeps_what_either_estimate_calls_brain():
    """Two predictions of one scan (two size estimates): what either mask removes goes, except
    where either's brain guard keeps it (its brain and the brain margin around it)."""
    from deepdefacer.mask import union_of_masks

    cube_affine = np.diag([5.3333] * 3 + [1.0])
    native_affine = np.diag([2.0] * 3 + [1.0])
    native_shape = (128, 128, 128)

    def prediction(face_box, brain_box):
        face, brain = np.zeros((48, 48, 48), np.float32), np.zeros((48, 48, 48), np.float32)
        face[face_box], brain[brain_box] = 1.0, 1.0
        return Prediction(face, brain, cube_affine, 5.3333, native_affine, native_shape)

    # Two overlapping estimates of one face. A's brain reaches into the back of B's face; B's
    # brain lies far from both faces.
    a = prediction(np.s_[5:25, 38:46, 5:15], np.s_[30:45, 30:41, 5:15])
    b = prediction(np.s_[20:45, 38:46, 5:15], np.s_[25:40, 5:20, 30:45])
    thresholds = Thresholds(face=0.4, brain=0.2, brain_margin_mm=8.0, face_dilate_mm=0.0,
                            growth_margin_mm=8.0, edge_mm=0.0)
    masks = [face_mask(p, 0.4, 0.2, 8.0) for p in (a, b)]
    union = union_of_masks(masks, [a, b], thresholds)
    assert masks[0].any() and masks[1].any()
    # Distance of each native voxel to A's brain: the box spanned by its cube voxels' centres
    # (the fields are sampled at those centres and interpolated between them).
    world = np.stack(np.meshgrid(*[np.arange(n) * 2.0 for n in native_shape], indexing="ij"), -1)
    low, high = np.array([30, 30, 5]) * 5.3333, np.array([44, 40, 14]) * 5.3333
    distance = np.linalg.norm(np.maximum(np.maximum(low - world, world - high), 0), axis=-1)
    a_brain = distance == 0
    assert a_brain.any()
    margin = 8.0
    assert not (union & (distance <= margin - 2.0)).any()  # kept near A's brain
    far = masks[1] & (distance > margin + 6.0)
    assert far.sum() > 1000 and union[far].all()  # B's face away from A's brain goes
    assert union[masks[0]].all()  # A's face is far from both brains: all of it goes
    assert (masks[1] & ~union).sum() > 500  # what B alone would have removed next to A's brain


@pytest.mark.slow
def test_the_fit_is_in_the_provenance_only_with_the_atlas(defacer, network):
    _, shrunk = _shrunk(SCAN)
    _, mask, details = deface_with_details(shrunk, defacer)
    header = details["HeaderVoxelSizes"]
    assert header["AtlasFitUsed"] and "Reason" not in header
    np.testing.assert_allclose(header["Stored"], [1 / 3, 2.0, 1 / 3], atol=1e-3)
    assert header["HeadSizeRule"][1] < header["AtlasFit"][1] < 6.3
    # Two sizes of the fit's shape: the rule's voxel volume, and the fit's own.
    rule = voxel_sizes(plausible_affine(read_volume(shrunk).data, shrunk.affine)[0])
    assert np.prod(header["HeadSizeRule"]) == pytest.approx(np.prod(rule), rel=0.01)
    ratio = np.array(header["HeadSizeRule"]) / np.array(header["AtlasFit"])
    np.testing.assert_allclose(ratio, ratio.mean(), rtol=0.01)
    assert details["AtlasGuard"]["Used"]
    assert defacer.decision["AtlasHeaderFit"] is True
    # A BIDS run flags the scan for review, saying what was assumed.
    from deepdefacer.qc.participant import defacing_flags

    (flag,) = defacing_flags(details)
    assert "implausible voxel sizes" in flag and "(0.333 x 2 x 0.333 mm)" in flag and "atlas fit (" in flag
    # Without the atlas (--no-atlas-guard) the head-size rule alone applies.
    _, mask_alone, alone = deface_with_details(shrunk, network)
    assert alone == {} and "AtlasHeaderFit" not in network.decision
    assert np.asarray(mask.dataobj).sum() > 0.9 * np.asarray(mask_alone.dataobj).sum() > 0


@needs_shared_data
@pytest.mark.slow
def test_the_cropped_block_loses_both_eyes(defacer, monkeypatch):
    """ndd_example4_crop_psr (64^3, stored as 0.94 x 0.94 x 1.2 mm) kept its right eye under the
    head-size rule alone; the atlas fit (~3.3 x 3.4 x 2.7 mm) removes it."""
    from deepdefacer import atlas
    from deepdefacer.train.evaluate import LANDMARK_NAMES, evaluate_head, passes

    path = SHARED / "heads" / "ndd_example4_crop_psr.nii.gz"
    row = evaluate_head(path, LABELS, defacer)
    detail = {k: row[k] for k in ("face_removed", "brain_removed_voxels", *LANDMARK_NAMES)}
    assert passes(row), detail
    monkeypatch.setattr(atlas, "fitted_voxel_sizes", lambda data, affine, plan: (None, None, "off"))
    rule_only = evaluate_head(path, LABELS, defacer)
    assert not rule_only["eye_right"]  # what the fit changes

"""The face check: synthetic depth maps for the geometry, real heads for the rates."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import head_paths, reorient, requires_heads, slab_deface

from deepdefacer.qc.facecheck import check_image, face_evidence


def synthetic_head_depth(nose: bool = False, hole: bool = False, pixel_mm: float = 1.5) -> np.ndarray:
    """Front depth map (mm) of an ellipsoidal head 150 mm wide, optionally with a nose
    (a narrow Gaussian ridge at the midline) or a face-sized hole (a flat cut)."""
    rows, columns = np.mgrid[0:160, 0:120] * pixel_mm
    x = columns - 60 * pixel_mm
    z = rows - 80 * pixel_mm
    inside = (x / 75.0) ** 2 + (z / 110.0) ** 2 < 1
    front = 95.0 * np.sqrt(np.clip(1 - (x / 75.0) ** 2 - (z / 110.0) ** 2, 0, 1))
    depth = 100.0 - front
    if nose:
        depth -= 22.0 * np.exp(-(x / 6.0) ** 2) * np.exp(-(((z - 35.0) / 20.0) ** 2))
    if hole:
        face = (np.abs(x) < 45) & (z > 0) & (z < 80)
        depth = np.where(face, np.maximum(depth, 40.0), depth)
    return np.where(inside, depth, np.nan)


def test_a_nose_ridge_is_a_face_and_a_smooth_dome_is_not():
    assert face_evidence(synthetic_head_depth(nose=True), 1.5).face_present
    smooth = face_evidence(synthetic_head_depth(nose=False), 1.5)
    assert not smooth.face_present
    assert smooth.nose_length_mm < 15


def test_a_face_shaped_hole_is_not_a_face():
    # The hole is what fools a Haar detector: a face-sized dark outline.
    evidence = face_evidence(synthetic_head_depth(hole=True), 1.5)
    assert not evidence.face_present


def test_scale_invariance_wrong_voxel_size_in_header():
    # Conformed 64^3 volumes claim 1 mm voxels for a 4 mm grid: judged on shape, not mm.
    depth = synthetic_head_depth(nose=True)
    assert face_evidence(depth / 4.0, 1.5 / 4.0).face_present
    assert not face_evidence(synthetic_head_depth(hole=True) / 4.0, 1.5 / 4.0).face_present


def test_no_head_at_all():
    evidence = face_evidence(np.full((50, 50), np.nan), 1.0)
    assert not evidence.face_present and "no head" in evidence.reason


@requires_heads
def test_hit_rate_on_every_real_head_is_at_least_90_percent():
    paths = head_paths()
    assert len(paths) >= 10
    results = {p.name: check_image(nib.load(p)) for p in paths}
    hits = [name for name, e in results.items() if e.face_present]
    misses = {name: e.reason for name, e in results.items() if not e.face_present}
    assert len(hits) / len(paths) >= 0.9, misses


@requires_heads
def test_false_alarm_rate_on_slab_defaced_heads_is_at_most_10_percent():
    paths = head_paths()
    alarms = {}
    for path in paths:
        defaced, mask = slab_deface(nib.load(path))
        assert np.asanyarray(mask.dataobj).any(), path.name
        evidence = check_image(defaced)
        if evidence.face_present:
            alarms[path.name] = evidence.reason
    assert len(alarms) / len(paths) <= 0.10, alarms


@requires_heads
@pytest.mark.parametrize("permutation, flips", [((1, 2, 0), (0, 1, 0)), ((2, 0, 1), (1, 0, 1)), ((0, 1, 2), (1, 1, 1))])
def test_same_verdict_and_measurements_in_any_axis_order(permutation, flips):
    img = nib.load(head_paths()[0].parent / "colin27_t1w_2mm.nii")
    reference = check_image(img)
    moved = check_image(reorient(img, permutation, flips))
    assert reference.face_present and moved.face_present
    assert moved.nose_length_mm == pytest.approx(reference.nose_length_mm, abs=0.1)
    assert moved.nose_drop_mm == pytest.approx(reference.nose_drop_mm, abs=0.1)


@requires_heads
def test_other_contrasts_of_one_person_all_show_the_face():
    # Real T2w and PDw of IXI002, each with 6 mm slices along a different axis.
    for name in ("ixi002_t1_6mm.nii.gz", "ixi002_t2_6mm.nii.gz", "ixi002_pd_6mm.nii.gz"):
        assert check_image(nib.load(head_paths()[0].parent / name)).face_present, name

"""--remove-ears on real heads: the ears placed by the atlas guard's fit go, with a margin; no
brain, nothing else changes; reface mode leaves them air; a scan whose ears cannot be placed fails."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from bids_app_helpers import DEMO, needs_shared_data, run_demo_session
from deepdefacer import ears, pipeline
from deepdefacer.atlas import load_atlas
from deepdefacer.errors import InputError
from deepdefacer.nifti import load_volume
from deepdefacer.pipeline import load_defacer

pytestmark = pytest.mark.slow

T1W = DEMO / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T1w.nii.gz"


@pytest.fixture(scope="module")
def both():
    """The demo T1w defaced without and with the ears."""
    volume = load_volume(T1W)
    return load_defacer("cpu").deface_volume(volume), load_defacer("cpu", remove_ears=True).deface_volume(volume)


def _ras_mm(volume, mask):
    ijk = np.argwhere(mask)
    return ijk @ volume.affine[:3, :3].T + volume.affine[:3, 3]


def test_the_ears_are_added_to_the_face_and_nothing_else_changes(both):
    plain, with_ears = both
    volume = with_ears.volume
    assert with_ears.ears is not None and with_ears.ears.any()
    assert np.array_equal(with_ears.mask & ~with_ears.ears, plain.mask)  # the face's mask as it was
    assert not (with_ears.ears & plain.mask).any()
    assert np.array_equal(with_ears.written_raw[~with_ears.mask], volume.raw[~with_ears.mask])
    assert (with_ears.written_raw[with_ears.ears] == with_ears.written_raw[with_ears.ears][0]).all()  # air
    # Two ears, one on each side of the head, level with the brain's lower half, well behind the face.
    points = _ras_mm(volume, with_ears.ears)
    head = _ras_mm(volume, volume.data > np.percentile(volume.data, 70))
    centre_x = np.median(head[:, 0])
    left, right = points[points[:, 0] < centre_x], points[points[:, 0] > centre_x]
    assert len(left) > 1000 and len(right) > 1000
    for side in (left, right):
        assert abs(np.median(side[:, 0]) - centre_x) > 55  # lateral, outside the skull
    face = _ras_mm(volume, plain.mask)
    assert np.median(points[:, 1]) < np.median(face[:, 1]) - 50  # behind the face
    details = with_ears.details["Ears"]
    assert details["Removed"] is True and details["RegionML"] > 20
    assert with_ears.details["AtlasGuard"] == plain.details["AtlasGuard"]


def test_no_ear_voxel_is_near_the_guarded_brain(both):
    """Every removed ear voxel is at least the clearance from the atlas brain that the same fit
    places (less the 3 mm of the atlas's voxels)."""
    _, with_ears = both
    volume = with_ears.volume
    atlas = load_atlas()
    to_atlas_voxels = np.linalg.inv(atlas["affine"]) @ with_ears.scanner_to_atlas @ volume.affine
    brain = atlas["brain"] >= 0.5
    distance = ndimage.distance_transform_edt(~brain, sampling=3.0)
    ijk = np.argwhere(with_ears.ears).T.astype(float)
    where = to_atlas_voxels[:3, :3] @ ijk + to_atlas_voxels[:3, 3:4]
    at_ears = ndimage.map_coordinates(distance, where, order=1, mode="nearest")
    assert at_ears.min() >= ears.BRAIN_CLEARANCE_MM - 3.0


def test_reface_with_ears_refaces_the_face_and_leaves_the_ears_air():
    done = load_defacer("cpu", mode="reface", remove_ears=True).deface_volume(load_volume(T1W))
    face = done.mask & ~done.ears
    assert done.refaced_raw is not None and done.details["Mode"] == "reface"
    assert np.array_equal(done.refaced_raw[done.ears], done.raw[done.ears])  # air
    assert not np.array_equal(done.refaced_raw[face], done.raw[face])  # a face


def test_ears_that_cannot_be_placed_fail_the_scan(both, monkeypatch):
    with pytest.raises(InputError, match="the ears cannot be removed"):
        ears.ear_mask(None, np.eye(4), (64, 64, 64), [], None, "x.nii.gz")
    monkeypatch.setattr(pipeline, "scanner_to_atlas", lambda *args: None)
    with pytest.raises(InputError) as caught:
        load_defacer("cpu", remove_ears=True).deface_volume(load_volume(T1W))
    assert caught.value.path == str(T1W) and "atlas guard's registration" in caught.value.reason


def test_other_scans_of_the_session_lose_the_same_ears(both):
    _, reference = both
    t2w = load_volume(DEMO / "sub-01" / "ses-1" / "anat" / "sub-01_ses-1_T2w.nii.gz")
    other = load_defacer("cpu", mode="reface", remove_ears=True).with_mask(t2w, reference)
    assert other.ears is not None and other.ears.any() and not (other.ears & ~other.mask).any()
    assert np.array_equal(other.refaced_raw[other.ears], other.raw[other.ears])


@needs_shared_data
def test_on_a_labelled_head_the_pinna_goes_and_no_brain_voxel(tmp_path):
    """The acceptance measure of bench/ears.py on one validation head (an IXI T1w): the pinna that
    the label tool's own registration places is removed (>= 90%), and no voxel of the deformable
    reference brain."""
    pytest.importorskip("ants")
    from bench import ears as bench_ears
    from deepdefacer.train.data import split

    head = next(p for p in split()["validation"] if p.name.startswith("IXI012"))
    row = bench_ears.measure(head, bench_ears.template_ears(tmp_path), load_defacer("cpu", remove_ears=True))
    assert row["brain_removed_voxels"] == 0
    assert row["pinna_ml"] > 1 and row["pinna_removed"] >= bench_ears.GOAL_REMOVED
    assert row["face_criteria_pass"]


def test_the_bids_app_records_removed_ears_and_redoes_without_them(tmp_path):
    out = tmp_path / "out"

    def run(*extra):
        return run_demo_session(out, *extra)

    first = run("--remove-ears")
    assert first.returncode == 0, first.stderr
    anat = out / "sub-01" / "ses-1" / "anat"
    record = json.loads((anat / "sub-01_ses-1_desc-defaced_T1w.json").read_text())["Deepdefacer"]
    assert record["Decision"]["RemoveEars"] is True and record["Ears"]["Removed"] is True
    mask_path = anat / "sub-01_ses-1_mod-T1w_defacemask.nii.gz"
    with_ears = np.asarray(nib.load(mask_path).dataobj).sum()
    assert "] up to date sub-01" in run("--remove-ears").stderr
    again = run()
    assert "] up to date" not in again.stderr and "] defaced sub-01" in again.stderr
    record = json.loads((anat / "sub-01_ses-1_desc-defaced_T1w.json").read_text())["Deepdefacer"]
    assert record["Decision"]["RemoveEars"] is False and "Ears" not in record
    without = np.asarray(nib.load(mask_path).dataobj).sum()
    assert with_ears > without
    usage = run("--remove-ears", "--no-atlas-guard")
    assert usage.returncode == 2 and "--remove-ears" in usage.stderr


def test_deepdeface_remove_ears_needs_the_atlas_guard(tmp_path):
    from deepdefacer.cli.deface_one import main

    assert main([str(T1W), "-o", str(tmp_path / "x.nii.gz"), "--remove-ears", "--no-atlas-guard"]) == 2
    assert not (tmp_path / "x.nii.gz").exists()

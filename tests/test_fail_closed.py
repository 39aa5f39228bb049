"""Fail closed: a scan whose face is still there, or whose geometry cannot be trusted, is a failed
scan with its reason, and its image is not written (not in an upload-ready copy either).

The defacings that leave a face are made by putting a wrong mask in the real model's place (the
crown instead of the face, or nothing); everything after the mask is the product's own path.
"""

from __future__ import annotations

import json
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import DEMO, SHARED_DATA, needs_shared_data
from deepdefacer import pipeline
from deepdefacer.bids import process
from deepdefacer.cli import deface_one
from deepdefacer.cli.run import main
from deepdefacer.errors import InputError
from deepdefacer.nifti import read_volume
from deepdefacer.pipeline import apply_face_mask, deface_with_details
from deepdefacer.qc.verify import HEADER_VIEW, verify_defacing

pytestmark = [needs_shared_data, pytest.mark.slow]

T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
T2W = "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz"
IXI = SHARED_DATA / "ixi" / "IXI012-HH-1211_T1.nii.gz"
SELECT_SES_1 = ["--participant-label", "01", "--session-label", "1"]


def crown_mask(img, depth_mm: float = 20.0) -> np.ndarray:
    """The top depth_mm of the head: a mask that removes voxels but leaves the whole face."""
    data = read_volume(img).data
    ijk = np.indices(data.shape).reshape(3, -1)
    world_z = (img.affine[2, :3] @ ijk + img.affine[2, 3]).reshape(data.shape)
    head = data > 0.2 * np.percentile(data, 99)
    return world_z > world_z[head].max() - depth_mm


class WrongMask:
    """The shipped defacer whose mask is replaced: the crown (``"crown"``) or nothing (``"none"``)."""

    def __init__(self, real, kind: str):
        self.real, self.kind = real, kind

    def __getattr__(self, name):
        return getattr(self.real, name)

    def deface_volume(self, volume):
        img = volume.img
        mask = crown_mask(img) if self.kind == "crown" else np.zeros(img.shape[:3], bool)
        return apply_face_mask(volume, mask)


@pytest.fixture
def dataset(tmp_path):
    folder = tmp_path / "ds"
    shutil.copytree(DEMO, folder)
    return folder


@pytest.fixture
def wrong_mask(monkeypatch, defacer):
    def use(kind):
        def wrong(*args, **kwargs):
            return WrongMask(defacer, kind)
        monkeypatch.setattr(process, "load_defacer", wrong)  # the BIDS App's
        monkeypatch.setattr(pipeline, "load_defacer", wrong)  # deepdeface's
    return use


def failures(err: str) -> dict:
    return dict(re.findall(r"^  (\S+): (.+)$", err, flags=re.MULTILINE))


def participant(dataset, out, *extra) -> list:
    """The BIDS App's arguments for the first session of sub-01, with ``extra`` options."""
    return [str(dataset), str(out), "participant", *SELECT_SES_1, "--skip-bids-validation",
            "--device", "cpu", "--quiet", *extra]


def output_files(folder):
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


def test_a_face_left_is_a_failed_scan_and_is_not_written(dataset, tmp_path, wrong_mask, capsys):
    wrong_mask("crown")
    out = tmp_path / "out"
    status = main(participant(dataset, out, "--suffix", "T1w"))
    err = capsys.readouterr().err
    assert status == 1
    assert "1 scan(s): 0 defaced, 0 already up to date, 1 failed" in err
    assert failures(err)[T1W].startswith("face still present after defacing: nose ridge")
    assert not any("desc-defaced" in name or name.endswith("defacemask.nii.gz")
                   for name in output_files(out))


def test_a_mask_that_removes_nothing_fails(dataset, tmp_path, wrong_mask, capsys):
    wrong_mask("none")
    status = main(participant(dataset, tmp_path / "out", "--suffix", "T1w"))
    assert status == 1
    assert failures(capsys.readouterr().err)[T1W].startswith("the mask removes nothing")


def test_the_upload_copy_never_receives_a_face(dataset, tmp_path, wrong_mask, capsys):
    wrong_mask("crown")
    out = tmp_path / "out"
    status = main(participant(dataset, out, "--layout", "bids"))
    err = capsys.readouterr().err
    assert status == 1
    failed = failures(err)
    assert set(failed) >= {T1W, T2W}
    assert all(failed[relpath].startswith("face still present") for relpath in (T1W, T2W))
    copied = output_files(out)
    assert not any(name.endswith((".nii", ".nii.gz")) for name in copied)
    # Nor their sidecars: the copy stays a valid dataset.
    assert not {T1W.replace(".nii.gz", ".json"), T2W.replace(".nii.gz", ".json")} & copied


def test_allow_unverified_writes_for_inspection_and_still_fails(dataset, tmp_path, wrong_mask,
                                                                capsys):
    wrong_mask("crown")
    out = tmp_path / "out"
    arguments = participant(dataset, out, "--suffix", "T1w", "--allow-unverified")
    assert main(arguments) == 1
    assert "written anyway (--allow-unverified)" in failures(capsys.readouterr().err)[T1W]
    sidecar = out / "sub-01/ses-1/anat/sub-01_ses-1_desc-defaced_T1w.json"
    provenance = json.loads(sidecar.read_text())["Deepdefacer"]
    assert provenance["Verified"] is False
    assert provenance["Verification"]["Reason"].startswith("face still present")
    # An unverified output is never "up to date": the next run checks it again.
    assert main(arguments) == 1
    assert "already up to date, 1 failed" in capsys.readouterr().err


def test_an_earlier_output_of_a_scan_that_now_fails_is_removed(dataset, tmp_path, wrong_mask,
                                                               capsys):
    out = tmp_path / "out"
    arguments = participant(dataset, out, "--suffix", "T1w")
    assert main(arguments) == 0
    image = out / "sub-01/ses-1/anat/sub-01_ses-1_desc-defaced_T1w.nii.gz"
    assert image.is_file()
    wrong_mask("crown")
    assert main(arguments + ["--overwrite"]) == 1
    assert not image.exists() and not image.with_name(image.name.replace(".nii.gz", ".json")).exists()
    capsys.readouterr()


def test_deepdeface_does_not_write_a_face(tmp_path, wrong_mask, capsys):
    wrong_mask("crown")
    source = DEMO / T1W
    output = tmp_path / "defaced.nii.gz"
    assert deface_one.main([str(source), "-o", str(output), "--device", "cpu"]) == 1
    assert "face still present after defacing" in capsys.readouterr().err
    assert not output.exists()
    assert deface_one.main([str(source), "-o", str(output), "--device", "cpu",
                            "--allow-unverified"]) == 1
    assert output.is_file()


# ---------------------------------------------------------------------------------------------
# Geometry: a header without orientation fails; implausible sizes are measured, then verified


def without_orientation_codes(img) -> nib.Nifti1Image:
    header = img.header.copy()
    header["qform_code"] = 0
    header["sform_code"] = 0
    return nib.Nifti1Image(np.asanyarray(img.dataobj), None, header)


def test_a_header_without_orientation_fails_with_its_reason(dataset, tmp_path, capsys):
    path = dataset / T1W
    nib.save(without_orientation_codes(nib.load(path)), path)
    loaded = nib.load(path)
    assert (int(loaded.header["qform_code"]), int(loaded.header["sform_code"])) == (0, 0)
    status = main(participant(dataset, tmp_path / "out", "--skip-qc"))
    err = capsys.readouterr().err
    assert status == 1
    failed = failures(err)
    assert failed[T1W].startswith("the header has no orientation (qform_code and sform_code")
    assert T2W not in failed  # the session's other scan is defaced


@pytest.mark.parametrize("factor", [0.5, 2.0], ids=["stored-half-size", "stored-double-size"])
def test_a_head_stored_at_the_wrong_size_is_measured_and_verified(defacer, factor):
    """A 2 mm IXI head whose header says 1 mm (or 4 mm): one axis alone gives the lie away."""
    source = nib.load(IXI)
    affine = source.affine.copy()
    affine[:3, :3] *= factor
    img = nib.Nifti1Image(np.asanyarray(source.dataobj), affine)
    defaced, mask, details = deface_with_details(img, defacer)
    header = details["HeaderVoxelSizes"]
    assert header["AtlasFitUsed"]
    np.testing.assert_allclose(header["AtlasFit"], [2.0, 2.0, 2.0], rtol=0.1)
    verification = verify_defacing(img, defaced, np.asanyarray(mask.dataobj))
    assert verification.verified, verification.reason
    assert verification.face_before.face_present


def test_a_header_that_lies_about_orientation_still_shows_its_face():
    """The array turned 90 degrees under an unchanged header: the face is looked for from every
    side, so a 'defacing' that removed only the crown is still caught."""
    source = nib.load(IXI)
    turned = nib.Nifti1Image(np.ascontiguousarray(np.rot90(np.asanyarray(source.dataobj), 1, (1, 2))),
                             source.affine)
    mask = crown_mask(turned)
    verification = verify_defacing(turned, apply_face_mask(read_volume(turned), mask).image, mask)
    assert verification.face_before.face_present
    assert verification.view != HEADER_VIEW  # found from another side than the header's front
    assert not verification.verified
    assert verification.reason.startswith("face still present")


def test_pipeline_refuses_an_in_memory_image_without_orientation():
    img = without_orientation_codes(nib.load(IXI))
    with pytest.raises(InputError, match="no orientation"):
        read_volume(img)


def test_a_signed_scan_with_a_negative_background_is_filled_with_its_background(defacer):
    """Air stored at -128 (int8): the face takes the air's value, not 0 (a mid-grey block that
    surface renders, and the face check, read as the face), and the check passes on it."""
    source = nib.load(SHARED_DATA / "heads" / "ixi002_t1_6mm.nii.gz")
    data = source.get_fdata()
    signed = np.round(data / data.max() * 255 - 128).astype(np.int8)
    img = nib.Nifti1Image(signed, source.affine)
    img.header.set_data_dtype(np.int8)
    defaced, mask = deface_with_details(img, defacer)[:2]
    removed = np.asanyarray(mask.dataobj) > 0
    raw = np.asanyarray(defaced.dataobj)
    assert removed.any() and np.all(raw[removed] == -128)
    np.testing.assert_array_equal(raw[~removed], signed[~removed])
    verification = verify_defacing(img, defaced, removed)
    assert verification.verified, verification.reason


@pytest.mark.parametrize("name", ["ixi/IXI575-HH-2658_T1.nii.gz", "heads/ndd_example4_crop_psr.nii.gz"])
def test_a_short_nose_is_judged_against_itself(name, defacer):
    """A flat nose (12 mm) or a coarse crop's (9 mm) is shorter than the QC's nose: the original is
    still found to have a face, and a 'defacing' that keeps it fails, while the model's passes."""
    img = nib.load(SHARED_DATA / name)
    mask = crown_mask(img)
    verification = verify_defacing(img, apply_face_mask(read_volume(img), mask).image, mask)
    assert verification.face_before.face_present
    assert verification.face_before.nose_length_mm < 13.5  # the QC's own measure misses it
    assert not verification.verified
    assert verification.reason.startswith("face still present")
    defaced, removed = deface_with_details(img, defacer)[:2]
    assert verify_defacing(img, defaced, np.asanyarray(removed.dataobj) > 0).verified

"""deepdefacer-check on small BIDS datasets made from real heads."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import pytest
from qc_helpers import HEADS, requires_heads, slab_deface

from deepdefacer.cli.check import EXIT_FACE, EXIT_NO_FACE, EXIT_UNCHECKED, EXIT_USAGE, find_anatomical_scans, main

pytestmark = requires_heads


def make_dataset(root, faces: dict[str, bool]):
    """faces: BIDS relative path -> whether the scan keeps its face."""
    (root / "dataset_description.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "dataset_description.json").write_text('{"Name": "qc check test", "BIDSVersion": "1.9.0"}')
    sources = ["colin27_t1w_2mm.nii", "t1w_mni_2mm.nii.gz", "ixi002_t2_6mm.nii.gz"]
    for index, (relative, keep_face) in enumerate(faces.items()):
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        head = nib.load(HEADS / sources[index % len(sources)])
        image = head if keep_face else slab_deface(head)[0]
        nib.save(image, target)
    return root


def test_defaced_dataset_exits_0_and_writes_json(tmp_path, capsys):
    bids = make_dataset(tmp_path / "ds", {
        "sub-01/anat/sub-01_T1w.nii.gz": False,
        "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz": False,
        "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz": False,
    })
    out = tmp_path / "check.json"
    assert main([str(bids), "--json", str(out)]) == EXIT_NO_FACE
    report = json.loads(out.read_text())
    assert report["n_scans"] == 3 and report["n_face"] == 0
    assert sorted(s["file"] for s in report["scans"]) == [
        "sub-01/anat/sub-01_T1w.nii.gz", "sub-02/ses-1/anat/sub-02_ses-1_T1w.nii.gz",
        "sub-02/ses-1/anat/sub-02_ses-1_T2w.nii.gz"]
    assert "3 scans: 0 with a face" in capsys.readouterr().out


def test_one_face_left_exits_1_and_names_the_scan(tmp_path, capsys):
    bids = make_dataset(tmp_path / "ds", {
        "sub-01/anat/sub-01_T1w.nii.gz": False,
        "sub-02/anat/sub-02_T1w.nii.gz": True,
    })
    assert main([str(bids)]) == EXIT_FACE
    printed = capsys.readouterr().out
    assert "FACE  sub-02/anat/sub-02_T1w.nii.gz" in printed
    assert "FACE  sub-01" not in printed


def test_masks_are_not_checked_and_unreadable_scans_exit_3(tmp_path, capsys):
    bids = make_dataset(tmp_path / "ds", {"sub-01/anat/sub-01_T1w.nii.gz": False})
    shutil.copy(bids / "sub-01/anat/sub-01_T1w.nii.gz", bids / "sub-01/anat/sub-01_mod-T1w_defacemask.nii.gz")
    assert [p.name for p in find_anatomical_scans(bids)] == ["sub-01_T1w.nii.gz"]
    (bids / "sub-01/anat/sub-01_T2w.nii.gz").write_bytes(b"not a nifti")
    assert main([str(bids)]) == EXIT_UNCHECKED
    assert "ERROR sub-01/anat/sub-01_T2w.nii.gz" in capsys.readouterr().out


@pytest.mark.parametrize("arguments", [["/no/such/folder"], [], ["--bogus", "x"]])
def test_usage_errors_exit_2(arguments, tmp_path):
    with pytest.raises(SystemExit) as raised:
        main(arguments)
    assert raised.value.code == EXIT_USAGE


def test_folder_without_anatomical_scans_is_a_usage_error(tmp_path):
    (tmp_path / "sub-01" / "func").mkdir(parents=True)
    with pytest.raises(SystemExit) as raised:
        main([str(tmp_path)])
    assert raised.value.code == EXIT_USAGE


def test_a_scan_without_orientation_is_not_confirmed(tmp_path, capsys):
    """Which way the head faces is unknown: 'no face' would be a guess, so the dataset is not
    confirmed (exit 3), although the check sees no nose where the made-up orientation looks."""
    bids = make_dataset(tmp_path / "ds", {"sub-01/anat/sub-01_T1w.nii.gz": False})
    path = bids / "sub-01/anat/sub-01_T1w.nii.gz"
    img = nib.load(path)
    header = img.header.copy()
    header["qform_code"] = 0
    header["sform_code"] = 0
    nib.save(nib.Nifti1Image(img.get_fdata(), None, header), path)
    assert main([str(bids)]) == EXIT_UNCHECKED
    assert "ERROR sub-01/anat/sub-01_T1w.nii.gz: the header has no orientation" in capsys.readouterr().out

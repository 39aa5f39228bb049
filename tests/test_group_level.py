"""`deepdefacer bids_dir out group`: the report covers the selected scans, not the verdicts found.

The outputs are made without the model (a geometric slab cut, qc_helpers.slab_deface) but with
the real per-scan QC (qc_scan) on examples/ds-demo, under the names docs/bids-app.md gives.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from qc_helpers import slab_deface

from bids_app_helpers import DEMO, checksums, needs_shared_data
from deepdefacer.bids.outputs import prepare_output_dataset
from deepdefacer.bids.select import check_dataset
from deepdefacer.messages import EXIT_QC_FLAGGED, EXIT_SCANS_FAILED, EXIT_USAGE
from deepdefacer.cli.run import main
from deepdefacer.files import split_extension
from deepdefacer.qc.participant import qc_scan

pytestmark = needs_shared_data

SCANS = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
         "sub-01/ses-2/anat/sub-01_ses-2_PDw.nii.gz", "sub-02/anat/sub-02_run-1_T1w.nii.gz",
         "sub-02/anat/sub-02_run-2_T1w.nii"]
FACE_LEFT = SCANS[4]  # "defaced" with an empty mask: the QC flags it


def derivative_files(relpath: str) -> dict:
    """The derivatives of one source scan, by the naming of docs/bids-app.md."""
    folder, _, name = relpath.rpartition("/")
    stem, extension = split_extension(name)
    entities, _, suffix = stem.rpartition("_")
    return {"image": f"{folder}/{entities}_desc-defaced_{suffix}{extension}",
            "sidecar": f"{folder}/{entities}_desc-defaced_{suffix}.json",
            "mask": f"{folder}/{entities}_mod-{suffix}_defacemask.nii.gz",
            "mask_sidecar": f"{folder}/{entities}_mod-{suffix}_defacemask.json",
            "verdict": f"{relpath.split('/')[0]}/figures/{stem}_desc-qc_verdict.json"}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A complete derivatives folder of ds-demo: every scan defaced, with its QC."""
    out = tmp_path_factory.mktemp("group") / "derivatives"
    out.mkdir()
    prepare_output_dataset(out, DEMO, check_dataset(DEMO), "derivatives")
    for relpath in SCANS:
        files = derivative_files(relpath)
        img = nib.load(DEMO / relpath)
        if relpath == FACE_LEFT:
            defaced = img
            mask = nib.Nifti1Image(np.zeros(img.shape[:3], np.uint8), img.affine)
        else:
            defaced, mask = slab_deface(img)
        (out / files["image"]).parent.mkdir(parents=True, exist_ok=True)
        nib.save(defaced, out / files["image"])
        nib.save(mask, out / files["mask"])
        for key in ("sidecar", "mask_sidecar"):
            (out / files[key]).write_text(json.dumps({"Sources": [f"bids:raw:{relpath}"]}))
        qc_scan(img, defaced, mask, out / relpath.split("/")[0],
                split_extension(relpath)[0].rpartition("/")[2], source=relpath)
        assert (out / files["verdict"]).is_file()
    return out


@pytest.fixture
def derivatives(built, tmp_path):
    """A copy of the complete folder that a test may break."""
    return Path(shutil.copytree(built, tmp_path / "derivatives"))


def group(derivatives, *options):
    return main([str(DEMO), str(derivatives), "group", *options])


def summary_of(folder: Path) -> dict:
    return json.loads((folder / "qc_summary.json").read_text())


def test_complete_outputs_pass_and_flags_gate_only_when_asked(derivatives, capsys):
    assert group(derivatives) == 0
    err = capsys.readouterr().err
    summary = summary_of(derivatives)
    assert summary["n_scans"] == len(SCANS) and summary["n_incomplete"] == 0
    assert [scan["source"] for scan in summary["scans"] if scan["verdict"] == "flag"] == [FACE_LEFT]
    assert f"{len(SCANS)} scan(s): {len(SCANS) - 1} passed, 1 flagged, 0 incomplete" in err
    assert group(derivatives, "--fail-on-flag") == EXIT_QC_FLAGGED
    assert (derivatives / "qc_report.html").is_file()


def test_a_scan_whose_qc_was_interrupted_is_incomplete_even_without_fail_on_flag(derivatives,
                                                                                  capsys):
    missing = SCANS[1]
    (derivatives / derivative_files(missing)["verdict"]).unlink()
    assert group(derivatives) == EXIT_SCANS_FAILED
    err = capsys.readouterr().err
    assert f"  {missing}: no QC verdict {derivative_files(missing)['verdict']}" in err
    assert f"{len(SCANS)} scan(s): {len(SCANS) - 2} passed, 1 flagged, 1 incomplete" in err
    summary = summary_of(derivatives)
    assert [entry["source"] for entry in summary["incomplete"]] == [missing]
    assert summary["n_scans"] == len(SCANS)
    page = (derivatives / "qc_report.html").read_text()
    assert missing in page[page.index('id="incomplete"'):]
    tsv = [row.split("\t") for row in (derivatives / "qc_summary.tsv").read_text().splitlines()]
    assert [row[1] for row in tsv[1:]].count("incomplete") == 1
    assert group(derivatives, "--fail-on-flag") == EXIT_SCANS_FAILED


def test_a_scan_without_its_defaced_image_is_incomplete(derivatives, capsys):
    files = derivative_files(SCANS[3])
    (derivatives / files["image"]).unlink()
    assert group(derivatives) == EXIT_SCANS_FAILED
    assert f"  {SCANS[3]}: missing output(s): {files['image']}" in capsys.readouterr().err


def test_a_corrupt_verdict_is_reported_with_its_file_name(derivatives, capsys):
    verdict = derivative_files(SCANS[0])["verdict"]
    (derivatives / verdict).write_text('{"stem": "sub-01_ses-1_T1w", "verd')
    assert group(derivatives) == EXIT_SCANS_FAILED
    err = capsys.readouterr().err
    assert f"  {SCANS[0]}: unreadable QC verdict {verdict} (JSONDecodeError: " in err
    assert "Traceback" not in err


def test_only_the_selected_scans_count(derivatives, capsys):
    (derivatives / derivative_files(SCANS[3])["verdict"]).unlink()
    assert group(derivatives, "--participant-label", "01") == 0
    assert "3 scan(s): 3 passed, 0 flagged, 0 incomplete" in capsys.readouterr().err
    assert {scan["source"] for scan in summary_of(derivatives)["scans"]} == set(SCANS[:3])
    # The flagged scan is sub-02's: not selected, so it does not gate.
    assert group(derivatives, "--participant-label", "01", "--fail-on-flag") == 0
    assert group(derivatives, "--suffix", "T1w") == EXIT_SCANS_FAILED
    assert f"  {SCANS[3]}: no QC verdict" in capsys.readouterr().err
    filters = derivatives.parent / "filters.json"
    filters.write_text(json.dumps({"t1w": {"run": 2}}))
    assert group(derivatives, "--suffix", "T1w", "--bids-filter-file", str(filters)) == 0


def test_group_level_on_an_upload_ready_copy_writes_only_to_the_work_dir(tmp_path, capsys):
    copy = Path(shutil.copytree(DEMO, tmp_path / "copy"))
    for relpath in SCANS:  # what --layout bids adds: a mask and its sidecar per scan
        files = derivative_files(relpath)
        img = nib.load(DEMO / relpath)
        nib.save(nib.Nifti1Image(np.zeros(img.shape[:3], np.uint8), img.affine),
                 copy / files["mask"])
        (copy / files["mask_sidecar"]).write_text(json.dumps({"Sources": [f"bids::{relpath}"]}))
    before = checksums(copy)

    assert group(copy) == EXIT_USAGE
    err = capsys.readouterr().err
    assert f"{copy}: not a derivatives dataset written by Deepdefacer" in err
    assert "--work-dir" in err

    work = tmp_path / "work"
    assert group(copy, "--work-dir", str(work)) == 0
    assert "0 incomplete, 5 without per-scan QC" in capsys.readouterr().err
    assert summary_of(work)["n_without_qc"] == len(SCANS)
    assert (work / "qc_report.html").is_file()
    (copy / SCANS[2]).unlink()  # a failed scan is absent from the copy
    del before[SCANS[2]]
    assert group(copy, "--work-dir", str(work)) == EXIT_SCANS_FAILED
    assert f"  {SCANS[2]}: missing output(s): {SCANS[2]}" in capsys.readouterr().err
    assert checksums(copy) == before


def test_group_level_checks_the_selection_before_writing(derivatives, capsys):
    before = checksums(derivatives)
    assert group(derivatives, "--participant-label", "07") == EXIT_USAGE
    assert "participant(s) not found: sub-07" in capsys.readouterr().err
    assert checksums(derivatives) == before

"""Output names, dataset description and the --layout bids copy (no model needed)."""

from __future__ import annotations

import json
import os
import shutil

import pytest

from bids_app_helpers import BIDS_EXAMPLES, DEMO, checksums, copy_read_only, make_writable, \
    needs_shared_data
from deepdefacer.bids import jobs, layout_bids, outputs, select
from deepdefacer.bids.names import parse_name
from deepdefacer.errors import InputError

pytestmark = needs_shared_data


@pytest.mark.parametrize("source, defaced, mask", [
    ("sub-01_ses-1_T1w.nii.gz", "sub-01_ses-1_desc-defaced_T1w.nii.gz",
     "sub-01_ses-1_mod-T1w_defacemask.nii.gz"),
    ("sub-02_run-2_T1w.nii", "sub-02_run-2_desc-defaced_T1w.nii",
     "sub-02_run-2_mod-T1w_defacemask.nii.gz"),
    ("sub-1_acq-fast_ce-gad_rec-norm_run-3_echo-2_part-mag_T2starw.nii.gz",
     "sub-1_acq-fast_ce-gad_rec-norm_run-3_echo-2_part-mag_desc-defaced_T2starw.nii.gz",
     "sub-1_acq-fast_ce-gad_rec-norm_run-3_mod-T2starw_defacemask.nii.gz"),
    ("sub-1_inv-2_part-phase_MP2RAGE.nii", "sub-1_inv-2_part-phase_desc-defaced_MP2RAGE.nii",
     "sub-1_mod-MP2RAGE_defacemask.nii.gz"),
    ("sub-01_ses-2mo_space-anat_desc-preproc_T1w.nii.gz",
     "sub-01_ses-2mo_space-anat_desc-preprocDefaced_T1w.nii.gz",
     "sub-01_ses-2mo_mod-T1w_space-anat_desc-preproc_defacemask.nii.gz"),
])
def test_output_names(source, defaced, mask, tmp_path):
    name = parse_name(source)
    assert str(outputs.defaced_name(name)) == defaced
    scan = select.Scan(tmp_path / source, f"sub-x/anat/{source}", name)
    assert str(jobs.mask_name_for(scan)) == mask


def test_names_that_are_not_bids_are_refused():
    for filename in ("T1w.nii.gz", "sub-01_T1w_.nii", "sub-01__T1w.nii", "sub-01_sub-02_T1w.nii",
                     "sub-01_x_T1w.nii"):
        assert parse_name(filename) is None, filename


def test_dataset_description_is_a_valid_derivative_and_created_once(tmp_path):
    source_description = select.check_dataset(DEMO)
    outputs.prepare_output_dataset(tmp_path, DEMO, source_description, "derivatives")
    description = json.loads((tmp_path / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "Deepdefacer"
    assert description["SourceDatasets"] == [{"URL": DEMO.resolve().as_uri()}]
    (tmp_path / "dataset_description.json").write_text(
        json.dumps({**description, "Name": "kept"}))
    outputs.prepare_output_dataset(tmp_path, DEMO, source_description, "derivatives")
    assert json.loads((tmp_path / "dataset_description.json").read_text())["Name"] == "kept"
    with pytest.raises(InputError, match="holds another dataset"):
        outputs.prepare_output_dataset(tmp_path, DEMO, source_description, "bids")


def test_bids_copy_links_everything_but_the_defaced_images(tmp_path):
    dataset = copy_read_only(DEMO, tmp_path / "ds")
    before = checksums(dataset)
    scans = select.select_scans(select.open_layout(dataset), suffixes=["T1w", "T2w"])
    excluded = {scan.relpath for scan in scans}
    report = layout_bids.copy_dataset(dataset, tmp_path / "out", excluded)
    copied = {p.relative_to(tmp_path / "out").as_posix()
              for p in (tmp_path / "out").rglob("*") if p.is_file()}
    everything = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    # The PDw was not selected: it has its face, so it is left out of the copy, and reported; its
    # sidecar too (BIDS rejects a sidecar without its image).
    pdw = "sub-01/ses-2/anat/sub-01_ses-2_PDw.nii.gz"
    assert copied == everything - excluded - {pdw, pdw.replace(".nii.gz", ".json")}
    assert report.not_defaced == [pdw] and report.included_undefaced == []
    for relpath in copied:
        source, target = os.stat(dataset / relpath), os.stat(tmp_path / "out" / relpath)
        assert (source.st_dev, source.st_ino) == (target.st_dev, target.st_ino)  # hard link
    again = layout_bids.copy_dataset(dataset, tmp_path / "out", excluded)
    assert (again.copied, again.up_to_date) == (0, len(copied))
    assert checksums(dataset) == before
    make_writable(dataset)


def test_bids_copy_leaves_out_faces_it_was_not_asked_to_deface(tmp_path):
    """Unselected anatomy of any suffix, DICOMs and derivatives stay out of the upload-ready copy;
    an image copied there by an earlier run is removed; asked explicitly, anatomy is copied."""
    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    t1w = "sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz"
    unusual = "sub-01/ses-1/anat/sub-01_ses-1_angio.nii.gz"  # no suffix Deepdefacer selects
    shutil.copy(dataset / t1w, dataset / unusual)
    for folder in ("sourcedata/sub-01", "derivatives/fmriprep/sub-01/anat"):
        (dataset / folder).mkdir(parents=True)
        shutil.copy(dataset / t1w, dataset / folder / "face.nii.gz")
    out = tmp_path / "out"
    (out / "sub-01/ses-1/anat").mkdir(parents=True)
    os.link(dataset / unusual, out / unusual)  # as the copy of an earlier version left it
    report = layout_bids.copy_dataset(dataset, out, {t1w})
    copied = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert unusual in report.not_defaced and unusual not in copied
    assert report.left_out_folders == ["derivatives", "sourcedata"]
    assert not any(relpath.startswith(("sourcedata", "derivatives")) for relpath in copied)
    # Every image left has a face: none is copied.
    assert not any(relpath.endswith((".nii", ".nii.gz")) for relpath in copied)
    assert "sub-01/ses-1/anat/sub-01_ses-1_T1w.json" in copied  # the selected image's sidecar
    assert "sub-01/ses-1/anat/sub-01_ses-1_T2w.json" not in copied  # no sidecar without its image
    again = layout_bids.copy_dataset(dataset, out, {t1w}, include_undefaced=True)
    assert again.not_defaced == [] and unusual in again.included_undefaced
    assert (out / unusual).read_bytes() == (dataset / unusual).read_bytes()


def test_bids_copy_of_selected_participants_only(tmp_path):
    report = layout_bids.copy_dataset(DEMO, tmp_path / "out", set(), participant_labels=["02"])
    copied = sorted(p.relative_to(tmp_path / "out").as_posix()
                    for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert not any(relpath.startswith("sub-01") for relpath in copied)
    assert report.not_defaced == ["sub-02/anat/sub-02_run-1_T1w.nii.gz", "sub-02/anat/sub-02_run-2_T1w.nii"]
    assert "dataset_description.json" in copied and report.failed == []


def test_bids_copy_reports_broken_symlinks(tmp_path):
    dataset = tmp_path / "ds"
    (dataset / "sub-01" / "func").mkdir(parents=True)
    (dataset / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    (dataset / "sub-01" / "func" / "sub-01_task-rest_bold.nii.gz").symlink_to(
        "../../.git/annex/objects/missing")
    report = layout_bids.copy_dataset(dataset, tmp_path / "out", set())
    assert report.failed == [("sub-01/func/sub-01_task-rest_bold.nii.gz",
                              "broken symbolic link (fetch git-annex/DataLad content first, "
                              "e.g. `datalad get`): not copied")]


def test_qmri_mp2rage_jobs_use_a_magnitude_reference():
    layout = select.open_layout(BIDS_EXAMPLES / "qmri_mp2rage")
    job = jobs.plan_jobs(select.select_scans(layout, suffixes=["MP2RAGE"]))[0]
    assert job.reference.name.entities["part"] == "mag"

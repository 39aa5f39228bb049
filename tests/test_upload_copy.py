"""The upload-ready copy's own files and metadata (--layout bids), on examples/ds-demo made to look
like a converter's output: identifying keys in its sidecars, a CHANGES file, an old defacing mask.

The copy is made as the participant level makes it (outputs.prepare_output_dataset, then
layout_bids.copy_dataset with the images Deepdefacer writes left out); the defaced images
themselves are stood in for by the originals, which the model-free checks here do not look at.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import DEMO, checksums
from deepdefacer.bids import deidentify, jobs, layout_bids, outputs, select
from deepdefacer.bids.validate import validate_dataset
from deepdefacer.cli.parser import build_parser
from deepdefacer.config import Settings
from deepdefacer.provenance import version
from deepdefacer.qc import report

T1W = "sub-01/ses-1/anat/sub-01_ses-1_T1w"
RUN_1 = "sub-02/anat/sub-02_run-1_T1w"
IDENTIFYING = {"InstitutionName": "St Elsewhere Hospital", "InstitutionAddress": "1 Main St",
               "InstitutionalDepartmentName": "Radiology", "DeviceSerialNumber": "41234",
               "StationName": "MRC12345", "AcquisitionDateTime": "2021-03-04T10:11:12.000000",
               "AcquisitionDate": "2021-03-04", "PatientName": "Doe^Jane",
               "PatientBirthDate": "19700101", "OperatorsName": "Smith^John"}
INPUT_CHANGES = "1.0.0 2024-01-31\n  - Initial release.\n"


@pytest.fixture
def dataset(tmp_path):
    """ds-demo with identifying keys in two sidecars (AcquisitionTime as dcm2niix writes it),
    a CHANGES file and the mask of an earlier defacing of sub-02's run-1."""
    folder = tmp_path / "ds"
    shutil.copytree(DEMO, folder)
    for stem in (T1W, RUN_1):
        path = folder / f"{stem}.json"
        metadata = json.loads(path.read_text()) if path.exists() else {}
        metadata.update(IDENTIFYING, AcquisitionTime="10:11:12.000000")
        path.write_text(json.dumps(metadata, indent=2))
    (folder / "CHANGES").write_text(INPUT_CHANGES)
    old_mask = folder / "sub-02/anat/sub-02_run-1_mod-T1w_defacemask.nii"
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), old_mask)
    old_mask.with_suffix(".json").write_text(
        '{"Sources": ["bids::sub-02/anat/sub-02_run-1_T1w.nii.gz"]}')
    return folder


def make_copy(dataset, out, deidentify_keys=None):
    """What the participant level does for --layout bids, its defaced images stood in for."""
    description = select.check_dataset(dataset)
    scans = select.select_scans(select.open_layout(dataset), suffixes=["T1w", "T2w", "PDw"])
    produced = {scan.relpath for scan in scans}
    for job in jobs.plan_jobs(scans):
        for group in job.groups:
            produced |= {group.mask_relpath, group.mask_relpath.rsplit(".nii", 1)[0] + ".json"}
    out.mkdir(parents=True, exist_ok=True)
    outputs.prepare_output_dataset(out, dataset, description, "bids",
                                   deidentify_keys=deidentify_keys)
    copied = layout_bids.copy_dataset(dataset, out, produced, deidentify_keys=deidentify_keys)
    for scan in scans:
        if not (out / scan.relpath).exists():
            shutil.copy(scan.path, out / scan.relpath)
    return copied


def warnings_of(result, code="JSON_KEY_RECOMMENDED"):
    return {issue.get("subCode") for issue in result.warnings if issue.get("code") == code}


def deepdefacer_entries(changes: str) -> list:
    return re.findall(r"^  - Anatomical images defaced by Deepdefacer ", changes, re.MULTILINE)


# ---------------------------------------------------------------------------------------------
# dataset_description.json and CHANGES


def test_copy_description_names_deepdefacer_and_its_source_and_validates(dataset, tmp_path):
    out = tmp_path / "out"
    before = checksums(dataset)
    make_copy(dataset, out)
    description = json.loads((out / "dataset_description.json").read_text())
    source = json.loads((dataset / "dataset_description.json").read_text())
    assert {key: value for key, value in description.items()
            if key not in ("GeneratedBy", "SourceDatasets")} == source
    [generated_by] = description["GeneratedBy"]
    assert generated_by["Name"] == "Deepdefacer" and generated_by["Version"] == version()
    assert description["SourceDatasets"] == [{"URL": dataset.resolve().as_uri()}]
    result = validate_dataset(out)
    assert result.errors == [], result.summary()
    assert not {"GeneratedBy", "SourceDatasets"} & warnings_of(result)
    assert {"GeneratedBy", "SourceDatasets"} <= warnings_of(validate_dataset(dataset))
    assert checksums(dataset) == before, "the input was written to (a hard-linked file edited?)"


def test_changes_has_one_entry_after_two_runs(dataset, tmp_path):
    out = tmp_path / "out"
    make_copy(dataset, out)
    first = (out / "CHANGES").read_text()
    make_copy(dataset, out)
    changes = (out / "CHANGES").read_text()
    assert changes == first  # the rerun keeps the entry, and its date
    assert len(deepdefacer_entries(changes)) == 1
    head, bullet = changes.splitlines()[:2]
    assert re.fullmatch(r"1\.0\.1 \d{4}-\d{2}-\d{2}", head)  # the input's 1.0.0, one patch on
    assert bullet.startswith(f"  - Anatomical images defaced by Deepdefacer {version()} (")
    assert changes.endswith("\n\n" + INPUT_CHANGES)
    assert (dataset / "CHANGES").read_text() == INPUT_CHANGES


def test_changes_of_a_dataset_without_one_and_a_newer_version_replaces_the_entry(tmp_path):
    (tmp_path / "ds").mkdir()
    text = layout_bids.write_changes(tmp_path / "ds", tmp_path, "Deepdefacer", "3.0.0",
                                     today="2026-01-02")
    assert text == ("1.0.0 2026-01-02\n  - Anatomical images defaced by Deepdefacer 3.0.0 (the "
                    "face's voxels set to zero; each image's mask is its *_defacemask.nii.gz)\n")
    newer = layout_bids.write_changes(tmp_path / "ds", tmp_path, "Deepdefacer", "3.1.0",
                                      today="2026-02-03")
    assert len(deepdefacer_entries(newer)) == 1 and "Deepdefacer 3.1.0" in newer
    assert newer.startswith("1.0.0 2026-02-03\n")


def test_a_copy_of_another_dataset_is_refused_an_earlier_copy_accepted(dataset, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    description = select.check_dataset(dataset)
    # A copy made before the copy had its own description: the input's, byte for byte.
    shutil.copy(dataset / "dataset_description.json", out / "dataset_description.json")
    outputs.prepare_output_dataset(out, dataset, description, "bids")
    other = dict(description, Name="another study")
    (out / "dataset_description.json").write_text(json.dumps(other))
    with pytest.raises(outputs.InputError, match="holds another dataset"):
        outputs.prepare_output_dataset(out, dataset, description, "bids")


# ---------------------------------------------------------------------------------------------
# An input that already holds a defacing mask


def test_an_input_mask_that_the_copy_replaces_is_a_warning_naming_it(dataset, tmp_path, caplog):
    out = tmp_path / "out"
    with caplog.at_level(logging.WARNING, logger="deepdefacer"):
        copied = make_copy(dataset, out)
    old = "sub-02/anat/sub-02_run-1_mod-T1w_defacemask.nii"
    assert copied.replaced_masks == [old]
    assert [record.getMessage() for record in caplog.records if old in record.getMessage()] == [
        f"the input already holds {old}: Deepdefacer's mask replaces it in the upload-ready copy "
        "(the input's is not copied)"]
    # Neither it nor its sidecar is in the copy, where Deepdefacer's .nii.gz mask goes.
    assert not (out / old).exists() and not (out / old).with_suffix(".json").exists()


# ---------------------------------------------------------------------------------------------
# Identifying metadata


def test_deidentify_metadata_removes_the_default_keys_from_the_copy_only(dataset, tmp_path):
    out = tmp_path / "out"
    before = checksums(dataset)
    copied = make_copy(dataset, out, deidentify_keys=deidentify.DEFAULT_KEYS)
    for stem in (T1W, RUN_1):
        source = json.loads((dataset / f"{stem}.json").read_text())
        sidecar = json.loads((out / f"{stem}.json").read_text())
        assert not set(IDENTIFYING) & set(sidecar)
        assert sidecar == {key: value for key, value in source.items() if key not in IDENTIFYING}
        assert sidecar["AcquisitionTime"] == "10:11:12.000000"  # the time of day is kept
        assert os.stat(out / f"{stem}.json").st_ino != os.stat(dataset / f"{stem}.json").st_ino
    # Those two, and the T2w and PDw sidecars of ds-demo, which name IXI's hospital.
    assert copied.deidentified == 4
    pdw = json.loads((out / "sub-01/ses-2/anat/sub-01_ses-2_PDw.json").read_text())
    assert "InstitutionName" not in pdw and pdw["MagneticFieldStrength"] == 1.5
    # A JSON file without any of the keys is still the input's own file, linked.
    linked = [os.stat(folder / "participants.json").st_ino for folder in (out, dataset)]
    assert linked[0] == linked[1]
    changes = (out / "CHANGES").read_text()
    assert "  - Identifying keys removed from the JSON sidecars: PatientName" in changes
    assert checksums(dataset) == before
    result = validate_dataset(out)
    assert result.errors == [], result.summary()
    again = make_copy(dataset, out, deidentify_keys=deidentify.DEFAULT_KEYS)
    assert again.copied == 0 and again.deidentified == 0
    # Without the option the copy's sidecars are the input's again, byte for byte.
    make_copy(dataset, out)
    assert (out / f"{T1W}.json").read_bytes() == (dataset / f"{T1W}.json").read_bytes()


def test_deidentify_keys_chooses_the_keys(dataset, tmp_path):
    out = tmp_path / "out"
    make_copy(dataset, out, deidentify_keys=("StationName", "AcquisitionTime"))
    sidecar = json.loads((out / f"{T1W}.json").read_text())
    assert "StationName" not in sidecar and "AcquisitionTime" not in sidecar
    assert sidecar["InstitutionName"] == IDENTIFYING["InstitutionName"]


@pytest.mark.parametrize("arguments, keys", [
    ([], ()),
    (["--deidentify-metadata"], deidentify.DEFAULT_KEYS),
    (["--deidentify-keys", "StationName", "PatientName"], ("StationName", "PatientName")),
    (["--deidentify_metadata", "--deidentify_keys", "StationName"], ("StationName",)),
])
def test_the_options_reach_the_settings(arguments, keys, tmp_path):
    args = build_parser().parse_args([str(DEMO), str(tmp_path / "out"), "participant",
                                      "--layout", "bids", *arguments])
    assert Settings.from_args(args, "deepdefacer").deidentify_keys == keys


def test_the_default_keys_keep_the_time_of_day_and_cover_the_issue_list():
    assert "AcquisitionTime" not in deidentify.DEFAULT_KEYS
    assert set(IDENTIFYING) <= set(deidentify.DEFAULT_KEYS)
    assert {"PatientID", "PatientSex", "PatientAge", "PatientWeight", "ReferringPhysicianName",
            "ProcedureStepDescription"} <= set(deidentify.DEFAULT_KEYS)


def test_header_text_fields_are_blanked_and_nothing_else_changes():
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.diag([2, 2, 2, 1]))
    header = img.header
    for name, value in (("descrip", b"TE=2.9;Time=101112.000"), ("db_name", b"Doe^Jane"),
                        ("aux_file", b"study42"), ("intent_name", b"scan")):
        header[name] = value
    blanked = deidentify.blank_header_text(header)
    assert all(blanked[name].item() == b"" for name in deidentify.HEADER_TEXT_FIELDS)
    assert header["descrip"].item() == b"TE=2.9;Time=101112.000"  # a copy: the input's untouched
    for name in header.keys():
        if name not in deidentify.HEADER_TEXT_FIELDS:
            np.testing.assert_array_equal(blanked[name], header[name])


def test_has_header_text(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.uint8), np.eye(4))
    nib.save(img, tmp_path / "blank.nii")
    img.header["descrip"] = b"Doe^Jane"
    nib.save(img, tmp_path / "text.nii")
    assert not deidentify.has_header_text(tmp_path / "blank.nii")
    assert deidentify.has_header_text(tmp_path / "text.nii")


# ---------------------------------------------------------------------------------------------
# The group level reports the identifying keys left


def test_group_report_lists_the_identifying_keys_left_in_a_copy(dataset, tmp_path, caplog):
    out, work = tmp_path / "out", tmp_path / "work"
    make_copy(dataset, out)
    with caplog.at_level(logging.WARNING, logger="deepdefacer"):
        result = report.write_report(out, [], work)
    found = json.loads((work / "qc_summary.json").read_text())["identifying_metadata"]
    assert found["dataset"] == str(out)
    assert set(IDENTIFYING) <= set(found["keys"]) and found["keys"]["PatientName"] == 2
    assert found["examples"]["PatientName"] in (f"{T1W}.json", f"{RUN_1}.json")
    assert result.identifying_metadata == found
    [line] = [r.getMessage() for r in caplog.records if "identifying metadata" in r.getMessage()]
    assert line.startswith(f"identifying metadata left in the sidecars of {out}: ")
    assert "PatientName (2)" in line and "\n" not in line
    assert 'id="identifying"' in (work / "qc_report.html").read_text()
    # After --deidentify-metadata none of the default keys is left, and nothing is said.
    make_copy(dataset, out, deidentify_keys=deidentify.DEFAULT_KEYS)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepdefacer"):
        result = report.write_report(out, [], work)
    assert result.identifying_metadata["keys"] == {}
    assert not [r for r in caplog.records if "identifying metadata" in r.getMessage()]
    result = validate_dataset(out)
    assert result.errors == [], result.summary()  # the report went to --work-dir


def test_group_report_of_derivatives_reads_the_input_sidecars(dataset, tmp_path):
    out = tmp_path / "derivatives"
    out.mkdir()
    outputs.prepare_output_dataset(out, dataset, select.check_dataset(dataset), "derivatives")
    result = report.write_report(out, [])
    assert result.identifying_metadata["dataset"] == str(dataset.resolve())
    assert result.identifying_metadata["keys"]["DeviceSerialNumber"] == 2


# ---------------------------------------------------------------------------------------------
# The BIDS App itself (the model on sub-02's two T1w runs, one prediction: --mask-from T1w)


def app(dataset, out, *extra) -> list:
    return [str(dataset), str(out), "participant", "--participant-label", "02", "--suffix",
            "T1w", "--mask-from", "T1w", "--device", "cpu", "--quiet", *extra]


@pytest.mark.slow
def test_the_app_makes_a_valid_copy_twice_and_its_group_level_reports_the_keys(
        dataset, tmp_path, capsys):
    from deepdefacer.cli.run import main

    out, work = tmp_path / "out", tmp_path / "work"
    assert main(app(dataset, out, "--layout", "bids")) == 0
    err = capsys.readouterr().err
    assert ("the input already holds sub-02/anat/sub-02_run-1_mod-T1w_defacemask.nii: "
            "Deepdefacer's mask replaces it") in err
    assert main(app(dataset, out, "--layout", "bids")) == 0
    assert "0 defaced, 2 already up to date, 0 failed" in capsys.readouterr().err
    changes = (out / "CHANGES").read_text()
    assert len(deepdefacer_entries(changes)) == 1 and changes.endswith(INPUT_CHANGES)
    assert not (out / "sub-02/anat/sub-02_run-1_mod-T1w_defacemask.nii").exists()
    result = validate_dataset(out)
    assert result.errors == [], result.summary()
    assert not {"GeneratedBy", "SourceDatasets"} & warnings_of(result)
    assert main([str(dataset), str(out), "group", "--participant-label", "02", "--suffix",
                 "T1w", "-w", str(work), "--quiet"]) == 0
    assert "identifying metadata left in the sidecars of" in capsys.readouterr().err
    summary = json.loads((work / "qc_summary.json").read_text())
    assert summary["identifying_metadata"]["keys"]["PatientName"] == 1  # sub-02's run-1 only
    assert validate_dataset(out).errors == []  # the report went to --work-dir


@pytest.mark.slow
def test_the_app_deidentifies_the_copy_and_redoes_a_copy_made_without_it(dataset, tmp_path, capsys):
    """Run once without the option (header text and keys kept), then with it: the scans are
    redone with blank header text, the keys go, and the voxels stay as they were."""
    from deepdefacer.cli.run import main

    out = tmp_path / "out"
    image = out / f"{RUN_1}.nii.gz"
    assert main(app(dataset, out, "--layout", "bids")) == 0
    source = nib.load(dataset / f"{RUN_1}.nii.gz")
    source_text = bytes(source.header["descrip"]).rstrip(b"\0")
    kept = nib.load(image)
    assert bytes(kept.header["descrip"]).rstrip(b"\0") == source_text
    voxels = np.asanyarray(kept.dataobj).copy()
    assert main(app(dataset, out, "--layout", "bids", "--deidentify-metadata")) == 0
    assert "2 defaced, 0 already up to date" in capsys.readouterr().err
    blanked = nib.load(image)
    assert not deidentify.has_header_text(image)
    np.testing.assert_array_equal(np.asanyarray(blanked.dataobj), voxels)
    sidecar = json.loads((out / f"{RUN_1}.json").read_text())
    assert not set(IDENTIFYING) & set(sidecar) and sidecar["AcquisitionTime"]
    assert main(app(dataset, out, "--layout", "bids", "--deidentify-metadata")) == 0
    assert "0 defaced, 2 already up to date" in capsys.readouterr().err


def test_deidentify_needs_the_upload_copy(tmp_path, capsys):
    from deepdefacer.cli.run import main

    assert main([str(DEMO), str(tmp_path / "out"), "participant", "--deidentify-metadata"]) == 2
    assert "need --layout bids" in capsys.readouterr().err


@pytest.mark.slow
def test_with_mask_from_the_derivative_sidecar_lists_the_mask_source(dataset, tmp_path):
    from deepdefacer.cli.run import main

    out = tmp_path / "derivatives"
    assert main(app(dataset, out, "--skip-qc")) == 0
    sidecar = json.loads((out / "sub-02/anat/sub-02_run-2_desc-defaced_T1w.json").read_text())
    assert sidecar["Description"] == outputs.IMAGE_DESCRIPTION
    assert sidecar["Sources"] == ["bids:raw:sub-02/anat/sub-02_run-2_T1w.nii",
                                  "bids::sub-02/anat/sub-02_run-2_mod-T1w_defacemask.nii.gz",
                                  "bids:raw:sub-02/anat/sub-02_run-1_T1w.nii.gz"]
    assert validate_dataset(out).errors == []

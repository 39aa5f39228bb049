"""The BIDS App end to end on examples/ds-demo with the shipped model (load_defacer()).

The input is a read-only copy whose checksums are compared after every run. Runs happen in this
process so the model is loaded once; the killed-run test uses a subprocess.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import (DEMO, HEADS, REPO, checksums, copy_read_only, make_writable,
                              needs_shared_data, nifti_bytes)
from deepdefacer import files, nifti
from deepdefacer.bids.validate import validate_dataset
from deepdefacer.cli import deface_one
from deepdefacer.cli.run import main

pytestmark = [needs_shared_data, pytest.mark.slow]

SCANS = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz", "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
         "sub-01/ses-2/anat/sub-01_ses-2_PDw.nii.gz", "sub-02/anat/sub-02_run-1_T1w.nii.gz",
         "sub-02/anat/sub-02_run-2_T1w.nii"]


def derivative_paths(relpath: str):
    """(defaced image, its sidecar, mask) of a source scan in the derivatives layout."""
    folder, _, name = relpath.rpartition("/")
    stem, extension = files.split_extension(name)
    entities, _, suffix = stem.rpartition("_")
    return (f"{folder}/{entities}_desc-defaced_{suffix}{extension}",
            f"{folder}/{entities}_desc-defaced_{suffix}.json",
            f"{folder}/{entities}_mod-{suffix}_defacemask.nii.gz")


def bids_mask_path(relpath: str) -> str:
    folder, _, name = relpath.rpartition("/")
    entities, _, suffix = files.split_extension(name)[0].rpartition("_")
    return f"{folder}/{entities}_mod-{suffix}_defacemask.nii.gz"


def assert_defaced_copy(source: Path, defaced: Path, mask_path: Path):
    """Outside the mask every raw voxel is bit-identical; header, dtype, scaling as the source."""
    source_img, defaced_img = nib.load(source), nib.load(defaced)
    mask = np.asanyarray(nib.load(mask_path).dataobj)
    assert mask.dtype == np.uint8 and mask.shape == source_img.shape[:3]
    assert set(np.unique(mask)) <= {0, 1}
    assert mask.sum() > 0, f"{source.name}: the model removed nothing"
    offset = int(source_img.dataobj.offset)
    assert nifti_bytes(defaced)[:offset] == nifti_bytes(source)[:offset], "header bytes differ"
    assert defaced_img.get_data_dtype() == source_img.get_data_dtype()
    assert (defaced_img.dataobj.slope, defaced_img.dataobj.inter) == \
        (source_img.dataobj.slope, source_img.dataobj.inter)
    np.testing.assert_array_equal(defaced_img.affine, source_img.affine)
    raw_source = np.asanyarray(source_img.dataobj.get_unscaled())
    raw_defaced = np.asanyarray(defaced_img.dataobj.get_unscaled())
    outside = mask.reshape(raw_source.shape) == 0
    np.testing.assert_array_equal(raw_defaced[outside], raw_source[outside])
    assert np.any(raw_defaced[~outside] != raw_source[~outside]), "nothing changed in the mask"


def assert_validates(folder: Path):
    result = validate_dataset(folder)
    assert result.errors == [], result.summary()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = copy_read_only(DEMO, tmp_path_factory.mktemp("input") / "ds-demo")
    before = checksums(folder)
    yield folder
    assert checksums(folder) == before, "the input dataset was modified"
    make_writable(folder)


@pytest.fixture(scope="module")
def derivatives(dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("derivatives") / "out"
    status = main([str(dataset), str(output), "participant", "--device", "cpu", "--quiet"])
    assert status == 0
    return output


@pytest.fixture(scope="module")
def bids_copy(dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("bids") / "out"
    # --mask-from T1w: the T2w and sub-02's run-2 get resampled T1w masks (3 predictions, not 5).
    status = main([str(dataset), str(output), "participant", "--layout", "bids", "--device",
                   "cpu", "--quiet", "--mask-from", "T1w"])
    assert status == 0
    return output


# ---------------------------------------------------------------------------------------------
# --layout derivatives


def test_derivatives_validate_with_zero_errors(derivatives):
    assert_validates(derivatives)
    description = json.loads((derivatives / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative"
    assert description["GeneratedBy"][0]["Name"] == "Deepdefacer"
    assert description["GeneratedBy"][0]["Version"] == (REPO / "version").read_text().strip()
    assert description["DatasetLinks"]["raw"].startswith("file://")


@pytest.mark.parametrize("relpath", SCANS)
def test_derivative_is_the_input_with_only_the_face_changed(relpath, dataset, derivatives):
    image, _, mask = derivative_paths(relpath)
    assert_defaced_copy(dataset / relpath, derivatives / image, derivatives / mask)


@pytest.mark.parametrize("relpath", SCANS)
def test_sidecars_carry_sources_metadata_and_provenance(relpath, dataset, derivatives,
                                                        defacer):
    _, sidecar_path, mask = derivative_paths(relpath)
    sidecar = json.loads((derivatives / sidecar_path).read_text())
    assert sidecar["Sources"] == [f"bids:raw:{relpath}", f"bids::{mask}"]
    provenance = sidecar["Deepdefacer"]
    predictor = defacer.predictor
    assert provenance["Model"] == predictor.model_name
    assert provenance["ModelSHA256"] == predictor.model_sha256
    assert provenance["Decision"] == defacer.decision
    assert provenance["Decision"]["FaceGrowthMM"] == predictor.thresholds.face_dilate_mm
    assert provenance["Decision"]["BrainMarginMM"] == predictor.thresholds.brain_margin_mm
    assert provenance["InputSHA256"] == files.sha256_file(dataset / relpath)
    assert provenance["Device"] == str(predictor.device)
    assert provenance["Seconds"] > 0
    assert provenance["CommandLine"].startswith("deepdefacer ")
    assert provenance["Version"] == (REPO / "version").read_text().strip()
    if relpath.startswith("sub-01"):  # acquisition metadata of the source sidecar
        assert sidecar["MagneticFieldStrength"] == 1.5
    mask_sidecar = json.loads((derivatives / mask.replace(".nii.gz", ".json")).read_text())
    assert mask_sidecar["Sources"] == [f"bids:raw:{relpath}"]


def test_no_other_files_in_derivatives(derivatives):
    expected = {"dataset_description.json", "README.md", ".bidsignore"}
    for relpath in SCANS:
        image, sidecar, mask = derivative_paths(relpath)
        expected |= {image, sidecar, mask, mask.replace(".nii.gz", ".json")}
        subject, stem = relpath.split("/")[0], files.split_extension(relpath)[0].split("/")[-1]
        qc_stem = f"{subject}/figures/{stem}"
        expected |= {f"{qc_stem}_desc-qc_{kind}" for kind in ("render.png", "slices.png",
                                                                "verdict.json")}
    written = {p.relative_to(derivatives).as_posix() for p in derivatives.rglob("*")
               if p.is_file()}
    assert written == expected


# ---------------------------------------------------------------------------------------------
# --layout bids


def test_group_level_writes_the_qc_report(dataset, derivatives):
    assert main([str(dataset), str(derivatives), "group", "--quiet"]) in (0, 1)
    summary = json.loads((derivatives / "qc_summary.json").read_text())
    assert summary["n_scans"] == len(SCANS)
    assert (derivatives / "qc_report.html").stat().st_size > 0
    assert_validates(derivatives)  # the QC files are in .bidsignore


def test_bids_copy_validates_with_zero_errors(bids_copy):
    assert_validates(bids_copy)


def test_bids_copy_has_every_file_with_anatomy_defaced(dataset, bids_copy):
    source_files = {p.relative_to(dataset).as_posix() for p in dataset.rglob("*") if p.is_file()}
    copied = {p.relative_to(bids_copy).as_posix() for p in bids_copy.rglob("*") if p.is_file()}
    masks = {bids_mask_path(relpath) for relpath in SCANS}
    # The copy's own CHANGES entry says how it was defaced; its description names Deepdefacer.
    assert copied == source_files | masks | {m.replace(".nii.gz", ".json") for m in masks} | {"CHANGES"}
    for relpath in source_files - set(SCANS) - {"dataset_description.json"}:
        assert (bids_copy / relpath).read_bytes() == (dataset / relpath).read_bytes()
    for relpath in SCANS:
        assert_defaced_copy(dataset / relpath, bids_copy / relpath,
                            bids_copy / bids_mask_path(relpath))


# ---------------------------------------------------------------------------------------------
# Re-runs


def test_rerun_skips_up_to_date_scans_and_overwrite_redoes_them(dataset, derivatives, capsys,
                                                                tmp_path):
    image = derivatives / derivative_paths(SCANS[0])[0]
    inode = image.stat().st_ino
    work = tmp_path / "work"
    assert main([str(dataset), str(derivatives), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--skip-qc", "-w", str(work)]) == 0
    err = capsys.readouterr().err
    assert "5 scan(s): 0 defaced, 5 already up to date, 0 failed" in err
    # Numbered lines for logs without a progress bar; the summary says where and what next.
    assert "[5/5] up to date " in err
    assert f"Outputs in {derivatives} (" in err
    assert f"Next, the QC report: deepdefacer {dataset} {derivatives} group" in err
    log_text = (work / "deepdefacer.log").read_text()
    assert "started " in log_text and "participant --skip-bids-validation" in log_text
    assert "5 scan(s): 0 defaced, 5 already up to date, 0 failed" in log_text
    assert image.stat().st_ino == inode  # not rewritten

    assert main([str(dataset), str(derivatives), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--skip-qc", "--overwrite", "--participant-label",
                 "sub-01"]) == 0
    assert "3 scan(s): 3 defaced, 0 already up to date, 0 failed" in capsys.readouterr().err
    assert image.stat().st_ino != inode  # a new file renamed into place
    assert_defaced_copy(dataset / SCANS[0], image, derivatives / derivative_paths(SCANS[0])[2])


def test_a_rerun_over_finished_outputs_does_not_load_tensorflow(dataset, derivatives):
    """The up-to-date check reads the model's sha256 and card only: a resubmitted SLURM array
    costs each task seconds, not TensorFlow's import and the model's load."""
    arguments = [str(dataset), str(derivatives), "participant", "--skip-bids-validation",
                 "--device", "cpu"]
    code = ("import sys; from deepdefacer.cli.run import main; status = main(sys.argv[1:]); "
            "print('tensorflow' in sys.modules); sys.exit(status)")
    run = subprocess.run([sys.executable, "-c", code, *arguments], capture_output=True, text=True,
                         cwd=REPO, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"{len(SCANS)} already up to date" in run.stderr
    assert run.stdout.strip() == "False"


def test_output_made_with_other_thresholds_is_redone(dataset, derivatives, capsys):
    # Same model file, other decision thresholds (another model card): not up to date.
    _, sidecar_path, _ = derivative_paths(SCANS[2])
    sidecar = json.loads((derivatives / sidecar_path).read_text())
    sidecar["Deepdefacer"]["Decision"]["FaceGrowthMM"] += 1.0
    (derivatives / sidecar_path).write_text(json.dumps(sidecar))
    assert main([str(dataset), str(derivatives), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--skip-qc", "--participant-label", "01",
                 "--session-label", "2"]) == 0
    assert "1 scan(s): 1 defaced, 0 already up to date" in capsys.readouterr().err


def test_changed_input_is_redone(dataset, derivatives, tmp_path, capsys):
    # A sidecar whose recorded input checksum differs (as after the input changed) is redone.
    _, sidecar_path, _ = derivative_paths(SCANS[2])
    sidecar = json.loads((derivatives / sidecar_path).read_text())
    sidecar["Deepdefacer"]["InputSHA256"] = "0" * 64
    (derivatives / sidecar_path).write_text(json.dumps(sidecar))
    assert main([str(dataset), str(derivatives), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--skip-qc", "--participant-label", "01",
                 "--session-label", "2"]) == 0
    assert "1 scan(s): 1 defaced, 0 already up to date" in capsys.readouterr().err
    recorded = json.loads((derivatives / sidecar_path).read_text())["Deepdefacer"]
    assert recorded["InputSHA256"] == files.sha256_file(dataset / SCANS[2])


# ---------------------------------------------------------------------------------------------
# Interrupted runs


def test_interrupt_while_writing_leaves_no_partial_file(dataset, tmp_path, monkeypatch):
    output = tmp_path / "out"
    real_replace = os.replace
    calls = []

    def replace_then_interrupt(source, target):
        calls.append(target)
        if len(calls) == 3:  # mid-way through the first job's files
            raise KeyboardInterrupt
        return real_replace(source, target)

    monkeypatch.setattr(files.os, "replace", replace_then_interrupt)
    status = main([str(dataset), str(output), "participant", "--skip-bids-validation",
                   "--device", "cpu", "--quiet", "--skip-qc", "--participant-label", "01"])
    assert status == 130
    leftovers = [p for p in output.rglob("*") if files.TEMPORARY_MARKER in p.name]
    assert leftovers == []
    for path in output.rglob("*.nii*"):
        assert nifti.is_complete_nifti(path), path
    monkeypatch.setattr(files.os, "replace", real_replace)
    assert main([str(dataset), str(output), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--quiet", "--skip-qc", "--participant-label", "01"]) == 0
    assert_validates(output)


def test_killed_process_leaves_only_complete_files(dataset, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, str(REPO / "run.py"), str(dataset), str(output), "participant",
               "--skip-bids-validation", "--device", "cpu", "--skip-qc", "--participant-label",
               "01"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    for line in process.stderr:  # kill right after the first scan is done, mid-way through
        if "] defaced " in line or time.monotonic() > deadline:
            break
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    finals = [p for p in output.rglob("*") if p.is_file() and not p.name.startswith(".")]
    assert any("_desc-defaced_" in p.name and ".nii" in p.name for p in finals)  # a job was done
    for path in finals:
        if ".nii" in path.name:
            assert nifti.is_complete_nifti(path), path
        elif path.suffix == ".json":
            json.loads(path.read_text())
    # The next run finishes the job and removes any temporaries the kill left.
    completed = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert [p for p in output.rglob("*") if files.TEMPORARY_MARKER in p.name] == []
    assert_validates(output)


def test_sigterm_stops_cleanly(dataset, tmp_path):
    # SLURM's time limit and `docker stop` send SIGTERM: temporaries are removed, exit 130.
    output = tmp_path / "out"
    command = [sys.executable, str(REPO / "run.py"), str(dataset), str(output), "participant",
               "--skip-bids-validation", "--device", "cpu", "--skip-qc", "--participant-label",
               "01"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "] defaced " in line:
            break
    process.send_signal(signal.SIGTERM)
    rest = process.stderr.read()
    assert process.wait(timeout=120) == 130, rest
    assert "interrupted" in rest and "Traceback" not in rest
    assert [p for p in output.rglob("*") if files.TEMPORARY_MARKER in p.name] == []
    for path in output.rglob("*.nii*"):
        assert nifti.is_complete_nifti(path), path


def test_sigterm_with_several_processes_stops_the_workers_and_the_queue(dataset, tmp_path):
    output = tmp_path / "out"
    command = [sys.executable, str(REPO / "run.py"), str(dataset), str(output), "participant",
               "--skip-bids-validation", "--device", "cpu", "--skip-qc", "--n-procs", "2"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(output.rglob("*_desc-defaced_*.json")) and time.monotonic() < deadline:
        time.sleep(0.05)  # the first scan's completion record: the workers are at work
    signalled = time.monotonic()
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    # The workers were stopped, not left to finish the rest of the five scans.
    assert time.monotonic() - signalled < 8.0, err
    assert "interrupted" in err and "Traceback" not in err
    completed = list(output.rglob("*_desc-defaced_*.json"))
    assert 1 <= len(completed) < len(SCANS)
    assert main([str(dataset), str(output), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--quiet", "--skip-qc"]) == 0
    assert [p for p in output.rglob("*") if files.TEMPORARY_MARKER in p.name] == []
    assert len(list(output.rglob("*_desc-defaced_*.json"))) == len(SCANS)


def test_parallel_runs_on_different_participants_share_one_output(dataset, tmp_path):
    # Like a SLURM array: one task per participant, started together, one output folder.
    output = tmp_path / "out"
    tasks = [subprocess.Popen([sys.executable, str(REPO / "run.py"), str(dataset), str(output),
                               "participant", "--participant-label", label,
                               "--skip-bids-validation", "--device", "cpu", "--skip-qc",
                               "--quiet"], stderr=subprocess.PIPE, text=True)
             for label in ("01", "02")]
    for task in tasks:
        assert task.wait(timeout=600) == 0, task.stderr.read()
    description = json.loads((output / "dataset_description.json").read_text())
    assert description["GeneratedBy"][0]["Name"] == "Deepdefacer"
    for relpath in SCANS:
        image, _, mask = derivative_paths(relpath)
        assert_defaced_copy(dataset / relpath, output / image, output / mask)
    assert_validates(output)


def test_gpu_requested_without_gpu_is_one_clear_error(dataset, tmp_path, capsys):
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("this machine has a GPU")
    status = main([str(dataset), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                   "--device", "gpu", "--quiet", "--participant-label", "02"])
    err = capsys.readouterr().err
    assert status == 1
    assert "cannot load the Deepdefacer model on device 'gpu'" in err
    assert "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# Bad input files among good ones


def test_bad_files_fail_one_by_one_while_the_rest_is_defaced(tmp_path, capsys):
    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    shutil.rmtree(dataset / "sub-02")
    anat = dataset / "sub-03" / "anat"
    anat.mkdir(parents=True)
    head = nib.load(HEADS / "ixi002_t1_6mm.nii.gz")
    (anat / "sub-03_run-1_T1w.nii.gz").write_bytes(
        (HEADS / "ixi002_t1_6mm.nii.gz").read_bytes()[:200_000])
    (anat / "sub-03_run-2_T1w.nii.gz").write_text("not an image\n")
    data = np.asanyarray(head.dataobj)
    nib.save(nib.Nifti1Image(np.stack([data, data], -1), head.affine),
             anat / "sub-03_run-3_T1w.nii.gz")
    with_nan = head.get_fdata().astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    nib.save(nib.Nifti1Image(with_nan, head.affine), anat / "sub-03_run-4_T1w.nii.gz")
    (anat / "sub-03_T2w.nii.gz").symlink_to("../../.git/annex/objects/missing.nii.gz")
    (dataset / "participants.tsv").write_text("participant_id\tsource\nsub-01\tIXI002\n"
                                              "sub-03\tbroken files\n")
    output = tmp_path / "out"
    status = main([str(dataset), str(output), "participant", "--skip-bids-validation",
                   "--device", "cpu", "--quiet", "--skip-qc"])
    err = capsys.readouterr().err
    assert status == 1
    assert "Traceback" not in err
    assert "8 scan(s): 3 defaced, 0 already up to date, 5 failed" in err
    failed = dict(re.findall(r"^  (\S+): (.+)$", err, flags=re.MULTILINE))
    assert failed["sub-03/anat/sub-03_run-1_T1w.nii.gz"].startswith(
        "truncated: the header promises 2301120 bytes")
    assert failed["sub-03/anat/sub-03_run-2_T1w.nii.gz"] == \
        "not a NIfTI file (no NIfTI-1/NIfTI-2 header: wrong magic)"
    assert failed["sub-03/anat/sub-03_run-3_T1w.nii.gz"].startswith("4D image")
    assert failed["sub-03/anat/sub-03_run-4_T1w.nii.gz"] == "image contains 1 NaN or " \
                                                            "infinite voxels"
    assert failed["sub-03/anat/sub-03_T2w.nii.gz"].startswith("broken symbolic link")
    for relpath in SCANS[:3]:
        image, _, mask = derivative_paths(relpath)
        assert_defaced_copy(dataset / relpath, output / image, output / mask)
    assert not (output / "sub-03").exists()


# ---------------------------------------------------------------------------------------------
# --mask-from, --n-procs, deepdeface


def test_mask_from_t1w_carries_the_t1w_mask_to_the_session(bids_copy):
    from deepdefacer.mask_transfer import resample_mask

    for reference, follower in ((SCANS[0], SCANS[1]), (SCANS[3], SCANS[4])):
        reference_mask = nib.load(bids_copy / bids_mask_path(reference))
        follower_mask = nib.load(bids_copy / bids_mask_path(follower))
        carried = resample_mask(np.asanyarray(reference_mask.dataobj), reference_mask.affine,
                                follower_mask.shape, follower_mask.affine)
        np.testing.assert_array_equal(np.asanyarray(follower_mask.dataobj), carried)
        sidecar = json.loads((bids_copy / bids_mask_path(follower).replace(".nii.gz", ".json"))
                             .read_text())
        assert sidecar["Sources"] == [f"bids::{reference}"]
        assert sidecar["Deepdefacer"]["MaskSource"] == f"bids::{reference}"


def test_parallel_processes(dataset, tmp_path):
    output = tmp_path / "out"
    assert main([str(dataset), str(output), "participant", "--skip-bids-validation",
                 "--device", "cpu", "--quiet", "--skip-qc", "--participant-label", "01",
                 "--n-procs", "2"]) == 0
    for relpath in SCANS[:3]:
        image, _, mask = derivative_paths(relpath)
        assert_defaced_copy(dataset / relpath, output / image, output / mask)


def test_deepdeface_one_file_with_applyto(tmp_path, capsys):
    t1, t2 = tmp_path / "t1.nii.gz", tmp_path / "t2.nii.gz"
    shutil.copy(HEADS / "ixi002_t1_6mm.nii.gz", t1)
    shutil.copy(HEADS / "ixi002_t2_6mm.nii.gz", t2)
    status = deface_one.main([str(t1), "-o", str(tmp_path / "t1_out.nii.gz"), "--mask-out",
                              str(tmp_path / "mask.nii.gz"), "--applyto", str(t2),
                              "--device", "cpu"])
    assert status == 0, capsys.readouterr().err
    assert_defaced_copy(t1, tmp_path / "t1_out.nii.gz", tmp_path / "mask.nii.gz")
    mask_img = nib.load(tmp_path / "mask.nii.gz")
    from deepdefacer.mask_transfer import resample_mask

    t2_img = nib.load(t2)
    t2_mask = resample_mask(np.asanyarray(mask_img.dataobj), mask_img.affine, t2_img.shape,
                            t2_img.affine)
    nib.save(nib.Nifti1Image(t2_mask, t2_img.affine), tmp_path / "t2_mask.nii.gz")
    assert_defaced_copy(t2, tmp_path / "t2_defaced.nii.gz", tmp_path / "t2_mask.nii.gz")

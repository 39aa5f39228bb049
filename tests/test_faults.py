"""Faults at every write step: a run killed (SIGKILL), stopped (SIGTERM) or out of disk space while
writing any output of a scan leaves it incomplete, the group level says so and fails, and the next
run completes it exactly as an undisturbed run would have.

The faulted run is a subprocess (tests/fault_runner.py) that stops itself right after the chosen
output's temporary file is written, before it is renamed into place: the worst moment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bids_app_helpers import HEADS, REPO, needs_shared_data
from deepdefacer.cli.run import main
from deepdefacer.files import TEMPORARY_MARKER

pytestmark = [needs_shared_data, pytest.mark.slow]

RUNNER = Path(__file__).with_name("fault_runner.py")
# Every output of the scan, in the order the job writes them (the image sidecar, the completion
# record, last).
WRITE_STEPS = {
    "image": r"_desc-defaced_T1w\.nii\.gz$",
    "mask": r"_defacemask\.nii\.gz$",
    "qc-render": r"_desc-qc_render\.png$",
    "qc-slices": r"_desc-qc_slices\.png$",
    "qc-verdict": r"_desc-qc_verdict\.json$",
    "mask-sidecar": r"_defacemask\.json$",
    "image-sidecar": r"_desc-defaced_T1w\.json$",
}
# The group level's report, written by the checks between the runs.
GROUP_LEVEL_FILES = ("qc_report.html", "qc_summary.")
# Provenance fields that differ between any two runs (the command line names the output folder).
RUN_FIELDS = {"Date", "Seconds", "seconds", "CommandLine"}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One participant with one real head (6 mm slices: quick)."""
    folder = tmp_path_factory.mktemp("input") / "ds"
    anat = folder / "sub-01" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(HEADS / "ixi002_t1_6mm.nii.gz", anat / "sub-01_T1w.nii.gz")
    (folder / "dataset_description.json").write_text(
        json.dumps({"Name": "faults", "BIDSVersion": "1.10.0", "License": "CC-BY-SA-3.0"}))
    return folder


def participant(dataset, output, *extra) -> list:
    return [str(dataset), str(output), "participant", "--skip-bids-validation", "--device", "cpu",
            "--quiet", *extra]


@pytest.fixture(scope="module")
def undisturbed(dataset, tmp_path_factory):
    output = tmp_path_factory.mktemp("undisturbed") / "out"
    assert main(participant(dataset, output)) == 0
    return output


def run_with_fault(dataset, output, pattern: str, action: str) -> subprocess.CompletedProcess:
    environment = dict(os.environ, DEEPDEFACER_TEST_FAULT=f"{action}:{pattern}")
    return subprocess.run([sys.executable, str(RUNNER), *participant(dataset, output)],
                          env=environment, cwd=REPO, capture_output=True, text=True, timeout=300)


def comparable(folder: Path) -> dict:
    """relpath -> content, with the fields that change from run to run left out of JSON files."""
    def without_run_fields(value):
        if isinstance(value, dict):
            return {k: without_run_fields(v) for k, v in value.items() if k not in RUN_FIELDS}
        if isinstance(value, list):
            return [without_run_fields(v) for v in value]
        return value

    contents = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        relpath = path.relative_to(folder).as_posix()
        if relpath.startswith(GROUP_LEVEL_FILES):
            continue
        contents[relpath] = without_run_fields(json.loads(path.read_text())) \
            if path.suffix == ".json" else path.read_bytes()
    return contents


def assert_incomplete_then_resumed(dataset, output, undisturbed, capsys):
    # The group level counts the selected scans, not the QC files it finds.
    assert main([str(dataset), str(output), "group"]) != 0
    capsys.readouterr()
    assert main(participant(dataset, output)) == 0
    assert "1 defaced" in capsys.readouterr().err  # redone, not "up to date"
    leftovers = [p for p in output.rglob("*") if TEMPORARY_MARKER in p.name or p.suffix == ".part"]
    assert leftovers == []
    assert comparable(output) == comparable(undisturbed)
    assert main([str(dataset), str(output), "group"]) == 0


@pytest.mark.parametrize("step", list(WRITE_STEPS))
def test_killed_at_each_write_step_resumes_to_the_same_outputs(step, dataset, undisturbed,
                                                               tmp_path, capsys):
    output = tmp_path / "out"
    killed = run_with_fault(dataset, output, WRITE_STEPS[step], "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not (output / "sub-01/anat/sub-01_desc-defaced_T1w.json").exists()
    assert_incomplete_then_resumed(dataset, output, undisturbed, capsys)


@pytest.mark.parametrize("step", list(WRITE_STEPS))
def test_sigterm_at_each_write_step_removes_its_temporary_and_resumes(step, dataset, undisturbed,
                                                                   tmp_path, capsys):
    output = tmp_path / "out"
    stopped = run_with_fault(dataset, output, WRITE_STEPS[step], "term")
    assert stopped.returncode == 130, stopped.stderr[-2000:]
    assert "interrupted" in stopped.stderr
    assert not any(TEMPORARY_MARKER in p.name for p in output.rglob("*"))
    assert_incomplete_then_resumed(dataset, output, undisturbed, capsys)


def mount_tmpfs(folder: Path, size_bytes: int) -> bool:
    folder.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_a_full_disk_names_the_file_and_the_run_resumes(dataset, undisturbed, tmp_path, capsys):
    files = comparable(undisturbed)
    # Room for the dataset's files, the image and the mask, but not for the QC figures.
    before_qc = sum((undisturbed / relpath).stat().st_size for relpath in files
                    if "figures" not in relpath and not relpath.endswith("T1w.json")
                    and not relpath.endswith("defacemask.json"))
    mount_point = tmp_path / "small"
    if not mount_tmpfs(mount_point, before_qc + 64 * 1024):
        pytest.skip("cannot mount a tmpfs here")
    try:
        output = mount_point / "out"
        assert main(participant(dataset, output)) == 1
        err = capsys.readouterr().err
        assert "no space left on device writing " + str(output) in err
        assert "Traceback" not in err
        assert not (output / "sub-01/anat/sub-01_desc-defaced_T1w.json").exists()
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount_point)], check=True)
        assert_incomplete_then_resumed(dataset, output, undisturbed, capsys)
    finally:
        subprocess.run(["umount", str(mount_point)], capture_output=True)

"""A run without --n-procs defaces a scan a CPU at a time; its outputs are those of one process.

The run is a subprocess (``deepdefacer`` as a user types it) on examples/ds-demo (five scans in five
jobs). The network runs on one thread in every process (deepdefacer.predictor.INFERENCE_THREADS),
so the number of processes must not change a voxel.
"""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bids_app_helpers import DEMO, checksums

pytestmark = pytest.mark.slow


def run_app(*arguments):
    environment = {key: value for key, value in os.environ.items() if not key.startswith("SLURM_")}
    command = [sys.executable, "-c", "import sys; from deepdefacer.cli.run import main; sys.exit(main())",
               str(DEMO), *map(str, arguments), "--skip-bids-validation", "--skip-qc", "--device", "cpu"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env=environment)
    assert done.returncode == 0, done.stderr
    return done.stderr


def test_default_processes_match_one_process_voxel_for_voxel(tmp_path):
    cpus = len(os.sched_getaffinity(0))
    default_log = run_app(tmp_path / "default", "participant")
    if cpus >= 2:
        assert "2 scans at a time" in default_log or f"{min(cpus, 5)} scans at a time" in default_log
    run_app(tmp_path / "one", "participant", "--n-procs", "1")
    images = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*.nii*"))
    assert len(images) == 10  # five defaced images and five masks
    for relpath in images:
        one, default = nib.load(tmp_path / "one" / relpath), nib.load(tmp_path / "default" / relpath)
        assert np.array_equal(np.asanyarray(one.dataobj), np.asanyarray(default.dataobj)), relpath
        assert one.header.binaryblock == default.header.binaryblock, relpath

    # A finished run again: every job is recognised as finished before any worker starts.
    before = checksums(tmp_path / "default")
    again = run_app(tmp_path / "default", "participant", "--n-procs", "2")
    assert again.count("up to date") >= 5 and "scans at a time" not in again
    assert checksums(tmp_path / "default") == before

"""Shared paths and small tools for the BIDS App tests (test_bids_*.py, test_cli_*.py)."""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import stat
from pathlib import Path

from shared_data import BIDS_EXAMPLES, HEADS, REPO, SHARED_DATA, needs_shared_data  # noqa: F401

DEMO = REPO / "examples" / "ds-demo"


def checksums(folder: Path) -> dict:
    """relpath -> sha256 of every file (and link target) under folder."""
    sums = {}
    for path in sorted(folder.rglob("*")):
        relpath = path.relative_to(folder).as_posix()
        if path.is_symlink():
            sums[relpath] = "link:" + os.readlink(path)
        elif path.is_file():
            sums[relpath] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


def copy_read_only(source: Path, target: Path) -> Path:
    """A copy of source whose files and folders cannot be written (like a read-only mount)."""
    shutil.copytree(source, target, symlinks=True)
    make_read_only(target)
    return target


def make_read_only(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if path.is_symlink():
            continue
        mode = path.stat().st_mode
        path.chmod(mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def make_writable(folder: Path) -> None:
    for path in [folder, *folder.rglob("*")]:
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | stat.S_IWUSR)


def nifti_bytes(path: Path) -> bytes:
    """The uncompressed bytes of a .nii or .nii.gz file."""
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def run_demo_session(out: Path, *extra: str):
    """The BIDS App's participant level, in a fresh process, on ds-demo's sub-01 ses-1 (one process,
    CPU, no validation): the finished process (stdout, stderr, returncode)."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-c", "import sys; from deepdefacer.cli.run import main; "
                           "sys.exit(main())", str(DEMO), str(out), "participant",
                           "--participant-label", "01", "--session-id", "1",
                           "--skip-bids-validation", "--device", "cpu", "--n-procs", "1", *extra],
                          capture_output=True, text=True, timeout=600)

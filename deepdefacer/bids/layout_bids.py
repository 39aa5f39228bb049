"""--layout bids: an upload-ready copy of the dataset, defaced images in place of the originals.

The copy must not hold a face. Selected images are never copied: each one is written defaced by
the job that processes it once its face check has passed, and an image whose defacing failed is
absent from the copy rather than present with its face. Every other image under anat/ (a suffix
not selected, a T1map, an angio) is a head image with its face, so it is left out too and
reported, unless the user asks for it explicitly (``include_undefaced``). ``sourcedata/`` (DICOMs)
and ``derivatives/`` (e.g. a preprocessed T1w with its face) are not raw data to upload and are
left out. Everything else is copied unchanged: hard-linked when input and output share a file
system (no extra space, and safe because Deepdefacer never writes into an existing file: every
output is a new file renamed into place), copied otherwise.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from deepdefacer.files import atomic_output

# Version-control and annex internals are not part of the dataset to upload.
SKIPPED_NAMES = {".git", ".datalad", ".gitattributes", ".gitmodules"}
# Top-level folders that hold data other than the raw dataset (faces included).
SKIPPED_TOP_LEVEL = {"sourcedata", "derivatives"}


@dataclass
class CopyReport:
    copied: int = 0
    up_to_date: int = 0
    failed: list = field(default_factory=list)        # (relpath, reason)
    not_defaced: list = field(default_factory=list)   # anatomical images not selected (left out)
    included_undefaced: list = field(default_factory=list)  # ... copied anyway, as asked
    left_out_folders: list = field(default_factory=list)  # sourcedata/, derivatives/


def copy_dataset(bids_dir, output_dir, excluded_relpaths, participant_labels=None,
                 session_labels=None, include_undefaced: bool = False) -> CopyReport:
    """Copy bids_dir to output_dir except excluded_relpaths (the images Deepdefacer writes),
    the anatomical images not among them (unless ``include_undefaced``), sourcedata/ and
    derivatives/.

    With participant or session labels only those subjects' and sessions' folders are copied
    (plus everything outside sub-*), so parallel runs on different participants each copy
    their own part and the shared top-level files are replaced atomically with equal content.
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    excluded = set(excluded_relpaths)
    report = CopyReport()
    for dirpath, dirnames, filenames in os.walk(bids_dir):
        relative_dir = Path(dirpath).relative_to(bids_dir)
        if relative_dir == Path("."):
            report.left_out_folders = sorted(name for name in dirnames if name in SKIPPED_TOP_LEVEL)
            dirnames[:] = [name for name in dirnames if name not in SKIPPED_TOP_LEVEL]
        dirnames[:] = sorted(name for name in dirnames
                             if name not in SKIPPED_NAMES
                             and _wanted(relative_dir / name, participant_labels, session_labels))
        left_out = set() if include_undefaced else {
            filename.split(".nii")[0] for filename in filenames
            if _is_anatomical_image(relative_dir, filename)
            and (relative_dir / filename).as_posix() not in excluded}
        for filename in sorted(filenames):
            if filename in SKIPPED_NAMES:
                continue
            relpath = (relative_dir / filename).as_posix()
            if relpath in excluded:
                continue
            if _is_anatomical_image(relative_dir, filename):
                if not include_undefaced:
                    report.not_defaced.append(relpath)
                    _remove_earlier_copy(bids_dir / relpath, output_dir / relpath)
                    continue
                report.included_undefaced.append(relpath)
            elif filename.endswith(".json") and filename[: -len(".json")] in left_out:
                # Its image is left out, and BIDS rejects a sidecar without its data file.
                _remove_earlier_copy(bids_dir / relpath, output_dir / relpath)
                continue
            _copy_one(bids_dir / relpath, output_dir / relpath, relpath, report)
    return report


def _wanted(relative: Path, participant_labels, session_labels) -> bool:
    parts = relative.parts
    if participant_labels and len(parts) >= 1 and parts[0].startswith("sub-"):
        if parts[0][4:] not in participant_labels:
            return False
    if session_labels and len(parts) >= 2 and parts[0].startswith("sub-") \
            and parts[1].startswith("ses-"):
        if parts[1][4:] not in session_labels:
            return False
    return True


def _is_anatomical_image(relative_dir: Path, filename: str) -> bool:
    """Any image under sub-*/[ses-*/]anat/ but a defacing mask: whatever its suffix, it shows
    the head (and a file whose name BIDS cannot parse is no safer)."""
    if relative_dir.name != "anat" or not relative_dir.parts[0].startswith("sub-"):
        return False
    stem = filename.split(".nii")[0]
    return filename.endswith((".nii", ".nii.gz")) and not stem.endswith("_defacemask")


def _remove_earlier_copy(source: Path, target: Path) -> None:
    """A copy an earlier run (or version) made of an image that is now left out."""
    if target.is_file() and _same_file(source, target):
        with contextlib.suppress(OSError):
            target.unlink()


def _copy_one(source: Path, target: Path, relpath: str, report: CopyReport) -> None:
    if source.is_symlink() and not source.exists():
        report.failed.append((relpath, "broken symbolic link (fetch git-annex/DataLad content "
                                       "first, e.g. `datalad get`): not copied"))
        return
    try:
        if target.exists() and _same_file(source, target):
            report.up_to_date += 1
            return
        with atomic_output(target) as temporary:
            try:
                os.link(source.resolve(), temporary)
            except OSError:
                shutil.copy2(source, temporary)
        report.copied += 1
    except OSError as exc:
        report.failed.append((relpath, f"copy failed ({exc.strerror or exc})"))


def _same_file(source: Path, target: Path) -> bool:
    with contextlib.suppress(OSError):
        a, b = source.stat(), target.stat()
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)
    return False

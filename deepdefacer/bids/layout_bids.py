"""--layout bids: an upload-ready copy of the dataset, defaced images in place of the originals.

The copy must not hold a face. Selected images are never copied: each one is written defaced by
the job that processes it once its face check has passed, and an image whose defacing failed is
absent from the copy rather than present with its face. Every other image under anat/ (a suffix
not selected, a T1map, an angio) is a head image with its face, so it is left out too and
reported, unless the user asks for it explicitly (``include_undefaced``). ``sourcedata/`` (DICOMs)
and ``derivatives/`` (e.g. a preprocessed T1w with its face) are not raw data to upload and are
left out. Everything else is copied unchanged: hard-linked when input and output share a file
system (no extra space, and safe because Deepdefacer never writes into an existing file: every
output is a new file renamed into place), copied otherwise. With ``deidentify_keys`` (the option
--deidentify-metadata) each JSON sidecar that holds one of them is written without it instead.

A ``*_defacemask`` of the input that one of Deepdefacer's masks replaces (same name, whatever its
extension) is not copied, and each one is a warning line naming the file: the copy holds
Deepdefacer's mask, and the input's is not silently lost.

The copy's own files: ``dataset_description.json`` is the input's plus Deepdefacer in
``GeneratedBy`` and the input in ``SourceDatasets``, and ``CHANGES`` is the input's with one entry
on top (a new patch version, today's date, "Anatomical images defaced by Deepdefacer X.Y.Z"). A
rerun with the same version keeps that entry and its date; a newer version replaces it: there is
never more than one.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from deepdefacer.bids.deidentify import deidentified_sidecar_text, is_sidecar
from deepdefacer.files import atomic_output, split_extension

log = logging.getLogger("deepdefacer")

# Version-control and annex internals are not part of the dataset to upload.
SKIPPED_NAMES = {".git", ".datalad", ".gitattributes", ".gitmodules"}
# Top-level folders that hold data other than the raw dataset (faces included).
SKIPPED_TOP_LEVEL = {"sourcedata", "derivatives"}
# Top-level files the copy has its own version of (outputs.prepare_output_dataset writes them
# first): never replaced by the input's, only copied where the copy has none.
WRITTEN_TOP_LEVEL = {"dataset_description.json", "CHANGES"}


@dataclass
class CopyReport:
    copied: int = 0
    up_to_date: int = 0
    failed: list = field(default_factory=list)        # (relpath, reason)
    not_defaced: list = field(default_factory=list)   # anatomical images not selected (left out)
    included_undefaced: list = field(default_factory=list)  # ... copied anyway, as asked
    left_out_folders: list = field(default_factory=list)  # sourcedata/, derivatives/
    replaced_masks: list = field(default_factory=list)  # the input's *_defacemask files replaced
    deidentified: int = 0  # sidecars written without identifying keys


def copy_dataset(bids_dir, output_dir, excluded_relpaths, participant_labels=None,
                 session_labels=None, include_undefaced: bool = False,
                 deidentify_keys=None) -> CopyReport:
    """Copy bids_dir to output_dir except excluded_relpaths (the images Deepdefacer writes),
    the anatomical images not among them (unless ``include_undefaced``), sourcedata/ and
    derivatives/.

    With participant or session labels only those subjects' and sessions' folders are copied
    (plus everything outside sub-*), so parallel runs on different participants each copy
    their own part and the shared top-level files are replaced atomically with equal content.
    ``deidentify_keys``: sidecar keys to remove (deidentify.DEFAULT_KEYS); none copies sidecars
    unchanged.
    """
    bids_dir, output_dir = Path(bids_dir), Path(output_dir)
    excluded = set(excluded_relpaths) | {
        name for name in WRITTEN_TOP_LEVEL if (output_dir / name).is_file()
        and not _same_file(bids_dir / name, output_dir / name)}
    # Deepdefacer's masks by name without extension: an input mask.nii is replaced by mask.nii.gz.
    our_masks = {split_extension(relpath)[0] for relpath in excluded
                 if split_extension(relpath)[0].endswith("_defacemask")}
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
            if split_extension(relpath)[0] in our_masks:
                if ".nii" in filename:  # its sidecar goes with it, without a second line
                    _warn_replaced_mask(relpath, report)
                if relpath not in excluded:  # another extension: the copy would hold both
                    _remove_earlier_copy(bids_dir / relpath, output_dir / relpath)
                continue
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
            if deidentify_keys and is_sidecar(relpath):
                _copy_sidecar(bids_dir / relpath, output_dir / relpath, relpath, deidentify_keys,
                              report)
            else:
                _copy_one(bids_dir / relpath, output_dir / relpath, relpath, report)
    return report


def _warn_replaced_mask(relpath: str, report: CopyReport) -> None:
    report.replaced_masks.append(relpath)
    log.warning("the input already holds %s: Deepdefacer's mask replaces it in the upload-ready "
                "copy (the input's is not copied)", relpath)


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


def _copy_sidecar(source: Path, target: Path, relpath: str, keys, report: CopyReport) -> None:
    """A sidecar without the identifying keys (a new file, never the input's linked one); one
    that holds none of them is copied as any other file."""
    try:
        text = deidentified_sidecar_text(source.read_text(encoding="utf-8"), keys)
    except (OSError, UnicodeDecodeError):
        text = None
    if text is None:
        _copy_one(source, target, relpath, report)
        return
    try:
        if target.is_file() and not _same_file(source, target) \
                and target.read_text(encoding="utf-8") == text:
            report.up_to_date += 1
            return
        with atomic_output(target) as temporary:
            temporary.write_text(text, encoding="utf-8")
        report.copied += 1
        report.deidentified += 1
    except (OSError, UnicodeDecodeError) as exc:
        report.failed.append((relpath, f"copy failed ({getattr(exc, 'strerror', None) or exc})"))


def _same_file(source: Path, target: Path) -> bool:
    with contextlib.suppress(OSError):
        a, b = source.stat(), target.stat()
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return True
        return a.st_size == b.st_size and int(a.st_mtime) == int(b.st_mtime)
    return False


# ---------------------------------------------------------------------------------------------
# The copy's dataset_description.json and CHANGES


def copy_description(source_description: dict, generated_by: dict, source_dataset: dict) -> dict:
    """The input's description with Deepdefacer last in GeneratedBy and the input last in
    SourceDatasets (entries the input already lists are kept: a conversion's dcm2bids, say)."""
    description = dict(source_description)
    description["GeneratedBy"] = [entry for entry in source_description.get("GeneratedBy") or []
                                  if not _is_entry_of(entry, generated_by)] + [generated_by]
    description["SourceDatasets"] = [entry for entry in
                                     source_description.get("SourceDatasets") or []
                                     if entry != source_dataset] + [source_dataset]
    return description


def is_copy_of(existing, source_description: dict) -> bool:
    """Whether an output's description is the input's as an earlier copy wrote it (by this or an
    older version: GeneratedBy and SourceDatasets aside)."""
    def dataset_part(description):
        return {key: value for key, value in description.items()
                if key not in ("GeneratedBy", "SourceDatasets")}
    return isinstance(existing, dict) and dataset_part(existing) == dataset_part(source_description)


def _is_entry_of(entry, generated_by: dict) -> bool:
    return isinstance(entry, dict) and entry.get("Name") == generated_by["Name"]


# The CPAN Changes format that BIDS uses: "<version> <YYYY-MM-DD>" then "  - <change>" lines.
VERSION_LINE = re.compile(r"^(?P<version>\S+)\s+(?P<date>\d{4}-\d{2}-\d{2})\s*$")
SEMANTIC_VERSION = re.compile(r"^v?(?P<major>\d+)\.(?P<minor>\d+)\.(?P<patch>\d+)$")


def write_changes(bids_dir, output_dir, software_name: str, software_version: str,
                  extra_lines=(), today: str | None = None) -> str:
    """The copy's CHANGES: the input's with one entry of Deepdefacer's on top (see the module
    docstring), rebuilt from the input's on every run; returns its text."""
    source_text = _read_text(Path(bids_dir) / "CHANGES").strip()
    target = Path(output_dir) / "CHANGES"
    lines = [f"Anatomical images defaced by {software_name} {software_version} (the face's "
             "voxels set to zero; each image's mask is its *_defacemask.nii.gz)", *extra_lines]
    body = "".join(f"  - {line}\n" for line in lines)
    body += f"\n{source_text}\n" if source_text else ""
    version, existing = _next_version(source_text), _read_text(target)
    head, _, rest = existing.partition("\n")
    match = VERSION_LINE.match(head)
    if match and match["version"] == version and rest == body:
        return existing  # a rerun with the same version and options keeps its entry and date
    text = f"{version} {today or time.strftime('%Y-%m-%d')}\n{body}"
    with atomic_output(target) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return text


def _next_version(source_text: str) -> str:
    """The input's newest version with its patch number one higher; 1.0.0 when it has none."""
    for line in source_text.splitlines():
        match = VERSION_LINE.match(line.strip())
        if match:
            semantic = SEMANTIC_VERSION.match(match["version"])
            if semantic:
                return f"{semantic['major']}.{semantic['minor']}.{int(semantic['patch']) + 1}"
            return f"{match['version']}.1"
    return "1.0.0"


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return ""

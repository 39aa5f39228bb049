"""Identifying metadata: sidecar keys and NIfTI header text that name a person, a place or a date.

Defacing removes the face; a sidecar can still name the scanner's hospital, its serial number and
the day of the scan. ``--deidentify-metadata`` (--layout bids) removes ``DEFAULT_KEYS`` from every
JSON sidecar of the upload-ready copy (``--deidentify-keys`` chooses other keys) and blanks the
header text fields of the defaced images; the group level reports which of these keys remain.

The default set follows the DICOM PS3.15 Basic Application Level Confidentiality Profile (the
attributes it removes or replaces that dcm2niix and heudiconv carry into BIDS sidecars) and the
keys BIDSonym's ``--del_meta`` is used with:

- the person: PatientName, PatientID, PatientBirthDate, PatientSex, PatientAge, PatientWeight,
  PatientSize (BIDS keeps sex and age in participants.tsv, where the curator chooses to);
- the people and the place: ReferringPhysicianName, PerformingPhysicianName, OperatorsName,
  InstitutionName, InstitutionAddress, InstitutionalDepartmentName;
- the machine: DeviceSerialNumber, StationName (a site's scanner is a quasi-identifier);
- the record: AccessionNumber, StudyID, StudyInstanceUID, SeriesInstanceUID,
  ProcedureStepDescription, StudyDescription, ImageComments (free text, where operators type names);
- the dates: AcquisitionDateTime, AcquisitionDate, StudyDate, SeriesDate, ContentDate (a date of
  an examination is an identifier under HIPAA's Safe Harbor and PS3.15).

AcquisitionTime is kept: it is the time of day without the date (not an identifier on its own),
BIDS records it per run (scans.tsv's acq_time follows the same rule) and analyses use it to order
a session's runs and to match field maps and physiological recordings to them. Add it with
``--deidentify-keys`` when the time of day matters too. SeriesDescription and ProtocolName stay:
they name the sequence, and BIDS conversions rely on them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

DEFAULT_KEYS = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge", "PatientWeight",
    "PatientSize",
    "ReferringPhysicianName", "PerformingPhysicianName", "OperatorsName",
    "InstitutionName", "InstitutionAddress", "InstitutionalDepartmentName",
    "DeviceSerialNumber", "StationName",
    "AccessionNumber", "StudyID", "StudyInstanceUID", "SeriesInstanceUID",
    "ProcedureStepDescription", "StudyDescription", "ImageComments",
    "AcquisitionDateTime", "AcquisitionDate", "StudyDate", "SeriesDate", "ContentDate",
)

# Free-text fields of the NIfTI-1/2 header that converters fill (dcm2niix writes the echo time and
# the acquisition time into descrip; others put the patient's name or the study there).
HEADER_TEXT_FIELDS = ("descrip", "db_name", "aux_file", "intent_name")

# Not sidecars: the dataset's own description, and folders that are not raw data.
NOT_SIDECARS = {"dataset_description.json"}
SKIPPED_FOLDERS = {"sourcedata", "derivatives", "figures"}


def chosen_keys(deidentify_metadata: bool, keys=None) -> tuple:
    """The keys to remove: ``keys`` when given (--deidentify-keys), the default set with
    --deidentify-metadata, none otherwise."""
    if keys:
        return tuple(dict.fromkeys(keys))
    return DEFAULT_KEYS if deidentify_metadata else ()


def without_keys(metadata: dict, keys) -> tuple[dict, list]:
    """``metadata`` without ``keys`` (top level), and the keys that were removed."""
    removed = [key for key in metadata if key in set(keys)]
    return {key: value for key, value in metadata.items() if key not in removed}, removed


def deidentified_sidecar_text(text: str, keys) -> str | None:
    """The sidecar's JSON without ``keys``; None when it holds none of them (or is not a JSON
    object), so that the file is copied byte for byte."""
    try:
        metadata = json.loads(text)
    except ValueError:
        return None
    if not isinstance(metadata, dict):
        return None
    kept, removed = without_keys(metadata, keys)
    if not removed:
        return None
    return json.dumps(kept, indent=2, ensure_ascii=False) + "\n"


def blank_header_text(header):
    """A copy of a NIfTI header with its free-text fields (``HEADER_TEXT_FIELDS``) emptied; the
    geometry, data type and scaling are untouched, so the image reads the same."""
    blanked = header.copy()
    for name in HEADER_TEXT_FIELDS:
        if name in blanked:
            blanked[name] = b""
    return blanked


def has_header_text(path) -> bool:
    """Whether a NIfTI file's header still holds text in ``HEADER_TEXT_FIELDS`` (an output
    written before --deidentify-metadata was asked for)."""
    import nibabel as nib

    header = nib.load(path).header
    return any(name in header and bytes(header[name]).strip(b"\x00 ")
               for name in HEADER_TEXT_FIELDS)


def is_sidecar(relpath: str) -> bool:
    parts = relpath.split("/")
    return (parts[-1].endswith(".json") and parts[-1] not in NOT_SIDECARS
            and not parts[-1].startswith(".") and not SKIPPED_FOLDERS & set(parts[:-1]))


def identifying_keys_in(dataset_dir, keys=DEFAULT_KEYS) -> dict:
    """Which of ``keys`` the JSON sidecars of a dataset hold: {"keys": {key: number of sidecars},
    "n_sidecars": sidecars read, "examples": {key: first sidecar (relative path)}}.

    sourcedata/, derivatives/ and hidden folders are not read (an upload-ready copy has none)."""
    dataset_dir = Path(dataset_dir)
    wanted = set(keys)
    counts, examples, n_sidecars = {}, {}, 0
    for dirpath, dirnames, filenames in os.walk(dataset_dir):
        relative_dir = Path(dirpath).relative_to(dataset_dir)
        dirnames[:] = sorted(name for name in dirnames
                             if not name.startswith(".") and name not in SKIPPED_FOLDERS)
        for filename in sorted(filenames):
            relpath = (relative_dir / filename).as_posix()
            if not is_sidecar(relpath):
                continue
            try:
                metadata = json.loads((Path(dirpath) / filename).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError):
                continue
            if not isinstance(metadata, dict):
                continue
            n_sidecars += 1
            for key in wanted.intersection(metadata):
                counts[key] = counts.get(key, 0) + 1
                examples.setdefault(key, relpath)
    ordered = [key for key in keys if key in counts]
    return {"keys": {key: counts[key] for key in ordered}, "n_sidecars": n_sidecars,
            "examples": {key: examples[key] for key in ordered}}

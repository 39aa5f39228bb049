"""Which scans to deface: check the dataset, walk it with pybids, apply the user's filters."""

from __future__ import annotations

import json
import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from deepdefacer.bids.filters import NIFTI_EXTENSIONS, json_type, pybids_filters
from deepdefacer.bids.names import DEFAULT_SUFFIXES, BidsName, parse_name
from deepdefacer.errors import InputError


log = logging.getLogger("deepdefacer")


@dataclass(frozen=True)
class Scan:
    path: Path          # absolute path in the input dataset
    relpath: str        # path relative to the dataset root, with forward slashes
    name: BidsName = field(compare=False)
    metadata: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def folder(self) -> str:
        return self.relpath.rpartition("/")[0]

    @property
    def suffix(self) -> str:
        return self.name.suffix


# ---------------------------------------------------------------------------------------------
# Checks before any work


def check_dataset(bids_dir) -> dict:
    """The dataset_description of bids_dir, or an InputError saying why it is not a BIDS dataset."""
    bids_dir = Path(bids_dir)
    if not bids_dir.is_dir():
        raise InputError(bids_dir, "not a folder")
    description_path = bids_dir / "dataset_description.json"
    if not description_path.is_file():
        raise InputError(bids_dir, "not a BIDS dataset (no dataset_description.json)")
    try:
        description = json.loads(description_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(description_path, f"unreadable JSON ({exc})") from None
    if not isinstance(description, dict) or "BIDSVersion" not in description:
        raise InputError(description_path, "not a BIDS dataset description (no BIDSVersion)")
    return description


def check_output_location(bids_dir, output_dir) -> None:
    """The input is never written to: refuse an output folder inside it (or around it)."""
    bids_dir, output_dir = Path(bids_dir).resolve(), Path(output_dir).resolve()
    if output_dir == bids_dir or bids_dir in output_dir.parents:
        raise InputError(output_dir, f"output folder is inside the input dataset {bids_dir}; "
                                     "the input is never written to, choose a folder outside it")
    if output_dir in bids_dir.parents:
        raise InputError(output_dir, f"output folder contains the input dataset {bids_dir}; "
                                     "choose a separate folder")


# ---------------------------------------------------------------------------------------------
# Selection


def open_layout(bids_dir, participants=None, database_dir=None):
    """A pybids layout of the dataset (validation is the BIDS validator's job, not pybids').

    ``participants``: index only their folders (a SLURM task of a 1,000-participant dataset
    indexed every one of them: 11-19 s before any work). ``database_dir``: pybids' index of the
    whole dataset kept there and reused as it is (fMRIPrep's --bids-database-dir).
    """
    import bids  # slow to import: only when a dataset is actually read
    from bids.layout import BIDSLayoutIndexer
    from bids.layout.validation import DEFAULT_LOCATIONS_TO_IGNORE

    ignore = set(DEFAULT_LOCATIONS_TO_IGNORE)
    if participants and database_dir is None:
        kept = "|".join(re.escape(label) for label in participants)
        ignore.add(re.compile(rf"^/sub-(?!(?:{kept})(?:/|$))"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # Sidecars are read for the selected scans only (inherited_metadata): indexing the
            # metadata of every file would double the time on large datasets.
            return bids.BIDSLayout(
                str(bids_dir), validate=False,
                database_path=None if database_dir is None else str(database_dir),
                indexer=BIDSLayoutIndexer(validate=False, index_metadata=False, ignore=ignore))
        except Exception as exc:  # pybids raises a handful of types for malformed datasets
            raise InputError(bids_dir, f"pybids cannot index this dataset ({exc})") from None


def chosen_participants(bids_dir, labels=(), excluded=()):
    """The participants ``labels`` name (in order, once each) less ``excluded``, or None for every
    participant; ``[]`` when all are excluded."""
    labels, excluded = list(labels or ()), set(excluded or ())
    if not labels and not excluded:
        return None
    labels = labels or _folder_labels(Path(bids_dir), "sub-")
    return [label for label in dict.fromkeys(labels) if label not in excluded]


def select_scans(layout, participant_labels=None, session_labels=None,
                 suffixes=DEFAULT_SUFFIXES, bids_filters=None,
                 metadata: bool = True) -> list[Scan]:
    """Anatomical images in sub-<label>/[ses-<label>/]anat/, filtered; sorted by path.

    participant_labels and session_labels: without the sub-/ses- prefix. bids_filters: an
    fmriprep-style mapping from a lower-case suffix ("t1w", "flair") to pybids entity filters
    that apply to images of that suffix. metadata: whether to read each scan's sidecars (what
    only the participant level needs).
    """
    root = Path(layout.root)
    bids_filters = bids_filters or {}
    # Labels from the folder names (what BIDS defines them by); pybids' get_subjects() builds
    # every file's entities and takes seconds on large datasets.
    subjects = _folder_labels(root, "sub-")
    if participant_labels:
        unknown = sorted(set(participant_labels) - set(subjects))
        if unknown:
            raise InputError(root, "participant(s) not found: "
                                   + ", ".join(f"sub-{label}" for label in unknown)
                                   + f" (the dataset has {_list_labels('sub-', subjects)})")
    if session_labels:
        sessions = sorted({label for subject in participant_labels or subjects
                           for label in _folder_labels(root / f"sub-{subject}", "ses-")})
        unknown = sorted(set(session_labels) - set(sessions))
        if unknown:
            raise InputError(root, "session(s) not found: "
                                   + ", ".join(f"ses-{label}" for label in unknown)
                                   + f" (the selected participants have "
                                     f"{_list_labels('ses-', sessions)})")

    # One query for the suffixes without filters, one per filtered suffix (the filters differ).
    unfiltered = [suffix for suffix in suffixes if suffix.lower() not in bids_filters]
    queries = [(unfiltered, {})] if unfiltered else []
    queries += [([suffix], bids_filters[suffix.lower()]) for suffix in suffixes
                if suffix.lower() in bids_filters]
    scans = {}
    warned = set()
    for query_suffixes, filters in queries:
        query = {"datatype": "anat", "suffix": query_suffixes,
                 "extension": list(NIFTI_EXTENSIONS)}
        if participant_labels:
            query["subject"] = list(participant_labels)
        if session_labels:
            query["session"] = list(session_labels)
        query.update(pybids_filters(filters))
        # Paths, not pybids objects: building objects costs seconds on large datasets.
        for found in layout.get(return_type="filename", **query):
            scan = _scan_from_path(root, Path(found), warned if metadata else None)
            if scan is not None:
                scans[scan.relpath] = scan
    return [scans[relpath] for relpath in sorted(scans)]


def _folder_labels(folder: Path, prefix: str) -> list:
    return sorted(path.name[len(prefix):] for path in folder.glob(prefix + "*") if path.is_dir())


def _scan_from_path(root: Path, path: Path, warned: set | None) -> Scan | None:
    """A Scan if path is a subject's anatomical image named by the BIDS rules, else None; its
    metadata is read unless warned is None."""
    relative = path.relative_to(root)
    parts = relative.parts
    name = parse_name(parts[-1])
    if name is None or "sub" not in name.entities or parts[-2] != "anat":
        return None
    expected_folders = [f"sub-{name.entities['sub']}"]
    if "ses" in name.entities:
        expected_folders.append(f"ses-{name.entities['ses']}")
    if list(parts[:-2]) != expected_folders:
        return None
    return Scan(path=path, relpath=relative.as_posix(), name=name,
                metadata={} if warned is None else inherited_metadata(root, relative, name,
                                                                      warned))


def inherited_metadata(root: Path, relative: Path, name: BidsName,
                       warned: set | None = None) -> dict:
    """The scan's sidecar metadata by the BIDS inheritance principle.

    Every JSON file from the dataset root down to the scan's folder whose suffix is the scan's
    and whose entities are a subset of the scan's applies; deeper and more specific files win.
    A broken sidecar is skipped with a warning: it must not stop the other scans. warned: the
    sidecars already warned about, so a broken file that many scans inherit is named once.
    """
    merged = {}
    for depth in range(len(relative.parts)):
        folder = root.joinpath(*relative.parts[:depth])
        applicable = []
        for sidecar in folder.glob("*.json"):
            sidecar_name = parse_name(sidecar.name) if "_" in sidecar.name else \
                BidsName({}, sidecar.name[:-len(".json")], ".json")
            if sidecar_name is None or sidecar_name.suffix != name.suffix:
                continue
            if all(name.entities.get(key) == value
                   for key, value in sidecar_name.entities.items()):
                applicable.append((len(sidecar_name.entities), sidecar))
        for _, sidecar in sorted(applicable):
            content = _read_sidecar(sidecar, warned)
            if content is not None:
                merged.update(content)
    return merged


def _read_sidecar(sidecar: Path, warned: set | None) -> dict | None:
    """A sidecar's metadata, or None with a warning: its metadata would be missing from the
    outputs' sidecars without anyone knowing."""
    try:
        content = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        reason = f"unreadable JSON ({_one_line(exc)})"
    else:
        if isinstance(content, dict):
            return content
        reason = f"not a JSON object ({json_type(content)})"
    if warned is None or sidecar not in warned:
        log.warning("%s: %s; sidecar ignored, so its metadata is missing from the defaced "
                    "images' sidecars", sidecar, reason)
        if warned is not None:
            warned.add(sidecar)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _list_labels(prefix: str, labels) -> str:
    labels = list(labels)
    if not labels:
        return "none"
    shown = ", ".join(prefix + label for label in labels[:12])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")

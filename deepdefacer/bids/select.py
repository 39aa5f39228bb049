"""Which scans to deface: check the dataset, walk it with pybids, apply the user's filters."""

from __future__ import annotations

import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

from deepdefacer.bids.names import BidsName, parse_name
from deepdefacer.errors import InputError

# Every non-parametric anatomical image BIDS defines, and the MP2RAGE parts: the images that
# show a face and are shared. Deprecated suffixes (FLASH, PD, T2star) only when asked.
DEFAULT_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2",
                    "angio", "MP2RAGE", "UNIT1")
# Quantitative maps and the other file collections BIDS defines in anat/, defaced only when asked.
OPTIONAL_SUFFIXES = ("T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap",
                     "MTRmap", "MTsat", "T1rho", "MWFmap", "MTVmap", "Chimap", "S0map", "M0map",
                     "MEGRE", "MESE", "VFA", "IRT1", "MPM", "MTS", "MTR", "FLASH", "PD", "T2star")
ANATOMICAL_SUFFIXES = DEFAULT_SUFFIXES + OPTIONAL_SUFFIXES
NIFTI_EXTENSIONS = (".nii", ".nii.gz")

# Entities a --bids-filter-file may constrain, by pybids' names (its BIDS config, bids.json) and
# the kind of value each takes. pybids also knows suffix (the filter's key already fixes it),
# scans and fmap (not parts of an anatomical file name); datatype and extension are fixed by what
# Deepdefacer reads.
LABEL, INDEX = "label", "index"
FILTER_ENTITIES = {
    "subject": LABEL, "session": LABEL, "sample": LABEL, "task": LABEL, "tracksys": LABEL,
    "acquisition": LABEL, "nucleus": LABEL, "volume": LABEL, "ceagent": LABEL, "staining": LABEL,
    "tracer": LABEL, "reconstruction": LABEL, "direction": LABEL, "run": INDEX, "proc": LABEL,
    "modality": LABEL, "echo": INDEX, "flip": INDEX, "inv": INDEX, "mt": ("on", "off"),
    "part": ("mag", "phase", "real", "imag"), "recording": LABEL, "space": LABEL, "chunk": INDEX,
    "datatype": ("anat",), "extension": NIFTI_EXTENSIONS,
}
BIDS_DATATYPES = ("anat", "beh", "dwi", "eeg", "fmap", "func", "ieeg", "meg", "micr", "motion",
                  "mrs", "nirs", "perf", "pet")
# The file-name keys users write instead (acq-mprage): pointed to their pybids names.
FILTER_ENTITY_SHORT_NAMES = {
    "sub": "subject", "ses": "session", "acq": "acquisition", "nuc": "nucleus", "voi": "volume",
    "ce": "ceagent", "stain": "staining", "trc": "tracer", "rec": "reconstruction",
    "dir": "direction", "mod": "modality",
}

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


def check_bids_filters(filters) -> dict:
    """The filters of a --bids-filter-file with lower-case keys, or a ValueError naming the
    first problem: pybids would otherwise fail with its own or SQL errors, or, for a misspelt
    value, silently select nothing."""
    if not isinstance(filters, dict):
        raise ValueError(f"the top level must be an object mapping suffixes to entity filters, "
                         f"not {_json_type(filters)}, e.g. " + FILTER_EXAMPLE)
    known = {name.lower() for name in ANATOMICAL_SUFFIXES}
    unknown = sorted(key for key in filters if key.lower() not in known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; keys are lower-case anatomical "
                         f"suffixes such as {', '.join(s.lower() for s in DEFAULT_SUFFIXES[:4])}")
    checked = {}
    for key, entities in filters.items():
        if not isinstance(entities, dict):
            raise ValueError(f'"{key}" must map entities to values, not {_json_type(entities)}, '
                             "e.g. " + FILTER_EXAMPLE)
        for entity, value in entities.items():
            _check_filter_value(key, entity, value)
        checked[key.lower()] = entities
    return checked


FILTER_EXAMPLE = '{"t1w": {"acquisition": "mprage", "run": 1}}'


def _check_filter_value(key: str, entity: str, value) -> None:
    kind = FILTER_ENTITIES.get(entity)
    if kind is None:
        if entity == "suffix":
            raise ValueError(f'"{key}": entity "suffix": the key "{key}" already selects the '
                             "suffix; write one key per suffix")
        hint = FILTER_ENTITY_SHORT_NAMES.get(entity.lower(), entity.lower())
        raise ValueError(f'"{key}": unknown entity "{entity}"'
                         + (f" (did you mean {hint}?)" if hint in FILTER_ENTITIES else
                            "; pybids names entities in full: " + ", ".join(FILTER_ENTITIES)))
    where = f'"{key}": "{entity}"'
    if isinstance(value, list) and not value:
        raise ValueError(f"{where}: an empty list, which pybids would ignore")
    for item in value if isinstance(value, list) else [value]:
        if isinstance(item, (dict, list)):
            raise ValueError(f'{where}: a value is a string, an integer, null or "*" (or a list '
                             f"of them), not {_json_type(item)}")
        if entity == "datatype":
            if item != "anat":
                problem = ("" if item in BIDS_DATATYPES else " is not a BIDS datatype") + "; "
                raise ValueError(f"{where}: {json.dumps(item)}{problem}Deepdefacer selects "
                                 "anatomical (anat) images only")
        elif isinstance(kind, tuple):
            if item not in kind and item is not None and item != "*":
                raise ValueError(f"{where}: {json.dumps(item)} is not one of "
                                 + ", ".join(map(json.dumps, kind)))
            if entity == "extension" and (item is None or item == "*"):
                raise ValueError(f"{where}: {json.dumps(item)}: Deepdefacer reads "
                                 + " and ".join(NIFTI_EXTENSIONS) + " files only")
        elif item is None or item == "*":
            continue
        elif kind == INDEX and not _is_index(item):
            raise ValueError(f"{where}: {json.dumps(item)} is not an index (a non-negative "
                             "integer)")
        elif kind == LABEL and not (_is_index(item) or isinstance(item, str) and _is_label(item)):
            raise ValueError(f"{where}: {json.dumps(item)} is not a BIDS label (letters and "
                             "digits)")


def _is_index(value) -> bool:
    if isinstance(value, bool):  # JSON true would match run-1
        return False
    return isinstance(value, int) and value >= 0 or isinstance(value, str) and value.isdigit()


def _is_label(text: str) -> bool:
    return bool(text) and text.isascii() and text.isalnum()


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def strip_prefix(label: str, prefix: str) -> str:
    return label[len(prefix):] if label.startswith(prefix) else label


# ---------------------------------------------------------------------------------------------
# Selection


def open_layout(bids_dir):
    """A pybids layout of the dataset (validation is the BIDS validator's job, not pybids')."""
    import bids  # slow to import: only when a dataset is actually read
    from bids.layout import BIDSLayoutIndexer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # Sidecars are read for the selected scans only (inherited_metadata): indexing the
            # metadata of every file would double the time on large datasets.
            return bids.BIDSLayout(str(bids_dir), validate=False,
                                   indexer=BIDSLayoutIndexer(validate=False,
                                                             index_metadata=False))
        except Exception as exc:  # pybids raises a handful of types for malformed datasets
            raise InputError(bids_dir, f"pybids cannot index this dataset ({exc})") from None


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
        query.update(_pybids_filters(filters))
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
        reason = f"not a JSON object ({_json_type(content)})"
    if warned is None or sidecar not in warned:
        log.warning("%s: %s; sidecar ignored, so its metadata is missing from the defaced "
                    "images' sidecars", sidecar, reason)
        if warned is not None:
            warned.add(sidecar)
    return None


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _pybids_filters(filters: dict) -> dict:
    """fmriprep conventions: null means 'entity absent', '*' means 'any value'."""
    from bids.layout import Query

    converted = {}
    for entity, value in filters.items():
        if value is None:
            converted[entity] = Query.NONE
        elif value == "*":
            converted[entity] = Query.ANY
        else:
            converted[entity] = value
    return converted


def _list_labels(prefix: str, labels) -> str:
    labels = list(labels)
    if not labels:
        return "none"
    shown = ", ".join(prefix + label for label in labels[:12])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 12 else "")

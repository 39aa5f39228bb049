"""--bids-filter-file: which entities a filter may constrain, checked before anything is read, and
its fmriprep conventions (null: the entity is absent; "*": any value) in pybids' terms."""

from __future__ import annotations

import json

from deepdefacer.bids.names import ANATOMICAL_SUFFIXES, DEFAULT_SUFFIXES

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


def check_bids_filters(filters) -> dict:
    """The filters of a --bids-filter-file with lower-case keys, or a ValueError naming the
    first problem: pybids would otherwise fail with its own or SQL errors, or, for a misspelt
    value, silently select nothing."""
    if not isinstance(filters, dict):
        raise ValueError(f"the top level must be an object mapping suffixes to entity filters, "
                         f"not {json_type(filters)}, e.g. " + FILTER_EXAMPLE)
    known = {name.lower() for name in ANATOMICAL_SUFFIXES}
    unknown = sorted(key for key in filters if key.lower() not in known)
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(unknown)}; keys are lower-case anatomical "
                         f"suffixes such as {', '.join(s.lower() for s in DEFAULT_SUFFIXES[:4])}")
    checked = {}
    for key, entities in filters.items():
        if not isinstance(entities, dict):
            raise ValueError(f'"{key}" must map entities to values, not {json_type(entities)}, '
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
                             f"of them), not {json_type(item)}")
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


def json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
             int: "a number", float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def pybids_filters(filters: dict) -> dict:
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

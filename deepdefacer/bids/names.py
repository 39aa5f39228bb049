"""BIDS file names: parse one into entities, suffix and extension, and build one back.

Output names are built from the source's own entities (as written in its file name, so nothing is
renamed by a library's idea of entity names), in the order the BIDS specification fixes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Entity keys in the order BIDS requires them in file names (BIDS schema, rules.entities).
ENTITY_ORDER = (
    "sub", "tpl", "ses", "cohort", "sample", "task", "tracksys", "acq", "nuc", "voi", "ce", "trc",
    "stain", "rec", "dir", "run", "mod", "echo", "flip", "inv", "mt", "part", "proc", "hemi",
    "space", "split", "recording", "chunk", "atlas", "seg", "scale", "res", "den", "label", "desc",
)

# Every non-parametric anatomical image BIDS defines, and the MP2RAGE parts: the images that
# show a face and are shared. Deprecated suffixes (FLASH, PD, T2star) only when asked.
DEFAULT_SUFFIXES = ("T1w", "T2w", "PDw", "T2starw", "FLAIR", "inplaneT1", "inplaneT2", "PDT2",
                    "angio", "MP2RAGE", "UNIT1")
# Quantitative maps and the other file collections BIDS defines in anat/, defaced only when asked.
OPTIONAL_SUFFIXES = ("T1map", "T2map", "T2starmap", "R1map", "R2map", "R2starmap", "PDmap",
                     "MTRmap", "MTsat", "T1rho", "MWFmap", "MTVmap", "Chimap", "S0map", "M0map",
                     "MEGRE", "MESE", "VFA", "IRT1", "MPM", "MTS", "MTR", "FLASH", "PD", "T2star")
ANATOMICAL_SUFFIXES = DEFAULT_SUFFIXES + OPTIONAL_SUFFIXES

# Entities that tell apart the images of one acquisition (echoes, flip angles, inversions,
# magnitude/phase). They are not allowed in a raw `_defacemask` name, and one mask serves all.
COLLECTION_ENTITIES = ("echo", "flip", "inv", "mt", "part", "dir")

_PAIR = re.compile(r"^([a-zA-Z0-9]+)-([a-zA-Z0-9+]+)$")


@dataclass(frozen=True)
class BidsName:
    entities: dict = field(hash=False)
    suffix: str
    extension: str

    def with_entities(self, **changes) -> "BidsName":
        """A copy with entities set (None removes one)."""
        entities = dict(self.entities)
        for key, value in changes.items():
            if value is None:
                entities.pop(key, None)
            else:
                entities[key] = str(value)
        return BidsName(entities, self.suffix, self.extension)

    def without(self, keys) -> "BidsName":
        return BidsName({k: v for k, v in self.entities.items() if k not in keys},
                        self.suffix, self.extension)

    def replace(self, suffix=None, extension=None) -> "BidsName":
        return BidsName(dict(self.entities), suffix or self.suffix, extension or self.extension)

    def __str__(self) -> str:
        ordered = sorted(self.entities.items(), key=lambda item: _entity_rank(item[0]))
        return "_".join([f"{key}-{value}" for key, value in ordered] + [self.suffix]) \
            + self.extension


def _entity_rank(key: str) -> tuple:
    return (ENTITY_ORDER.index(key), "") if key in ENTITY_ORDER else (len(ENTITY_ORDER), key)


def parse_name(filename: str) -> BidsName | None:
    """BidsName of 'sub-01_ses-1_T1w.nii.gz', or None if the name is not key-value_suffix.ext."""
    stem, dot, extension = filename.partition(".")
    parts = stem.split("_")
    if len(parts) < 2:
        return None
    entities = {}
    for part in parts[:-1]:
        match = _PAIR.match(part)
        if not match or match.group(1) in entities:
            return None
        entities[match.group(1)] = match.group(2)
    suffix = parts[-1]
    if not suffix.isalnum():
        return None
    return BidsName(entities, suffix, dot + extension)

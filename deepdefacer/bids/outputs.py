"""Where each output goes, what its sidecar says, and whether an earlier run already made it.

Two layouts:
- derivatives: `output_dir` is a BIDS derivatives dataset; each defaced image keeps every source
  entity plus `desc-defaced`, with a sidecar holding the source's acquisition metadata, `Sources`
  as BIDS URIs and the provenance; each mask is a `_mod-<suffix>_defacemask.nii.gz`.
- bids: `output_dir` is an upload-ready copy of the input; defaced images take the place (and
  name) of the originals, their sidecars are copied unchanged, and the provenance lives in the
  mask sidecars.

The provenance doubles as the record of what is done: a scan is skipped when its outputs exist
and their provenance names the same input bytes (sha256), the same model and the same mask source.
The file that records completion is written last, so an interrupted job is redone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from deepdefacer.bids.generated_by import (SOFTWARE_NAME, generated_by, how_to_acknowledge,
                                           source_dataset)
from deepdefacer.bids.jobs import Job, MaskGroup
from deepdefacer.bids.names import BidsName
from deepdefacer.bids.select import Scan
from deepdefacer.errors import InputError
from deepdefacer.files import (create_json_exclusive, create_text_exclusive, read_json,
                               split_extension, write_json)
from deepdefacer.provenance import version
from deepdefacer.qc.participant import RENDER_SUFFIX, SLICES_SUFFIX, VERDICT_SUFFIX

LAYOUTS = ("derivatives", "bids")
PROVENANCE_KEY = "Deepdefacer"
BIDS_VERSION = "1.10.0"
SOURCE_DATASET_KEY = "raw"  # bids:raw:<path> URIs resolve through DatasetLinks["raw"]


def defaced_name(name: BidsName) -> BidsName:
    """The source name plus desc-defaced (a source's own desc is kept: desc-preprocDefaced)."""
    description = name.entities.get("desc")
    return name.with_entities(desc="defaced" if description is None else f"{description}Defaced")


# ---------------------------------------------------------------------------------------------
# Paths


# QC files of a scan in sub-<label>/figures/ (derivatives layout), named after the source file.
QC_SUFFIXES = (RENDER_SUFFIX, SLICES_SUFFIX, VERDICT_SUFFIX)


@dataclass
class ScanOutput:
    scan: Scan
    image: Path
    sidecar: Path | None  # derivatives only: in the bids layout the source sidecar is copied
    qc_files: tuple = ()  # derivatives only: the QC figures and verdict (verdict last)

    @property
    def relpath(self) -> str:
        return self.image.as_posix()


@dataclass
class GroupOutput:
    group: MaskGroup
    mask: Path
    mask_sidecar: Path
    scans: list  # ScanOutput


def plan_outputs(job: Job, output_dir, layout: str) -> list[GroupOutput]:
    output_dir = Path(output_dir)
    planned = []
    for group in job.groups:
        folder = output_dir / group.folder
        scan_outputs = []
        for scan in group.scans:
            if layout == "derivatives":
                image = folder / str(defaced_name(scan.name))
                sidecar = folder / str(defaced_name(scan.name).replace(extension=".json"))
                figures = output_dir / scan.relpath.split("/")[0] / "figures"
                stem = split_extension(scan.relpath)[0]
                qc_files = tuple(figures / f"{stem}{suffix}" for suffix in QC_SUFFIXES)
                scan_outputs.append(ScanOutput(scan, image, sidecar, qc_files))
            else:
                scan_outputs.append(ScanOutput(scan, output_dir / scan.relpath, None))
        mask = folder / str(group.mask_name)
        mask_sidecar = folder / str(group.mask_name.replace(extension=".json"))
        planned.append(GroupOutput(group, mask, mask_sidecar, scan_outputs))
    return planned


def all_paths(planned) -> list[Path]:
    paths = []
    for group_output in planned:
        paths += [group_output.mask, group_output.mask_sidecar]
        for scan_output in group_output.scans:
            paths += [p for p in (scan_output.image, scan_output.sidecar) if p is not None]
            paths += list(scan_output.qc_files)
    return paths


# ---------------------------------------------------------------------------------------------
# Sidecars and provenance


def source_uri(scan_relpath: str, layout: str) -> str:
    """BIDS URI of a source file: in the raw dataset (derivatives) or this dataset (bids)."""
    return f"bids:{SOURCE_DATASET_KEY}:{scan_relpath}" if layout == "derivatives" \
        else f"bids::{scan_relpath}"


IMAGE_DESCRIPTION = ("The source image with the voxels of the face set to zero by Deepdefacer; "
                     "every other voxel and the header as the source stored them")


def image_sidecar(scan: Scan, mask_relpath: str, provenance: dict) -> dict:
    """The source's metadata, what the image is, its Sources (the source image, the mask and,
    with --mask-from, the image the mask was computed on) and the provenance."""
    sidecar = {key: value for key, value in scan.metadata.items() if key != "Sources"}
    sidecar["Description"] = IMAGE_DESCRIPTION
    sidecar["Sources"] = [source_uri(scan.relpath, "derivatives"), f"bids::{mask_relpath}"]
    mask_source = provenance.get("MaskSource")
    if mask_source and mask_source not in sidecar["Sources"]:
        sidecar["Sources"].append(mask_source)
    sidecar["SkullStripped"] = False  # required for image derivatives; the brain is untouched
    sidecar[PROVENANCE_KEY] = provenance
    return sidecar


def mask_sidecar(group: MaskGroup, reference: Scan, layout: str, provenance: dict) -> dict:
    return {
        "Sources": [source_uri(reference.relpath, layout)],
        "Description": "Face mask: 1 = voxel removed by Deepdefacer",
        "SkullStripped": False,
        "AppliedTo": [source_uri(scan.relpath, layout) for scan in group.scans],
        PROVENANCE_KEY: provenance,
    }


def _matches(recorded: dict, expected: dict) -> bool:
    return all(recorded.get(key) == value for key, value in expected.items())


# In the bids layout one mask sidecar records the provenance of every scan of its group: these
# keys hold one value a scan, by the scan's path.
PER_SCAN_KEYS = ("InputSHA256", "Verified")


def is_up_to_date(planned, layout: str, expected_by_scan: dict, qc: bool = False) -> bool:
    """Whether every output of the job exists with matching provenance.

    expected_by_scan: relpath -> ``provenance.up_to_date_key(...)`` for each scan of the job. With ``qc`` the
    QC figures and verdict must exist too (derivatives layout), so a job interrupted during QC
    is redone.
    """
    try:
        for group_output in planned:
            if not group_output.mask.is_file():
                return False
            recorded_mask = read_json(group_output.mask_sidecar).get(PROVENANCE_KEY, {})
            for scan_output in group_output.scans:
                expected = expected_by_scan[scan_output.scan.relpath]
                if not scan_output.image.is_file():
                    return False
                # (The bids layout has no QC files: nothing to check there.)
                if qc and scan_output.qc_files and not (
                        all(path.is_file() for path in scan_output.qc_files)
                        and read_json(scan_output.qc_files[-1]).get("verdict")):
                    return False  # the verdict is written last of the QC, and must be readable
                if layout == "derivatives":
                    recorded = read_json(scan_output.sidecar).get(PROVENANCE_KEY, {})
                else:
                    recorded = dict(recorded_mask)
                    for key in PER_SCAN_KEYS:
                        recorded[key] = (recorded_mask.get(key) or {}).get(scan_output.scan.relpath)
                if not _matches(recorded, expected):
                    return False
        return True
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------------------------------
# dataset_description.json


def derivative_description(source_description: dict, bids_dir) -> dict:
    source = source_dataset(source_description, bids_dir)
    description = {
        "Name": f"Deepdefacer: defaced anatomical images of "
                f"{source_description.get('Name', Path(bids_dir).name)}",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [generated_by()],
        "SourceDatasets": [source],
        "DatasetLinks": {SOURCE_DATASET_KEY: source["URL"]},
        "HowToAcknowledge": how_to_acknowledge(),
    }
    if source_description.get("License"):
        description["License"] = source_description["License"]
    return description


DERIVATIVE_README = """Deepdefacer outputs
===================

Anatomical images of the source dataset (see SourceDatasets in dataset_description.json) with the
face removed by Deepdefacer:

- `*_desc-defaced_<suffix>.nii[.gz]`: the source image with the voxels of the face set to zero;
  every other voxel, the header, data type and scaling are those of the source.
- `*_mod-<suffix>_defacemask.nii.gz`: the mask of removed voxels (1 = removed) on the image's grid.
- Each JSON sidecar lists its `Sources` as BIDS URIs and, under "Deepdefacer", the provenance:
  version, model file and sha256, input sha256, device, seconds and command line.
- `sub-<label>/figures/`: quality control of each defaced scan (renders before and after, slices
  with the removed region, and a verdict); `qc_report.html` after the group level.
"""


def prepare_output_dataset(output_dir, bids_dir, source_description: dict, layout: str,
                           deidentify_keys=None) -> None:
    """Create the output's dataset_description.json once, or check the one there is ours; for
    the bids layout write the copy's description and CHANGES (layout_bids; ``deidentify_keys``:
    the sidecar keys the copy goes without, named in its CHANGES entry).

    Raises InputError before any work when output_dir holds a different dataset.
    """
    output_dir = Path(output_dir)
    description_path = output_dir / "dataset_description.json"
    if layout == "derivatives":
        create_json_exclusive(derivative_description(source_description, bids_dir),
                              description_path)
        existing = _read_description(description_path)
        names = [entry.get("Name") for entry in existing.get("GeneratedBy", [])
                 if isinstance(entry, dict)]
        if existing.get("DatasetType") != "derivative" or SOFTWARE_NAME not in names:
            raise InputError(output_dir, "output folder holds another dataset (its "
                                         "dataset_description.json was not written by "
                                         "Deepdefacer); choose an empty folder")
        create_text_exclusive(DERIVATIVE_README, output_dir / "README.md")
        # QC figures (fmriprep style, sub-<label>/figures/) and the group report are not BIDS.
        create_text_exclusive("sub-*/figures\nqc_report.html\nqc_summary.*\n",
                              output_dir / ".bidsignore")
    else:
        from deepdefacer.bids import layout_bids

        if description_path.exists() and not layout_bids.is_copy_of(
                _read_description(description_path), source_description):
            raise InputError(output_dir, "output folder holds another dataset (its "
                                         "dataset_description.json differs from the input's); "
                                         "--layout bids needs an empty folder or an earlier copy")
        write_json(layout_bids.copy_description(source_description, generated_by(),
                                                source_dataset(source_description, bids_dir)),
                   description_path)
        layout_bids.write_changes(bids_dir, output_dir, SOFTWARE_NAME, version(), [
            "Identifying keys removed from the JSON sidecars: " + ", ".join(deidentify_keys)
            + "; header text fields blanked in the defaced images"] if deidentify_keys else [])


def _read_description(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InputError(path, f"unreadable dataset description ({exc})") from None

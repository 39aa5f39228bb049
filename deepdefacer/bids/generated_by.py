"""Who made a dataset: Deepdefacer's BIDS ``GeneratedBy`` entry (version, CodeURL, Container), how
to acknowledge it, and the source dataset entry (``SourceDatasets``).

Shared by the derivatives' dataset_description.json and the upload-ready copy's.
"""

from __future__ import annotations

import os
from pathlib import Path

from deepdefacer.provenance import version

SOFTWARE_NAME = "Deepdefacer"
# Set in the image (Dockerfile: ENV DEEPDEFACER_CONTAINER_IMAGE=deepdefacer:<version>-<variant>):
# the one sign of running in Deepdefacer's own image. /.dockerenv is not one: hosts keep it after
# an image was unpacked onto them, and a container engine's files say nothing of which image ran.
CONTAINER_IMAGE_VARIABLE = "DEEPDEFACER_CONTAINER_IMAGE"
# CITATION.cff's title (a test keeps the two equal).
CITATION_TITLE = "Deepdefacer: a BIDS App that removes faces from MRI head scans with a 3D U-Net"


def container_info() -> dict | None:
    """BIDS GeneratedBy.Container when running in a container: Singularity/Apptainer (their own
    variables; the image's tag, or else the SIF's path) or Deepdefacer's Docker image (its
    variable). None on a bare host, whatever files it has."""
    image = os.environ.get(CONTAINER_IMAGE_VARIABLE)
    sif = os.environ.get("APPTAINER_CONTAINER") or os.environ.get("SINGULARITY_CONTAINER")
    if sif:
        return {"Type": "singularity", **({"Tag": image} if image else {"URI": sif})}
    if image:
        return {"Type": "docker", "Tag": image}
    return None


def code_url() -> str | None:
    """The package metadata's source URL (Project-URL "Source"/"Repository"/"Homepage"), if any."""
    try:
        from importlib.metadata import metadata

        urls = dict(entry.split(", ", 1) for entry in metadata("deepdefacer").get_all(
            "Project-URL") or [] if ", " in entry)
    except Exception:  # not installed: no metadata to read
        return None
    by_label = {label.lower(): url for label, url in urls.items()}
    return next((by_label[label] for label in ("source", "repository", "homepage", "code")
                 if label in by_label), None)


def how_to_acknowledge() -> str:
    return (f'Please cite Deepdefacer ("{CITATION_TITLE}", version {version()}) and the source '
            "dataset.")


def generated_by() -> dict:
    """Deepdefacer's GeneratedBy entry: name, version, what it did, CodeURL and Container when
    known."""
    entry = {"Name": SOFTWARE_NAME, "Version": version(),
             "Description": "Faces removed from anatomical MRI with a 3D U-Net. "
                            + how_to_acknowledge()}
    if code_url():
        entry["CodeURL"] = code_url()
    if container_info():
        entry["Container"] = container_info()
    return entry


def source_dataset(source_description: dict, bids_dir) -> dict:
    entry = {"URL": Path(bids_dir).resolve().as_uri()}
    if source_description.get("DatasetDOI"):
        entry["DOI"] = source_description["DatasetDOI"]
    return entry

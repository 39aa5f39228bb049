"""Provenance details: GeneratedBy.Container only inside a container, how to acknowledge, the image
sidecars' Description and Sources (with --mask-from), and the container images' version."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from bids_app_helpers import REPO
from deepdefacer.bids import generated_by, outputs
from deepdefacer.bids.names import parse_name
from deepdefacer.bids.select import Scan
from deepdefacer.provenance import version

CONTAINER_VARIABLES = ("DEEPDEFACER_CONTAINER_IMAGE", "APPTAINER_CONTAINER",
                       "SINGULARITY_CONTAINER")


@pytest.fixture
def bare_host(monkeypatch):
    """No container variables; and every file exists (a host with /.dockerenv and
    /run/.containerenv left behind), which must not matter."""
    for name in CONTAINER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(Path, "exists", lambda self: True)
    monkeypatch.setattr(Path, "is_file", lambda self: True)
    return monkeypatch


def test_a_bare_host_records_no_container_whatever_files_it_has(bare_host):
    assert generated_by.container_info() is None
    assert "Container" not in generated_by.generated_by()


def test_deepdefacer_docker_image_is_recorded_with_its_tag(bare_host):
    bare_host.setenv("DEEPDEFACER_CONTAINER_IMAGE", "deepdefacer:3.0.0-cpu")
    assert generated_by.container_info() == {"Type": "docker", "Tag": "deepdefacer:3.0.0-cpu"}
    assert generated_by.generated_by()["Container"]["Type"] == "docker"


@pytest.mark.parametrize("variable", ["APPTAINER_CONTAINER", "SINGULARITY_CONTAINER"])
def test_apptainer_and_singularity(bare_host, variable):
    bare_host.setenv(variable, "/images/deepdefacer.sif")
    assert generated_by.container_info() == {"Type": "singularity",
                                             "URI": "/images/deepdefacer.sif"}
    # A SIF made from the Docker image carries its variable: the tag says which image ran.
    bare_host.setenv("DEEPDEFACER_CONTAINER_IMAGE", "deepdefacer:3.0.0-gpu")
    assert generated_by.container_info() == {"Type": "singularity",
                                             "Tag": "deepdefacer:3.0.0-gpu"}


def test_no_code_url_is_invented():
    url = generated_by.code_url()
    assert url is None or url.startswith("https://")
    assert ("CodeURL" in generated_by.generated_by()) == (url is not None)


def test_how_to_acknowledge_cites_the_citation_file():
    title = re.search(r'^title: "(.+)"$', (REPO / "CITATION.cff").read_text(), re.MULTILINE)[1]
    assert generated_by.CITATION_TITLE == title
    description = outputs.derivative_description({"Name": "study"}, REPO)
    assert title in description["HowToAcknowledge"] and version() in description["HowToAcknowledge"]
    assert title in description["GeneratedBy"][0]["Description"]


def scan(relpath: str, **metadata) -> Scan:
    return Scan(REPO / relpath, relpath, parse_name(relpath.rpartition("/")[2]), metadata)


def test_image_sidecars_say_what_the_image_is():
    t1w = scan("sub-01/anat/sub-01_T1w.nii.gz", EchoTime=0.003, Description="the source's")
    sidecar = outputs.image_sidecar(t1w, "sub-01/anat/sub-01_mod-T1w_defacemask.nii.gz",
                                    {"MaskSource": "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"})
    assert sidecar["Description"] == outputs.IMAGE_DESCRIPTION and sidecar["EchoTime"] == 0.003
    # Its own mask: the source and the mask, nothing more.
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T1w.nii.gz",
                                  "bids::sub-01/anat/sub-01_mod-T1w_defacemask.nii.gz"]


def test_with_mask_from_the_mask_source_is_among_the_sources():
    t2w = scan("sub-01/anat/sub-01_T2w.nii.gz")
    mask = "sub-01/anat/sub-01_mod-T2w_defacemask.nii.gz"
    sidecar = outputs.image_sidecar(t2w, mask,
                                    {"MaskSource": "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"})
    assert sidecar["Sources"] == ["bids:raw:sub-01/anat/sub-01_T2w.nii.gz", f"bids::{mask}",
                                  "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"]


# ---------------------------------------------------------------------------------------------
# Container images


def dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


def test_the_image_version_label_defaults_to_the_version_file():
    text = dockerfile()
    [default] = re.findall(r"^ARG VERSION=(\S+)$", text, re.MULTILINE)
    assert default == (REPO / "version").read_text().strip(), \
        "Dockerfile's ARG VERSION default is not the version file: update it with the release"
    assert 'org.opencontainers.image.version="${VERSION}"' in text


def test_the_image_has_slash_version_and_the_marker_variable():
    text = dockerfile()
    runtime = text[text.index("AS runtime"):]
    assert re.search(r"^COPY version /version$", runtime, re.MULTILINE)
    assert '"$(cat /version)" != "${VERSION}"' in runtime  # the build fails on a mismatch
    assert re.search(r'DEEPDEFACER_CONTAINER_IMAGE="\$\{IMAGE_NAME\}"', runtime)
    assert "!version" in (REPO / ".dockerignore").read_text()  # in the build context


def test_the_singularity_definition_labels_its_version_from_slash_version():
    text = (REPO / "Singularity.def").read_text()
    post = text[text.index("%post"):text.index("%environment")]
    assert 'echo "org.opencontainers.image.version $(cat /version)"' in post
    assert "%test" in text and "/version" in text[text.index("%test"):]


def test_the_container_scripts_parse():
    scripts = [REPO / ".ci" / "docker.sh", *sorted((REPO / "containers").glob("*.sh"))]
    for script in scripts:
        subprocess.run(["bash", "-n", str(script)], check=True)

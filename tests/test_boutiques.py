"""boutiques/deepdefacer.json, the Boutiques descriptor that Nipoppy and CBRAIN run the BIDS App
from: valid for `bosh validate`, and every command line `bosh exec simulate` makes from it is one
that Deepdefacer's own parser accepts, with the same meaning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bids_app_helpers import DEMO, REPO
from deepdefacer.cli.parser import build_parser

boutiques = pytest.importorskip(
    "boutiques", reason="the boutiques package (PyPI, in the test extra) is not installed: "
                        "`pip install boutiques` to check the descriptor")

DESCRIPTOR = REPO / "boutiques" / "deepdefacer.json"
EXAMPLE_INVOCATION = REPO / "boutiques" / "invocation.json"


def simulate(invocation: dict, tmp_path: Path) -> list:
    """The command line `bosh exec simulate` makes of an invocation, as arguments."""
    path = tmp_path / "invocation.json"
    path.write_text(json.dumps(invocation))
    output = boutiques.bosh(["exec", "simulate", "-i", str(path), str(DESCRIPTOR)])
    return output.shell_command.split()


def descriptor() -> dict:
    return json.loads(DESCRIPTOR.read_text())


def test_bosh_validate_passes():
    assert boutiques.bosh(["validate", str(DESCRIPTOR)]) is None  # raises when invalid


def test_the_descriptor_has_the_version_and_the_bids_app_positionals():
    tool = descriptor()
    assert tool["tool-version"] == (REPO / "version").read_text().strip()
    assert tool["command-line"].startswith("deepdefacer [BIDS_DIR] [OUTPUT_DIR] [ANALYSIS_LEVEL] ")
    assert tool["container-image"]["image"] == f"deepdefacer:{tool['tool-version']}-cpu"
    by_id = {entry["id"]: entry for entry in tool["inputs"]}
    assert by_id["analysis_level"]["value-choices"] == ["participant", "group"]
    assert not any(by_id[name]["optional"] for name in ("bids_dir", "output_dir", "analysis_level"))


def test_the_example_invocation_simulates_to_a_command_the_parser_accepts(tmp_path):
    invocation = json.loads(EXAMPLE_INVOCATION.read_text())
    arguments = simulate(dict(invocation, bids_dir=str(DEMO)), tmp_path)
    assert arguments[0] == "deepdefacer"
    args = build_parser().parse_args(arguments[1:])
    assert (args.analysis_level, args.layout, args.participant_label) == \
        ("participant", "bids", ["01", "02"])
    assert args.deidentify_metadata and args.mask_from == "T1w" and args.quiet


def test_every_input_of_the_descriptor_is_an_option_of_the_parser(tmp_path):
    """All inputs at once (each with a valid value), so that a renamed or removed option breaks
    this test rather than a Nipoppy or CBRAIN run."""
    filters = tmp_path / "filters.json"
    filters.write_text('{"t1w": {"acquisition": null}}')
    values = {"bids_dir": str(DEMO), "output_dir": str(tmp_path / "out"),
              "analysis_level": "group", "bids_filter_file": str(filters),
              "participant_label": ["01"], "exclude_participant_label": ["02"],
              "session_label": ["1"], "suffix": ["T1w", "T2w"], "mask_from": "T1w",
              "deidentify_keys": ["StationName"], "mem": "8G", "work_dir": str(tmp_path / "w"),
              "bids_database_dir": str(tmp_path / "db")}
    invocation = {}
    for entry in descriptor()["inputs"]:
        if entry["type"] == "Flag":
            invocation[entry["id"]] = True
        elif entry["type"] == "Number":
            invocation[entry["id"]] = 2
        elif "value-choices" in entry and entry["id"] not in values:
            invocation[entry["id"]] = entry["value-choices"][-1]
        else:
            invocation[entry["id"]] = values[entry["id"]]
    arguments = simulate(invocation, tmp_path)
    # --quiet and --verbose exclude each other; every other option may be given together.
    args = build_parser().parse_args(arguments[1:])
    assert args.analysis_level == "group" and args.layout == "bids" and args.device == "gpu"
    assert args.atlas_guard is False and args.nprocs == 2 and args.omp_nthreads == 2
    assert args.deidentify_keys == ["StationName"] and args.exclude_participant_label == ["02"]
    flags = {entry["command-line-flag"] for entry in descriptor()["inputs"]
             if "command-line-flag" in entry}
    assert flags <= set(arguments)

"""Scan selection on the 74 real layouts of bids-examples, and the user's filters on ds-demo."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from bids_app_helpers import BIDS_EXAMPLES, DEMO, needs_shared_data
from deepdefacer.bids import filters as filter_file
from deepdefacer.bids import jobs, select
from deepdefacer.cli.run import main
from deepdefacer.messages import EXIT_NOTHING_SELECTED

pytestmark = needs_shared_data

EXAMPLE_DATASETS = sorted(p.name for p in BIDS_EXAMPLES.iterdir()) if BIDS_EXAMPLES.is_dir() \
    else []
# The reasons a placeholder may give: every one names the problem, none is a traceback.
CLEAR_REASONS = re.compile(
    r"^(mask source \S+ failed: )?"
    r"(empty file \(0 bytes\)|truncated: the header promises \d+ bytes"
    r"|not a readable NIfTI file \(|not a NIfTI file \(|image is empty \(every voxel is"
    r"|image contains \d+ NaN or infinite voxels)")


def independent_listing(dataset: Path) -> set:
    """Anatomical images with a default suffix in sub-*/[ses-*/]anat/, found without pybids."""
    found = set()
    for subject in dataset.glob("sub-*"):
        for dirpath, _, filenames in os.walk(subject):
            relative = Path(dirpath).relative_to(dataset)
            session_ok = len(relative.parts) == 2 or (
                len(relative.parts) == 3 and relative.parts[1].startswith("ses-"))
            if relative.name != "anat" or not session_ok:
                continue
            for filename in filenames:
                match = re.fullmatch(r"(sub-[a-zA-Z0-9]+)_(?:.*_)?([a-zA-Z0-9]+)\.nii(?:\.gz)?",
                                     filename)
                if match and match.group(1) == relative.parts[0] \
                        and match.group(2) in select.DEFAULT_SUFFIXES:
                    found.add((relative / filename).as_posix())
    return found


def test_there_are_74_layouts():
    assert len(EXAMPLE_DATASETS) == 74


@pytest.mark.parametrize("dataset", EXAMPLE_DATASETS)
@pytest.mark.slow
def test_app_selects_every_anatomical_image_and_reports_each_placeholder(dataset, tmp_path,
                                                                         capsys):
    expected = independent_listing(BIDS_EXAMPLES / dataset)
    status = main([str(BIDS_EXAMPLES / dataset), str(tmp_path / "out"), "participant",
                   "--skip-bids-validation", "--quiet"])
    stderr = capsys.readouterr().err
    assert "Traceback" not in stderr

    failed = dict(re.findall(r"^  (\S+): (.+)$", stderr, flags=re.MULTILINE))
    assert set(failed) == expected
    for relpath, reason in failed.items():
        assert CLEAR_REASONS.match(reason), f"{relpath}: unclear reason {reason!r}"
    if expected:
        assert status == 1
        assert f"{len(expected)} scan(s): 0 defaced, 0 already up to date, " \
               f"{len(expected)} failed" in stderr
        # Failed scans leave nothing behind: only the dataset's own files.
        written = {p.relative_to(tmp_path / "out").as_posix()
                   for p in (tmp_path / "out").rglob("*") if p.is_file()}
        assert written == {"dataset_description.json", "README.md", ".bidsignore"}
    else:  # nothing selected is an error of its own, not a silent success
        assert status == EXIT_NOTHING_SELECTED
        assert "no anatomical images match the selection" in stderr
        assert not (tmp_path / "out").exists()  # found before anything is written


# ---------------------------------------------------------------------------------------------
# Filters on the demo dataset


@pytest.fixture(scope="module")
def demo_layout():
    return select.open_layout(DEMO)


def _relpaths(scans):
    return [scan.relpath for scan in scans]


ALL_DEMO = ["sub-01/ses-1/anat/sub-01_ses-1_T1w.nii.gz",
            "sub-01/ses-1/anat/sub-01_ses-1_T2w.nii.gz",
            "sub-01/ses-2/anat/sub-01_ses-2_PDw.nii.gz", "sub-02/anat/sub-02_run-1_T1w.nii.gz",
            "sub-02/anat/sub-02_run-2_T1w.nii"]


def test_demo_default_selection(demo_layout):
    scans = select.select_scans(demo_layout)
    assert _relpaths(scans) == ALL_DEMO
    assert scans[0].metadata["MagneticFieldStrength"] == 1.5  # sidecar read


def test_participant_session_and_suffix_filters(demo_layout):
    assert _relpaths(select.select_scans(demo_layout, ["02"])) == ALL_DEMO[3:]
    assert _relpaths(select.select_scans(demo_layout, ["01"], ["2"])) == [ALL_DEMO[2]]
    assert _relpaths(select.select_scans(demo_layout, suffixes=["T2w", "PDw"])) == ALL_DEMO[1:3]


def test_bids_filter_file_applies_per_suffix(demo_layout):
    only_run_2 = select.select_scans(demo_layout, bids_filters={"t1w": {"run": 2}})
    assert _relpaths(only_run_2) == ALL_DEMO[1:3] + [ALL_DEMO[4]]
    no_session = select.select_scans(demo_layout, bids_filters={"t1w": {"session": None}})
    assert _relpaths(no_session) == ALL_DEMO[1:]
    any_session = select.select_scans(demo_layout, suffixes=["T1w"],
                                      bids_filters={"t1w": {"session": "*"}})
    assert _relpaths(any_session) == [ALL_DEMO[0]]


def test_unknown_participant_or_session_is_an_error(demo_layout):
    with pytest.raises(select.InputError, match=r"participant\(s\) not found: sub-07 "
                                                r"\(the dataset has sub-01, sub-02\)"):
        select.select_scans(demo_layout, ["07"])
    with pytest.raises(select.InputError, match=r"session\(s\) not found: ses-3"):
        select.select_scans(demo_layout, ["01"], ["3"])


# ---------------------------------------------------------------------------------------------
# Jobs: which scan the model sees, which scans share its mask


def test_mp2rage_parts_share_one_mask_computed_on_a_magnitude_image():
    layout = select.open_layout(BIDS_EXAMPLES / "qmri_mp2rage")
    planned = jobs.plan_jobs(select.select_scans(layout))
    by_label = {job.label: job for job in planned}
    mp2rage = by_label["sub-1/anat/sub-1_inv-1_part-mag_MP2RAGE.nii"]
    assert [group.mask_relpath for group in mp2rage.groups] == \
        ["sub-1/anat/sub-1_mod-MP2RAGE_defacemask.nii.gz"]
    assert len(mp2rage.scans) == 4  # inv-1/2 x mag/phase
    assert by_label["sub-1/anat/sub-1_UNIT1.nii"].groups[0].mask_relpath == \
        "sub-1/anat/sub-1_mod-UNIT1_defacemask.nii.gz"
    assert len(planned) == 2


def test_mask_from_t1w_carries_the_mask_within_each_session(demo_layout):
    scans = select.select_scans(demo_layout)
    planned = jobs.plan_jobs(scans, mask_from="T1w")
    summary = {job.label: [scan.relpath for scan in job.scans] for job in planned}
    assert summary == {
        ALL_DEMO[0]: ALL_DEMO[0:2],             # T2w gets the session's T1w mask
        ALL_DEMO[2]: [ALL_DEMO[2]],             # ses-2 has no T1w: own mask
        ALL_DEMO[3]: [ALL_DEMO[3], ALL_DEMO[4]],  # run-2 gets run-1's mask
    }
    assert "no T1w" in next(job.note for job in planned if job.label == ALL_DEMO[2])
    without = jobs.plan_jobs(scans)
    assert [job.label for job in without] == ALL_DEMO


# ---------------------------------------------------------------------------------------------
# --bids-filter-file content


def test_filter_entities_are_pybids_entities():
    from bids.layout.models import Config

    pybids = {entity.name for entity in Config.load("bids").entities.values()}
    assert set(filter_file.FILTER_ENTITIES) <= pybids
    # Left out on purpose: the key fixes the suffix; scans and fmap name no anatomical file.
    assert pybids - set(filter_file.FILTER_ENTITIES) == {"suffix", "scans", "fmap"}
    assert set(filter_file.FILTER_ENTITY_SHORT_NAMES.values()) <= set(filter_file.FILTER_ENTITIES)


def test_valid_filters_pass_the_check_and_select_as_before(demo_layout):
    filters = {"T1w": {"run": [1, "2"], "session": None, "reconstruction": None,
                       "datatype": "anat", "extension": ".nii.gz"},
               "pdw": {"session": 2, "part": None}}
    checked = filter_file.check_bids_filters(filters)
    assert set(checked) == {"t1w", "pdw"}
    assert _relpaths(select.select_scans(demo_layout, bids_filters=checked)) == \
        ALL_DEMO[1:4]


# ---------------------------------------------------------------------------------------------
# Sidecars that cannot be read


def test_a_broken_sidecar_is_named_in_a_warning_and_the_scan_still_selected(tmp_path, caplog):
    import shutil

    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    own = dataset / "sub-01/ses-1/anat/sub-01_ses-1_T1w.json"
    own.write_text('{"MagneticFieldStrength": 1.5,')
    inherited = dataset / "T2w.json"  # at the root: every T2w of the dataset inherits it
    inherited.write_text('["not", "an object"]')
    layout = select.open_layout(dataset)
    with caplog.at_level("WARNING", logger="deepdefacer"):
        scans = {scan.relpath: scan for scan in select.select_scans(layout)}
    assert list(scans) == ALL_DEMO
    assert scans[ALL_DEMO[0]].metadata == {}
    assert scans[ALL_DEMO[1]].metadata["MagneticFieldStrength"] == 1.5  # its own sidecar
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 2, messages
    assert messages[0].startswith(f"{own}: unreadable JSON (JSONDecodeError: ")
    assert messages[1].startswith(f"{inherited}: not a JSON object (a list)")
    assert all("metadata is missing from the defaced images' sidecars" in m for m in messages)
    # The group level reads no metadata, so it does not warn again.
    caplog.clear()
    with caplog.at_level("WARNING", logger="deepdefacer"):
        assert _relpaths(select.select_scans(layout, metadata=False)) == ALL_DEMO
    assert caplog.records == []


def test_an_unreadable_sidecar_is_named_in_a_warning(tmp_path, caplog):
    import shutil

    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    sidecar = dataset / "sub-01/ses-2/anat/sub-01_ses-2_PDw.json"
    sidecar.unlink()
    sidecar.mkdir()  # a name that cannot be read as a file, even by root
    layout = select.open_layout(dataset)
    with caplog.at_level("WARNING", logger="deepdefacer"):
        scans = select.select_scans(layout, suffixes=["PDw"])
    assert _relpaths(scans) == [ALL_DEMO[2]]
    [record] = caplog.records
    assert record.getMessage().startswith(f"{sidecar}: unreadable JSON (IsADirectoryError")

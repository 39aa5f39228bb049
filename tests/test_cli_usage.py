"""Usage errors and errors before any work: exit code 2 (3 for BIDS validation), nothing written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from bids_app_helpers import BIDS_EXAMPLES, DEMO, REPO, needs_shared_data
from deepdefacer.bids.validate import find_validator, ValidatorMissing
from deepdefacer.cli import deface_one
from deepdefacer.cli.run import main

pytestmark = needs_shared_data


def _has_validator() -> bool:
    try:
        find_validator()
        return True
    except ValidatorMissing:
        return False


needs_validator = pytest.mark.skipif(not _has_validator(),
                                     reason="bids-validator-deno is not installed")


@pytest.mark.parametrize("arguments, message", [
    ([], "the following arguments are required"),
    (["{demo}", "{out}", "everything"], "invalid choice: 'everything'"),
    (["{demo}", "{out}", "participant", "--unknown-flag"], "unrecognized arguments"),
    (["{demo}", "{out}", "participant", "--device", "tpu"], "invalid choice: 'tpu'"),
    (["{demo}", "{out}", "participant", "--n-procs", "0"], "must be at least 1"),
    (["{demo}", "{out}", "participant", "--participant-label", "sub-01_x"], "invalid label"),
    (["{demo}", "{out}", "participant", "--suffix", "bold"], "unknown anatomical suffix 'bold'"),
    (["{demo}", "{out}", "participant", "--layout", "flat"], "invalid choice: 'flat'"),
    (["{demo}", "{out}", "participant", "--bids-filter-file", "{bad_json}"], "not valid JSON"),
    (["{demo}", "{out}", "participant", "--bids-filter-file", "{bad_key}"], "unknown key(s) bold"),
    (["{demo}", "{out}", "participant", "--suffix", "T2w", "--mask-from", "T1w"],
     "--mask-from T1w needs T1w among the selected suffixes"),
    (["{missing}", "{out}", "participant"], "no such folder"),
    (["{a_file}", "{out}", "participant"], "bad.json is a file, not a folder"),
    (["{demo}", "{out}", "participant", "--verbose", "--quiet"], "not allowed with argument"),
])
def test_usage_errors_exit_2_and_write_nothing(arguments, message, tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "bad_key.json").write_text(json.dumps({"bold": {"task": "rest"}}))
    values = {"demo": DEMO, "out": tmp_path / "out", "missing": tmp_path / "missing",
              "bad_json": tmp_path / "bad.json", "bad_key": tmp_path / "bad_key.json",
              "a_file": tmp_path / "bad.json"}
    status = main([argument.format(**values) for argument in arguments])
    captured = capsys.readouterr()
    assert status == 2
    assert message in captured.err
    assert "usage: deepdefacer" in captured.err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("filters, message", [
    ({"t1w": {"foo": "x"}}, '"t1w": unknown entity "foo"; pybids names entities in full: '
                            "subject, session"),
    ({"t1w": {"acq": "mprage"}}, '"t1w": unknown entity "acq" (did you mean acquisition?)'),
    ({"t1w": {"acquisition": {"label": "mprage"}}},
     '"t1w": "acquisition": a value is a string, an integer, null or "*" (or a list of them), '
     "not an object"),
    (["t1w"], "the top level must be an object mapping suffixes to entity filters, not a list"),
    ({"t1w": "mprage"}, '"t1w" must map entities to values, not a string'),
    ({"t1w": {"datatype": "foo"}}, '"t1w": "datatype": "foo" is not a BIDS datatype; '
                                   "Deepdefacer selects anatomical (anat) images only"),
    ({"t1w": {"datatype": "func"}}, '"t1w": "datatype": "func"; Deepdefacer selects anatomical'),
    ({"t1w": {"suffix": "T2w"}}, 'the key "t1w" already selects the suffix'),
    ({"t1w": {"run": 1.5}}, '"t1w": "run": 1.5 is not an index'),
    ({"t1w": {"run": True}}, '"t1w": "run": true is not an index'),
    ({"t1w": {"run": []}}, '"t1w": "run": an empty list, which pybids would ignore'),
    ({"t1w": {"part": "magnitude"}}, '"part": "magnitude" is not one of "mag", "phase"'),
    ({"t1w": {"acquisition": "mp rage"}}, '"mp rage" is not a BIDS label'),
    ({"t1w": {"extension": ".mgz"}}, '"extension": ".mgz" is not one of ".nii", ".nii.gz"'),
])
def test_bids_filter_content_errors_are_usage_errors(filters, message, tmp_path, capsys):
    path = tmp_path / "filters.json"
    path.write_text(json.dumps(filters))
    status = main([str(DEMO), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                   "--bids-filter-file", str(path)])
    err = capsys.readouterr().err
    assert status == 2
    assert "usage: deepdefacer" in err
    assert f"argument --bids-filter-file/--bids_filter_file: {path}: " in err
    assert message in err
    assert "Traceback" not in err and "sqlalchemy" not in err.lower()
    assert not (tmp_path / "out").exists()


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("Deepdefacer ")
    assert main(["--help"]) == 0
    help_text = capsys.readouterr().out
    for flag in ("--participant-label", "--session-label", "--suffix", "--bids-filter-file",
                 "--skip-bids-validation", "--n-procs", "--device", "--overwrite", "--layout",
                 "--work-dir", "--verbose", "--quiet", "--mask-from", "Exit codes"):
        assert flag in help_text


def test_not_a_bids_dataset(tmp_path, capsys):
    (tmp_path / "scans").mkdir()
    status = main([str(tmp_path / "scans"), str(tmp_path / "out"), "participant"])
    assert status == 2
    assert "not a BIDS dataset (no dataset_description.json)" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("inside", ["derivatives/deepdefacer", "."])
def test_output_inside_input(inside, tmp_path, capsys):
    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    before = sorted(p.relative_to(dataset) for p in dataset.rglob("*"))
    status = main([str(dataset), str(dataset / inside), "participant", "--skip-bids-validation"])
    assert status == 2
    assert "output folder is inside the input dataset" in capsys.readouterr().err
    assert sorted(p.relative_to(dataset) for p in dataset.rglob("*")) == before


def test_output_around_input(tmp_path, capsys):
    dataset = tmp_path / "ds"
    shutil.copytree(DEMO, dataset)
    assert main([str(dataset), str(tmp_path), "participant", "--skip-bids-validation"]) == 2
    assert "output folder contains the input dataset" in capsys.readouterr().err


def test_unknown_participant_before_any_work(tmp_path, capsys):
    status = main([str(DEMO), str(tmp_path / "out"), "participant", "--participant-label",
                   "01", "sub-09", "--skip-bids-validation"])
    assert status == 2
    assert "participant(s) not found: sub-09 (the dataset has sub-01, sub-02)" in \
        capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_output_folder_of_another_dataset(tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "dataset_description.json").write_text(json.dumps(
        {"Name": "fmriprep outputs", "BIDSVersion": "1.9.0", "DatasetType": "derivative",
         "GeneratedBy": [{"Name": "fMRIPrep"}]}))
    status = main([str(DEMO), str(other), "participant", "--skip-bids-validation"])
    assert status == 2
    assert "output folder holds another dataset" in capsys.readouterr().err
    assert [p.name for p in other.iterdir()] == ["dataset_description.json"]


@needs_validator
def test_invalid_input_dataset_exits_3_before_any_work(tmp_path, capsys):
    status = main([str(BIDS_EXAMPLES / "synthetic"), str(tmp_path / "out"), "participant"])
    err = capsys.readouterr().err
    assert status == 3
    assert "fails BIDS validation with 15 error(s)" in err
    assert "SCANS_FILENAME_NOT_MATCH_DATASET" in err
    assert "--skip-bids-validation" in err
    assert not (tmp_path / "out").exists()


def test_missing_validator_is_a_clear_usage_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on PATH
    monkeypatch.setattr(sys, "executable", str(tmp_path / "python"))
    status = main([str(DEMO), str(tmp_path / "out"), "participant"])
    assert status == 2
    assert "bids-validator-deno is not installed" in capsys.readouterr().err


def test_group_level_without_outputs(tmp_path, capsys):
    status = main([str(DEMO), str(tmp_path / "nothing"), "group"])
    assert status in (1, 2)
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_run_py_and_console_script_behave_the_same(tmp_path):
    for command in ([sys.executable, str(REPO / "run.py")],
                    [sys.executable, "-m", "deepdefacer.cli.run"]):
        completed = subprocess.run(command + [str(DEMO), str(tmp_path / "out"), "participant",
                                              "--participant-label", "42"],
                                   capture_output=True, text=True, timeout=120)
        assert completed.returncode == 2, completed.stderr
        assert "participant(s) not found: sub-42" in completed.stderr
        assert "Traceback" not in completed.stderr


def test_deepdeface_usage_errors(tmp_path, capsys):
    assert deface_one.main([]) == 2
    assert "required: input" in capsys.readouterr().err
    existing = tmp_path / "t1_defaced.nii.gz"
    existing.write_bytes(b"x")
    assert deface_one.main([str(tmp_path / "t1.nii.gz"), "-o", str(existing)]) == 2
    assert "exists (use --force to replace it)" in capsys.readouterr().err
    source = tmp_path / "t1.nii.gz"
    assert deface_one.main([str(source), "-o", str(source), "--force"]) == 2
    assert "would overwrite an input" in capsys.readouterr().err


@pytest.mark.parametrize("verbose", [False, True])
def test_unexpected_errors_are_one_line_unless_verbose(verbose, tmp_path, capsys, monkeypatch):
    from deepdefacer.bids import outputs

    def broken(*args, **kwargs):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(outputs, "prepare_output_dataset", broken)
    arguments = [str(DEMO), str(tmp_path / "out"), "participant", "--skip-bids-validation"]
    status = main(arguments + (["--verbose"] if verbose else []))
    err = capsys.readouterr().err
    assert status == 1
    assert "RuntimeError: simulated bug" in err
    assert ("Traceback" in err) == verbose

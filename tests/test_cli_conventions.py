"""The command-line conventions users bring from fMRIPrep, MRIQC and the BIDS Apps template:
verbosity, label lists and files, exclusions, the validator flag's spellings, resources, an empty
selection, validating and indexing only the selected participants."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from bids_app_helpers import DEMO
from deepdefacer import parallel
from deepdefacer.bids import select, validate
from deepdefacer.cli.parser import build_parser
from deepdefacer.cli.run import main
from deepdefacer.messages import EXIT_INVALID_DATASET, EXIT_NOTHING_SELECTED
from deepdefacer.provenance import version


def parse(*extra):
    return build_parser().parse_args([str(DEMO), "/tmp/out", "participant", *extra])


def test_v_is_verbosity_and_version_is_long_only(capsys):
    assert parse("-vv").verbose == 2 and parse("-v").verbose == 1 and parse().verbose == 0
    with pytest.raises(SystemExit) as exited:
        parse("--version")
    assert exited.value.code == 0 and capsys.readouterr().out.strip() == f"Deepdefacer {version()}"


@pytest.mark.parametrize("spelling", ["--skip-bids-validation", "--skip_bids_validation",
                                      "--skip-bids-validator", "--skip_bids_validator"])
def test_the_validator_flag_in_every_spelling_users_copy(spelling):
    assert parse(spelling).skip_bids_validation is True


def test_labels_accumulate_over_repeated_flags_and_come_from_files(tmp_path):
    args = parse("--participant-label", "01", "--participant-label", "sub-02", "03")
    assert args.participant_label == ["01", "02", "03"]
    labels = tmp_path / "participants.txt"
    labels.write_text("sub-01  # the first\n02\n\n# none here\n")
    assert parse("--participant-label-file", str(labels)).participant_label_file == ["01", "02"]
    assert parse("--session-id", "1", "--session-label", "ses-2").session_label == ["1", "2"]
    assert parse("--exclude-participant-label", "sub-02").exclude_participant_label == ["02"]


def test_a_label_file_with_a_bad_label_is_a_usage_error(tmp_path, capsys):
    labels = tmp_path / "participants.txt"
    labels.write_text("01\nsub-02_x\n")
    with pytest.raises(SystemExit) as exited:
        parse("--participant-label-file", str(labels))
    assert exited.value.code == 2 and "invalid label 'sub-02_x'" in capsys.readouterr().err


def test_chosen_participants():
    assert select.chosen_participants(DEMO) is None  # every participant
    assert select.chosen_participants(DEMO, ["02", "01", "02"]) == ["02", "01"]
    assert select.chosen_participants(DEMO, [], ["01"]) == ["02"]
    assert select.chosen_participants(DEMO, ["01"], ["01"]) == []


@pytest.mark.parametrize("arguments", [["--exclude-participant-label", "01", "02"],
                                       ["--suffix", "FLAIR"]])
def test_an_empty_selection_is_an_error_of_its_own(arguments, tmp_path, capsys):
    status = main([str(DEMO), str(tmp_path / "out"), "participant", "--skip-bids-validation",
                   *arguments])
    assert status == EXIT_NOTHING_SELECTED
    assert "nothing selected" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_resources_follow_nipreps_names_within_the_allocation(monkeypatch):
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 8)
    assert parallel.plan_resources(2) == parallel.Resources(2, 4)
    assert parallel.plan_resources(2, total_cpus=4).threads == 2
    planned = parallel.plan_resources(1, total_cpus=32)  # more than the allocation
    assert planned.threads == 8 and "may use 8 CPUs" in planned.notes[0]
    assert parallel.plan_resources(4, threads=1).threads == 1
    tight = parallel.plan_resources(4, mem_gb=4)
    assert tight.n_procs == 2 and "--mem 4 GB" in tight.notes[0]
    assert parallel.plan_resources(4, jobs=1).n_procs == 1  # no idle processes


def test_without_n_procs_a_process_a_cpu_as_memory_and_jobs_allow(monkeypatch):
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 8)
    monkeypatch.setattr(parallel, "available_memory_gb", lambda: 24.0)
    assert parallel.plan_resources() == parallel.Resources(8, 1)
    assert parallel.plan_resources(jobs=3) == parallel.Resources(3, 2)
    assert parallel.plan_resources(threads=2) == parallel.Resources(4, 2)
    assert parallel.plan_resources(total_cpus=2).n_procs == 2
    assert parallel.plan_resources(mem_gb=4).n_procs == 2  # 0.4 GB + 2 x 1.6 GB
    monkeypatch.setattr(parallel, "available_memory_gb", lambda: 3.0)
    assert parallel.plan_resources() == parallel.Resources(1, 8)
    assert parallel.plan_resources(2).n_procs == 2  # asked for: kept (no --mem given)


def test_memory_comes_from_the_slurm_allocation(monkeypatch):
    monkeypatch.setattr(parallel, "usable_cpus", lambda: 2)
    monkeypatch.delenv("SLURM_MEM_PER_CPU", raising=False)
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "4096")
    assert parallel.available_memory_gb() <= 4.0
    assert parallel.plan_resources().n_procs == 2
    monkeypatch.setenv("SLURM_MEM_PER_NODE", "3072")  # 3G: two processes would not fit
    assert parallel.plan_resources().n_procs == 1
    monkeypatch.delenv("SLURM_MEM_PER_NODE")
    monkeypatch.setenv("SLURM_MEM_PER_CPU", "1024")
    assert parallel.available_memory_gb() <= 2.0


def dataset_with_a_bad_participant(tmp_path) -> Path:
    """ds-demo plus sub-03, whose anatomical file breaks the BIDS naming rules."""
    dataset = shutil.copytree(DEMO, tmp_path / "ds")
    anat = dataset / "sub-03" / "anat"
    anat.mkdir(parents=True)
    shutil.copy(dataset / "sub-02" / "anat" / "sub-02_run-1_T1w.nii.gz",
                anat / "sub-03_T1w_extra-part.nii.gz")
    return dataset


@pytest.mark.slow
def test_only_the_selected_participants_are_validated(tmp_path):
    dataset = dataset_with_a_bad_participant(tmp_path)
    assert not validate.validate_participants(dataset).ok  # the test can fail
    selected = validate.validate_participants(dataset, ["01", "02"])
    assert selected.ok, selected.summary()


@pytest.mark.slow
def test_a_bad_participant_elsewhere_does_not_stop_a_selected_one(tmp_path, capsys):
    dataset = dataset_with_a_bad_participant(tmp_path)
    assert main([str(dataset), str(tmp_path / "all"), "participant", "--suffix", "PDw"]) \
        == EXIT_INVALID_DATASET
    err = capsys.readouterr().err
    assert "Validating the dataset" in err
    assert main([str(dataset), str(tmp_path / "one"), "participant", "--participant-label", "01",
                 "--suffix", "PDw", "--device", "cpu", "--skip-qc"]) == 0
    err = capsys.readouterr().err
    assert "Validating 1 participant(s) with bids-validator-deno" in err
    assert "1 scan(s): 1 defaced" in err


def test_only_the_selected_participants_are_indexed(tmp_path):
    layout = select.open_layout(DEMO, ["02"])
    indexed = {Path(path).relative_to(DEMO).parts[0] for path in layout.get(return_type="filename")}
    assert "sub-02" in indexed and "sub-01" not in indexed
    assert {scan.relpath.split("/")[0] for scan in select.select_scans(layout, ["02"])} == {"sub-02"}


def test_a_database_is_kept_and_reused(tmp_path):
    database = tmp_path / "pybids"
    first = select.open_layout(DEMO, ["02"], database)
    assert any(database.iterdir())  # written
    reused = select.open_layout(DEMO, ["01"], database)  # the whole dataset, read back
    assert len(select.select_scans(reused)) == len(select.select_scans(first)) == 5
    assert json.loads((DEMO / "dataset_description.json").read_text())  # input untouched

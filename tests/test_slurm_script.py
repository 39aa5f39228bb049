"""docs/slurm_array.sh without a cluster: fake sbatch, scontrol and deepdefacer commands on PATH.
The real one-node SLURM cluster runs it in .ci/slurm.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "docs" / "slurm_array.sh"


def fake(bin_dir: Path, name: str, body: str) -> None:
    path = bin_dir / name
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)


@pytest.fixture
def env(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    # sbatch: records its arguments and environment, answers a job id as --parsable does
    fake(bin_dir, "sbatch", f'printf "%s\\n" "$@" > {tmp_path}/sbatch.args\n'
                            f'echo "$DEEPDEFACER_SCRIPT" > {tmp_path}/sbatch.script\necho "42;cluster"\n')
    fake(bin_dir, "scontrol", 'echo "   Command=/home/user/slurm_array.sh"\n')
    fake(bin_dir, "deepdefacer", f'printf "%s\\n" "$@" > {tmp_path}/app.args\n'
                                 'exit "${FAKE_STATUS:-0}"\n')
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(("SLURM_", "DEEPDEFACER_", "CHUNK"))}
    environment["PATH"] = f"{bin_dir}:{environment['PATH']}"
    return environment


def run(arguments, environment, cwd, **extra):
    return subprocess.run(["bash", str(SCRIPT), *arguments], env={**environment, **extra}, cwd=cwd,
                          capture_output=True, text=True, timeout=60)


def test_syntax():
    for script in (SCRIPT, REPO / ".ci" / "slurm.sh"):
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_submit_writes_the_task_list_once_sorted_and_chunked(tmp_path, env):
    bids = tmp_path / "bids"
    for label in ("sub-b", "sub-10", "sub-2", "sub-B", "sub-01"):
        (bids / label / "anat").mkdir(parents=True)
    (bids / "derivatives").mkdir()
    submit = tmp_path / "submit"
    submit.mkdir()
    done = run([str(bids), str(tmp_path / "out"), "--partition=short"], env, submit, CHUNK="2")
    assert done.returncode == 0, done.stderr
    assert "Submitted batch job 42" in done.stdout
    lists = list((submit / "logs").glob("deepdefacer_tasks_*.txt"))  # logs/ made before sbatch
    assert len(lists) == 1
    assert lists[0].read_text().splitlines() == ["sub-01 sub-10", "sub-2 sub-B", "sub-b"]  # LC_ALL=C
    args = (tmp_path / "sbatch.args").read_text().splitlines()
    assert args[:3] == ["--parsable", "--array=1-3%50", "--partition=short"]
    assert args[3:] == [str(SCRIPT), str(bids), str(tmp_path / "out"), str(lists[0])]
    assert (tmp_path / "sbatch.script").read_text().strip() == str(SCRIPT)


def test_task_runs_its_chunk_in_one_call(tmp_path, env):
    tasks = tmp_path / "tasks.txt"
    tasks.write_text("sub-01 sub-02\nsub-03 sub-04\nsub-05\n")
    slurm = {"SLURM_JOB_ID": "7", "SLURM_ARRAY_TASK_ID": "2", "SLURM_CPUS_PER_TASK": "2",
             "DEEPDEFACER_CMD": "deepdefacer"}
    done = run(["bids", "out", str(tasks)], env, tmp_path, **slurm)
    assert done.returncode == 0, done.stderr
    args = (tmp_path / "app.args").read_text().splitlines()
    assert args[:5] == [str(tmp_path / "bids"), str(tmp_path / "out"), "participant",
                        "--participant-label", "sub-03"]
    assert args[5] == "sub-04" and args.count("--participant-label") == 1
    assert args[args.index("--nprocs") + 1] == "2" and "--n-procs" not in args  # the app sizes it
    assert "--skip-bids-validation" in args
    two = run(["bids", "out", str(tasks)], env, tmp_path, **slurm, DEEPDEFACER_NPROCS="2")
    assert two.returncode == 0, two.stderr
    args = (tmp_path / "app.args").read_text().splitlines()
    assert args[args.index("--n-procs") + 1] == "2"
    assert "task 2: deepdefacer took" in done.stdout and "exit 0" in done.stdout

    failed = run(["bids", "out", str(tasks)], env, tmp_path, **slurm, FAKE_STATUS="1")
    assert failed.returncode == 1 and "exit 1" in failed.stdout

    beyond = run(["bids", "out", str(tasks)], env, tmp_path, **{**slurm, "SLURM_ARRAY_TASK_ID": "4"})
    assert beyond.returncode == 0 and "nothing to do" in beyond.stdout


def test_usage_inside_a_job_names_the_submitted_script(tmp_path, env):
    done = run([], env, tmp_path, SLURM_JOB_ID="7", SLURM_ARRAY_TASK_ID="1")
    assert done.returncode == 2
    assert "usage: bash /home/user/slurm_array.sh BIDS_DIR OUTPUT_DIR" in done.stderr


def test_bad_chunk_is_a_usage_error(tmp_path, env):
    (tmp_path / "bids" / "sub-01").mkdir(parents=True)
    done = run([str(tmp_path / "bids"), str(tmp_path / "out")], env, tmp_path, CHUNK="0")
    assert done.returncode == 2 and "CHUNK" in done.stderr
    assert not (tmp_path / "sbatch.args").exists()

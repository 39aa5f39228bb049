"""The run's surroundings: Python warnings through logging, and one private scratch folder."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from bids_app_helpers import DEMO, REPO, needs_shared_data
from deepdefacer.cli import scratch as scratch_folders
from deepdefacer.cli.run import main

pytestmark = needs_shared_data


# ---------------------------------------------------------------------------------------------
# Python warnings


@pytest.fixture
def warning_during_run(monkeypatch):
    """numpy's RuntimeWarning from a division by zero, raised while the group level runs."""
    from deepdefacer.qc import report

    real = report.expected_scans

    def dividing(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # shown each time, not once per test session
            np.divide(np.ones(1), np.zeros(1))
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "expected_scans", dividing)


@pytest.mark.parametrize("verbosity, shown", [("--quiet", False), (None, True),
                                              ("--verbose", True)])
def test_python_warnings_follow_the_verbosity_and_reach_the_log(verbosity, shown, tmp_path,
                                                                capsys, warning_during_run):
    (tmp_path / "out").mkdir()
    work = tmp_path / "work"
    arguments = [str(DEMO), str(tmp_path / "out"), "group", "--work-dir", str(work)]
    main(arguments + ([verbosity] if verbosity else []))
    err = capsys.readouterr().err
    assert ("RuntimeWarning: divide by zero encountered in divide" in err) == shown, err
    assert "Deepdefacer group: 5 scan(s)" in err  # the summary is shown in any case
    log_text = (work / "deepdefacer.log").read_text()
    warning_lines = [line for line in log_text.splitlines() if "RuntimeWarning" in line]
    assert len(warning_lines) == 1 and "WARNING" in warning_lines[0]
    # One line: the source line that formatwarning appends is left out.
    assert warning_lines[0].rstrip().endswith("divide by zero encountered in divide")


def test_warnings_go_back_to_python_after_the_run(tmp_path, capsys):
    before = warnings.showwarning
    main([str(DEMO), str(tmp_path / "missing"), "group", "--quiet"])
    capsys.readouterr()
    assert warnings.showwarning is before


# ---------------------------------------------------------------------------------------------
# Scratch folder


def scratch_name(pid: int, host: str | None = None, tail: str = "abcd1234") -> str:
    return f"{scratch_folders.SCRATCH_PREFIX}{pid}@{host or scratch_folders._host_name()}-{tail}"


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_stale_scratch_folders_are_removed_and_live_ones_kept(tmp_path):
    day = scratch_folders.SCRATCH_MAX_AGE_S
    sleeper = subprocess.Popen(["sleep", "60"])
    # A run of Deepdefacer by its command line (the name is only an argument here).
    running = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                                "deepdefacer"])
    try:
        folders = {
            "dead pid": (scratch_name(dead_pid()), 0),
            "this run": (scratch_name(os.getpid()), 2 * day),
            "live, recent": (scratch_name(sleeper.pid, tail="recent01"), 0),
            "pid reused": (scratch_name(sleeper.pid, tail="reused01"), 2 * day),
            "long run": (scratch_name(running.pid), 2 * day),
            "other host, recent": (scratch_name(dead_pid(), "node-7.cluster"), 0),
            "other host, old": (scratch_name(os.getpid(), "node-8.cluster"), 2 * day),
            "not ours": (f"{scratch_folders.SCRATCH_PREFIX}notapid-abcd1234", 2 * day),
        }
        now = time.time()
        for name, age in folders.values():
            (tmp_path / name).mkdir()
            (tmp_path / name / "keras.json").write_text("{}")
            os.utime(tmp_path / name, (now - age, now - age))
        removed = scratch_folders.remove_stale_scratch_folders(tmp_path, now=now)
    finally:
        sleeper.kill()
        running.kill()
        sleeper.wait()
        running.wait()
    expected = {"dead pid", "pid reused", "other host, old"}
    assert sorted(p.name for p in removed) == sorted(folders[k][0] for k in expected)
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        sorted(name for key, (name, _) in folders.items() if key not in expected)


def test_the_run_works_in_a_private_folder_and_leaves_the_environment_as_it_was(
        tmp_path, monkeypatch, capsys):
    from deepdefacer.qc import report

    seen = {}
    real = report.expected_scans

    def record(*args, **kwargs):
        seen.update({name: os.environ.get(name) for name in ("TMPDIR", "KERAS_HOME", "DENO_DIR",
                                                             "MPLCONFIGDIR")})
        seen["tempdir"] = tempfile.gettempdir()
        return real(*args, **kwargs)

    monkeypatch.setattr(report, "expected_scans", record)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "my-keras"))  # the user's choice stays
    monkeypatch.delenv("DENO_DIR", raising=False)
    before = dict(os.environ), tempfile.gettempdir()
    (tmp_path / "out").mkdir()
    main([str(DEMO), str(tmp_path / "out"), "group", "-w", str(tmp_path / "work"), "--quiet"])
    capsys.readouterr()
    scratch = Path(seen["TMPDIR"])
    assert scratch.name.startswith(f"{scratch_folders.SCRATCH_PREFIX}{os.getpid()}@")
    assert scratch.parent == Path(before[1])
    assert seen["tempdir"] == str(scratch)
    assert seen["KERAS_HOME"] == str(tmp_path / "my-keras")
    assert seen["DENO_DIR"] == str(scratch / "deno")
    assert not scratch.exists()
    assert (dict(os.environ), tempfile.gettempdir()) == before


def command_in_empty_home(tmp_path, *arguments):
    home, temporary = tmp_path / "home", tmp_path / "tmp"
    home.mkdir()
    temporary.mkdir()
    environment = {key: value for key, value in os.environ.items()
                   if key not in ("KERAS_HOME", "DENO_DIR", "MPLCONFIGDIR", "XDG_CACHE_HOME",
                                  "XDG_CONFIG_HOME")}
    environment.update(HOME=str(home), TMPDIR=str(temporary))
    command = [sys.executable, str(REPO / "run.py"), *map(str, arguments)]
    return command, environment, home, temporary


def wait_for_scratch(process, temporary: Path, timeout_s: float = 120) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        found = list(temporary.glob(scratch_folders.SCRATCH_PREFIX + "*"))
        if found:
            return found[0]
        time.sleep(0.05)
    raise AssertionError("no scratch folder appeared")


@pytest.mark.slow
def test_sigterm_removes_the_scratch_folder_and_kill_leaves_it_to_the_next_run(tmp_path):
    dataset = shutil.copytree(DEMO, tmp_path / "ds")
    # No FLAIR in ds-demo: the validator runs (deno's cache), then nothing is selected (exit 5).
    command, environment, home, temporary = command_in_empty_home(
        tmp_path, dataset, tmp_path / "out", "participant", "--suffix", "FLAIR")

    terminated = subprocess.Popen(command, env=environment, stderr=subprocess.PIPE, text=True)
    scratch = wait_for_scratch(terminated, temporary)
    terminated.send_signal(signal.SIGTERM)
    assert terminated.wait(timeout=120) == 130, terminated.stderr.read()
    assert not scratch.exists()

    killed = subprocess.Popen(command, env=environment, stderr=subprocess.DEVNULL)
    scratch = wait_for_scratch(killed, temporary)
    killed.send_signal(signal.SIGKILL)
    killed.wait(timeout=60)
    assert scratch.is_dir()

    completed = subprocess.run(command, env=environment, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 5, completed.stderr
    assert "BIDS validation passed" in completed.stderr and "nothing selected" in completed.stderr
    assert list(temporary.iterdir()) == [] and list(home.iterdir()) == []


@pytest.mark.slow
@pytest.mark.slow
def test_a_participant_run_leaves_nothing_in_home_or_tmp(tmp_path):
    dataset = shutil.copytree(DEMO, tmp_path / "ds")
    command, environment, home, temporary = command_in_empty_home(
        tmp_path, dataset, tmp_path / "out", "participant", "--participant-label", "02",
        "--suffix", "T1w", "--skip-bids-validation", "--device", "cpu", "--quiet")
    completed = subprocess.run(command, env=environment, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, completed.stderr
    assert "2 scan(s): 2 defaced" in completed.stderr
    assert list(temporary.iterdir()) == []
    assert list(home.iterdir()) == []


def test_without_a_writable_temporary_folder_the_run_goes_on(tmp_path, monkeypatch, capsys):
    def no_folder(*args, **kwargs):
        raise FileNotFoundError("No usable temporary directory found")

    monkeypatch.setattr(tempfile, "mkdtemp", no_folder)
    before = dict(os.environ)
    assert main([str(DEMO), str(tmp_path / "missing"), "group"]) == 2
    assert "no such folder; run the participant level first" in capsys.readouterr().err
    assert dict(os.environ) == before


@pytest.mark.slow
def test_tensorflow_start_up_banners_are_held_back():
    """TensorFlow's C++ start-up lines (absl, oneDNN) are printed on fd 2 before Python's logging
    exists: a plain import shows them, Deepdefacer's import does not."""
    from deepdefacer.predictor import STARTUP_NOISE

    def stderr_of(code):
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=300).stderr

    plain = stderr_of("import tensorflow")
    assert any(noise in plain for noise in STARTUP_NOISE), plain  # the test can fail
    quiet = stderr_of("from deepdefacer.predictor import import_tensorflow; import_tensorflow()")
    assert not any(noise in quiet for noise in STARTUP_NOISE), quiet

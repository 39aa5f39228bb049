"""The run's private scratch folder, and stopping cleanly on SIGTERM.

TensorFlow, Keras, the BIDS validator and matplotlib write caches and temporaries; on a cluster the
home folder may be read-only or shared by many jobs. Each run gets one private folder for them,
removed at its end, and stale folders of runs that were killed are removed by the next run.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger("deepdefacer")

SCRATCH_PREFIX = "deepdefacer-run-"
SCRATCH_MAX_AGE_S = 24 * 3600
# Written by the folder's owner: "deepdefacer-run-<pid>@<host>-" then mkdtemp's 8 characters.
_SCRATCH_NAME = re.compile(rf"^{re.escape(SCRATCH_PREFIX)}(\d+)@(.+)-[a-z0-9_]{{8}}$")
# The caches that would otherwise go to the home folder: Keras's keras.json, the BIDS
# validator's deno cache, and matplotlib's font list (Keras imports matplotlib). Set only when
# the user has not chosen a place.
SCRATCH_CACHES = {"KERAS_HOME": "keras", "DENO_DIR": "deno", "MPLCONFIGDIR": "matplotlib"}


@contextmanager
def private_scratch_folder():
    """One private temporary folder for the run, removed at its end (Ctrl-C and SIGTERM too).

    TMPDIR (and tempfile's own setting, which TensorFlow's autograph reads for its generated
    modules) and the SCRATCH_CACHES point into it, so nothing is left in /tmp or the home
    folder. It must be entered before TensorFlow, Keras or the validator start; subprocesses
    and worker processes inherit it through the environment. Folders that killed runs left
    are removed first (remove_stale_scratch_folders).
    """
    try:
        base = Path(tempfile.gettempdir())
        remove_stale_scratch_folders(base)
        folder = Path(tempfile.mkdtemp(prefix=f"{SCRATCH_PREFIX}{os.getpid()}@{_host_name()}-",
                                       dir=base))
    except OSError as exc:  # no writable temporary folder: defacing itself does not need one
        log.debug("no private temporary folder (%s); caches go to their defaults", exc)
        yield None
        return
    saved_environment = {name: os.environ.get(name) for name in ("TMPDIR", *SCRATCH_CACHES)}
    saved_tempdir = tempfile.tempdir
    try:
        os.environ["TMPDIR"] = str(folder)
        tempfile.tempdir = str(folder)
        for name, subfolder in SCRATCH_CACHES.items():
            if not os.environ.get(name):
                os.environ[name] = str(folder / subfolder)
        yield folder
    finally:
        tempfile.tempdir = saved_tempdir
        for name, value in saved_environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale_scratch_folders(base, now: float | None = None) -> list[Path]:
    """Remove this user's scratch folders in base whose run is over; return them.

    On this machine a folder is stale when its pid no longer runs, or, older than a day, when
    the pid now belongs to another program (pids are reused). A folder of another machine (a
    TMPDIR shared between cluster nodes), whose pid means nothing here, when it is older than
    a day.
    """
    now = time.time() if now is None else now
    removed = []
    try:
        candidates = list(Path(base).glob(SCRATCH_PREFIX + "*"))
    except OSError:
        return removed
    for folder in candidates:
        match = _SCRATCH_NAME.match(folder.name)
        try:
            info = folder.lstat()
        except OSError:
            continue
        if not match or not folder.is_dir() or folder.is_symlink() \
                or info.st_uid != os.getuid():
            continue
        pid, host = int(match.group(1)), match.group(2)
        old = now - info.st_mtime > SCRATCH_MAX_AGE_S
        if host == _host_name():
            stale = pid != os.getpid() and (not _pid_running(pid) or
                                            old and not _runs_deepdefacer(pid))
        else:
            stale = old
        if stale:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    return removed


def _host_name() -> str:
    return re.sub(r"[^A-Za-z0-9.-]", "_", socket.gethostname()) or "localhost"


def _pid_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _runs_deepdefacer(pid: int) -> bool:
    """Whether the process with this pid looks like a Deepdefacer run (True when unknown)."""
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return True
    return b"deepdefacer" in command.lower() or b"run.py" in command


@contextmanager
def terminate_as_interrupt():
    """SIGTERM (SLURM time limit, docker stop) unwinds like Ctrl-C: temporaries are removed."""
    def handler(signum, frame):
        raise KeyboardInterrupt
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


"""`deepdefacer bids_dir output_dir {participant,group}`: the BIDS App.

Reads top to bottom: parse, check the dataset and output folder, validate, select scans, plan
jobs, prepare the output dataset, deface, summarise. Problems with the user's input are one line
each; tracebacks only with --verbose.
"""

from __future__ import annotations

import logging
import os
import re
import shlex
import shutil
import signal
import socket
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from deepdefacer.cli.parser import (EXIT_INVALID_DATASET, EXIT_OK, EXIT_QC_FLAGGED,
                                    EXIT_SCANS_FAILED, EXIT_USAGE, build_parser)
from deepdefacer.config import Settings
from deepdefacer.errors import InputError, ModelLoadError
from deepdefacer.provenance import version

log = logging.getLogger("deepdefacer")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from deepdefacer.cli import legacy

    if legacy.is_legacy_call(argv):  # the 2.x form, `deepdefacer --input_file X ...`
        return legacy.main(argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # usage errors (2) and --version/--help (0)
        return int(exc.code or 0)
    if args.mask_from and args.mask_from not in args.suffix:
        parser.print_usage(sys.stderr)
        print(f"deepdefacer: error: --mask-from {args.mask_from} needs {args.mask_from} among "
              f"the selected suffixes (--suffix)", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args)
    command_line = "deepdefacer " + shlex.join(argv)
    try:
        with terminate_as_interrupt(), private_scratch_folder():
            if args.analysis_level == "group":
                return run_group_level(args)
            return run_participant_level(args, command_line)
    except KeyboardInterrupt:
        log.error("interrupted: every output written so far is complete; run the same command "
                  "again to finish the rest")
        return 130
    except Exception as exc:  # a bug or an environment problem: one line unless --verbose
        if args.verbose:
            log.exception("unexpected error")
        else:
            log.error("unexpected error: %s: %s (--verbose shows the traceback)",
                      type(exc).__name__, exc)
        return EXIT_SCANS_FAILED
    finally:
        logging.captureWarnings(False)  # a caller's own warnings go back where they went


def run_participant_level(args, command_line: str) -> int:
    from deepdefacer.bids import jobs, layout_bids, outputs, process, select, validate

    # Checks before any work: nothing is written if any of them fails.
    try:
        source_description = select.check_dataset(args.bids_dir)
        select.check_output_location(args.bids_dir, args.output_dir)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    try:
        layout = select.open_layout(args.bids_dir)
        scans = select.select_scans(layout, args.participant_label, args.session_label,
                                    args.suffix, args.bids_filter_file)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    if not args.skip_bids_validation:
        status = validate_input(args, validate)
        if status != EXIT_OK:
            return status
    if not scans:
        log.warning("no anatomical images match the selection (suffixes %s) in %s: "
                    "nothing to do", " ".join(args.suffix), args.bids_dir)
        return EXIT_OK
    planned_jobs = jobs.plan_jobs(scans, args.mask_from)
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        outputs.prepare_output_dataset(args.output_dir, args.bids_dir, source_description,
                                       args.layout)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    except OSError as exc:
        log.error("%s: cannot create the output folder (%s)", args.output_dir, exc)
        return EXIT_USAGE
    log.info("Deepdefacer %s: %d anatomical image(s) in %d job(s) from %s",
             version(), len(scans), len(planned_jobs), args.bids_dir)

    copy_failures = []
    if args.layout == "bids":
        produced = {scan.relpath for scan in scans}
        for job in planned_jobs:
            produced |= {group.mask_relpath for group in job.groups}
            produced |= {group.mask_relpath.rsplit(".nii", 1)[0] + ".json"
                         for group in job.groups}
        report = layout_bids.copy_dataset(args.bids_dir, args.output_dir, produced,
                                          args.participant_label, args.session_label,
                                          include_undefaced=args.copy_undefaced_anat)
        log.info("copied %d file(s) of the dataset (%d already there)", report.copied,
                 report.up_to_date)
        for folder in report.left_out_folders:
            log.warning("left out of the upload-ready copy: %s/ (not raw data)", folder)
        for relpath in report.included_undefaced:
            log.warning("copied WITH ITS FACE (not selected; --copy-undefaced-anat): %s", relpath)
        # An upload-ready copy without them is incomplete, and with them it would hold a face.
        copy_failures = report.failed + [
            (relpath, "anatomical image not selected for defacing: left out of the upload-ready "
                      "copy (select its suffix, or --copy-undefaced-anat copies it with its face)")
            for relpath in report.not_defaced]

    settings = Settings.from_args(args, command_line)
    results = []
    with progress_bar(len(scans), args) as bar:
        def on_result(job_result):
            for scan_result in job_result.scans:
                log_scan(scan_result, args.verbose)
            bar.update(len(job_result.scans))
            results.append(job_result)

        try:
            process.run_jobs(planned_jobs, settings, n_procs=args.n_procs, on_result=on_result)
        except ModelLoadError as exc:
            log.error(str(exc))
            if args.verbose:
                log.exception("details")
            return EXIT_SCANS_FAILED
    return summarise(results, copy_failures)


def validate_input(args, validate) -> int:
    try:
        result = validate.validate_dataset(args.bids_dir)
    except validate.ValidatorMissing as exc:
        log.error(str(exc))
        return EXIT_USAGE
    except Exception as exc:  # the validator crashed or timed out
        log.error("BIDS validation could not run (%s); pass --skip-bids-validation to go on "
                  "without it", exc)
        return EXIT_INVALID_DATASET
    if args.work_dir:
        from deepdefacer.files import write_json

        write_json({"errors": result.errors, "warnings": result.warnings},
                   args.work_dir / "bids-validator.json")
    if not result.ok:
        log.error("%s fails BIDS validation with %d error(s):\n%s\nFix them, or pass "
                  "--skip-bids-validation to deface anyway.", args.bids_dir,
                  len(result.errors), result.summary())
        return EXIT_INVALID_DATASET
    log.info("BIDS validation passed (%d warning(s))", len(result.warnings))
    return EXIT_OK


def log_scan(scan_result, verbose: bool) -> None:
    if scan_result.status == "failed":
        log.error("FAILED %s: %s", scan_result.relpath, scan_result.message)
        if verbose and scan_result.details:
            log.error(scan_result.details.rstrip())
    elif scan_result.status == "skipped":
        log.info("up to date %s", scan_result.relpath)
    else:
        log.info("defaced %s: %s (%.1f s)", scan_result.relpath, scan_result.message,
                 scan_result.seconds)
        for flag in scan_result.qc_flags:
            log.warning("QC flag %s: %s", scan_result.relpath, flag)


def summarise(results, copy_failures) -> int:
    scan_results = [scan for job in results for scan in job.scans]
    counts = {status: sum(scan.status == status for scan in scan_results)
              for status in ("defaced", "skipped", "failed")}
    failures = [(scan.relpath, scan.message) for scan in scan_results if scan.status == "failed"]
    failures += list(copy_failures)
    summary = (f"Deepdefacer: {len(scan_results)} scan(s): {counts['defaced']} defaced, "
               f"{counts['skipped']} already up to date, {counts['failed']} failed")
    if copy_failures:
        summary += f"; {len(copy_failures)} file(s) left out of the copy or not copied"
    flagged = [scan.relpath for scan in scan_results if scan.qc_flags]
    if flagged:
        summary += (f"; QC flagged {len(flagged)} defaced scan(s) for review: "
                    + ", ".join(flagged) + " (the group level writes qc_report.html)")
    if not failures:
        print(summary, file=sys.stderr)
        return EXIT_OK
    lines = [summary, "Failed:"] + [f"  {relpath}: {reason}" for relpath, reason in failures]
    print("\n".join(lines), file=sys.stderr)
    return EXIT_SCANS_FAILED


def run_group_level(args) -> int:
    """The QC report over the scans the selection arguments select in bids_dir."""
    try:
        from deepdefacer.qc import report
    except ImportError:
        log.error("the group level writes a quality-control report with deepdefacer.qc, "
                  "which this installation does not provide; the participant level "
                  "outputs in %s are complete without it", args.output_dir)
        return EXIT_SCANS_FAILED
    from deepdefacer.bids import select

    output_dir = Path(args.output_dir)
    if not output_dir.is_dir():
        log.error("%s: no such folder; run the participant level first", output_dir)
        return EXIT_USAGE
    derivatives = report.is_deepdefacer_derivatives(output_dir)
    if not derivatives and not args.work_dir:
        log.error("%s: not a derivatives dataset written by Deepdefacer (an upload-ready "
                  "--layout bids copy?): the QC report would make it an invalid BIDS dataset; "
                  "pass --work-dir DIR to write the report there", output_dir)
        return EXIT_USAGE
    try:
        select.check_dataset(args.bids_dir)
        layout = select.open_layout(args.bids_dir)
        # Counted from the selection, not from the verdicts found: a scan whose participant
        # level was interrupted has none, and must not go unnoticed.
        scans = select.select_scans(layout, args.participant_label, args.session_label,
                                    args.suffix, args.bids_filter_file, metadata=False)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    if not scans:
        log.warning("no anatomical images match the selection (suffixes %s) in %s",
                    " ".join(args.suffix), args.bids_dir)
    expected = report.expected_scans(scans, output_dir, derivatives)
    result = report.write_report(output_dir, expected,
                                 output_dir if derivatives else args.work_dir)
    log.info("QC report: %s", result.report_path)
    print(group_summary(result), file=sys.stderr)
    if result.incomplete:
        return EXIT_SCANS_FAILED
    if args.fail_on_flag and result.flagged:
        log.error("QC flagged scans (see the report); exiting %d for --fail-on-flag",
                  EXIT_QC_FLAGGED)
        return EXIT_QC_FLAGGED
    return EXIT_OK


def group_summary(result) -> str:
    """One line of counts, then every incomplete scan with its reason."""
    counts = (f"{len(result.verdicts) - len(result.flagged)} passed, {len(result.flagged)} "
              f"flagged, {len(result.incomplete)} incomplete")
    if result.unchecked:
        counts += f", {len(result.unchecked)} without per-scan QC (--layout bids)"
    total = len(result.verdicts) + len(result.incomplete) + len(result.unchecked)
    lines = [f"Deepdefacer group: {total} scan(s): {counts}"]
    if result.flagged:
        lines[0] += "; flagged: " + ", ".join(v.get("source") or v.get("stem", "")
                                             for v in result.flagged)
    if result.incomplete:
        lines.append("Incomplete (run the participant level again for them):")
        lines += [f"  {source}: {reason}" for source, reason in result.incomplete]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Terminal output


class _TqdmHandler(logging.Handler):
    """Log lines that do not break the progress bar."""

    def emit(self, record):
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:
            self.handleError(record)


def configure_logging(args) -> None:
    """Deepdefacer's messages, and Python's warnings (numpy's, nibabel's ...) as log records,
    so that --quiet silences them on the terminal; the --work-dir log keeps everything."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(level)
    file_handler = None
    if getattr(args, "work_dir", None):
        args.work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(args.work_dir / "deepdefacer.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        file_handler.setLevel(logging.DEBUG)
    warnings_log = logging.getLogger("py.warnings")
    # nibabel reports header quirks (zero pixdims) on its own logger, not as warnings.
    nibabel_log = logging.getLogger("nibabel.global")
    for logger, handlers in ((log, [handler, file_handler]),
                             (warnings_log, [None if args.quiet else handler, file_handler]),
                             (nibabel_log, [None if args.quiet else handler, file_handler])):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
        logger.propagate = False
        logger.setLevel(logging.DEBUG)
        for added in handlers:
            if added is not None:
                logger.addHandler(added)
    warnings_log.filters.clear()
    warnings_log.addFilter(_one_line_warning)
    logging.captureWarnings(True)


def _one_line_warning(record: logging.LogRecord) -> bool:
    """warnings.formatwarning's 'file:line: Category: message' without the source line below."""
    text = record.getMessage().strip()
    record.msg, record.args = text.splitlines()[0] if text else text, ()
    return True


@contextmanager
def progress_bar(total: int, args):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="scan", desc="defacing", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty(), leave=False)
    try:
        yield bar
    finally:
        bar.close()


# ---------------------------------------------------------------------------------------------
# Scratch folder

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


if __name__ == "__main__":
    sys.exit(main())

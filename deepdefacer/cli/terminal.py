"""What the BIDS App prints: log lines that keep clear of the progress bar, warnings as log
records (so --quiet silences them), one line a scan, and the run's summary."""

from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager

from deepdefacer.messages import EXIT_OK, EXIT_SCANS_FAILED

log = logging.getLogger("deepdefacer")


FILE_ONLY = {"file_only": True}  # extra= of records for the --work-dir log only


class Progress:
    """One line a scan, numbered ``[i/N]`` with an estimate of the time left (a SLURM or docker
    log has no progress bar), and the run's summary with its elapsed time."""

    def __init__(self, total: int, verbose: bool = False, processes: int = 1):
        self.total, self.verbose, self.done = total, verbose, 0
        self.processes = max(1, processes)  # scans defaced at a time
        self.started = time.monotonic()
        self.work_seconds, self.worked = 0.0, 0  # scans that needed work, for the estimate

    def scan(self, scan_result) -> None:
        self.done += 1
        if scan_result.status != "skipped":
            self.work_seconds += scan_result.seconds
            self.worked += 1
        where = f"[{self.done}/{self.total}]"
        if scan_result.status == "failed":
            log.error("%s FAILED %s: %s", where, scan_result.relpath, scan_result.message)
            if self.verbose and scan_result.details:
                log.error(scan_result.details.rstrip())
        elif scan_result.status == "skipped":
            log.info("%s up to date %s", where, scan_result.relpath)
        else:
            log.info("%s defaced %s: %s (%.1f s%s)", where, scan_result.relpath,
                     scan_result.message, scan_result.seconds, self._time_left())
            for flag in scan_result.qc_flags:
                log.warning("QC flag %s: %s", scan_result.relpath, flag)

    def _time_left(self) -> str:
        left = self.total - self.done
        if not left or not self.worked:
            return ""
        per_scan = self.work_seconds / self.worked / min(self.processes, left)
        return f", about {_duration(left * per_scan)} left"

    def elapsed(self) -> str:
        return _duration(time.monotonic() - self.started)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def summarise(results, copy_failures, output_dir=None, elapsed: str | None = None,
              group_command: str | None = None) -> int:
    """The run's summary on stderr (also with --quiet), and in the --work-dir log."""
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
    lines = [summary]
    if output_dir is not None:
        lines.append(f"Outputs in {output_dir}" + (f" ({elapsed})" if elapsed else ""))
    if failures:
        lines += ["Failed:"] + [f"  {relpath}: {reason}" for relpath, reason in failures]
        lines.append("Next: fix what is listed and run the same command again (finished scans are "
                     "skipped).")
    elif group_command:
        lines.append(f"Next, the QC report: {group_command}")
    print("\n".join(lines), file=sys.stderr)
    log.info("\n".join(lines), extra=FILE_ONLY)
    return EXIT_SCANS_FAILED if failures else EXIT_OK


def _terminal_only(record: logging.LogRecord) -> bool:
    return not getattr(record, "file_only", False)


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
    handler.addFilter(_terminal_only)
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

"""What the BIDS App prints: log lines that keep clear of the progress bar, warnings as log
records (so --quiet silences them), one line a scan, and the run's summary."""

from __future__ import annotations

import logging
import sys
from contextlib import contextmanager

from deepdefacer.messages import EXIT_OK, EXIT_SCANS_FAILED

log = logging.getLogger("deepdefacer")


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

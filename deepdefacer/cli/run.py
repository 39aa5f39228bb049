"""`deepdefacer bids_dir output_dir {participant,group}`: the BIDS App.

Reads top to bottom: parse, check the dataset and output folder, validate, select scans, plan
jobs, prepare the output dataset, deface, summarise. Problems with the user's input are one line
each; tracebacks only with --verbose.
"""

from __future__ import annotations

import logging
import shlex
import signal
import sys
from contextlib import contextmanager
from pathlib import Path

from deepdefacer.cli.parser import (EXIT_INVALID_DATASET, EXIT_OK, EXIT_QC_FLAGGED,
                                    EXIT_SCANS_FAILED, EXIT_USAGE, build_parser)
from deepdefacer.errors import InputError

log = logging.getLogger("deepdefacer")


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
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
        with terminate_as_interrupt():
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
             outputs.deepdefacer_version(), len(scans), len(planned_jobs), args.bids_dir)

    copy_failures = []
    if args.layout == "bids":
        produced = {scan.relpath for scan in scans}
        for job in planned_jobs:
            produced |= {group.mask_relpath for group in job.groups}
            produced |= {group.mask_relpath.rsplit(".nii", 1)[0] + ".json"
                         for group in job.groups}
        report = layout_bids.copy_dataset(args.bids_dir, args.output_dir, produced,
                                          args.participant_label, args.session_label)
        log.info("copied %d file(s) of the dataset (%d already there)", report.copied,
                 report.up_to_date)
        for relpath in report.not_defaced:
            log.warning("copied without defacing (not selected): %s", relpath)
        copy_failures = report.failed

    settings = process.Settings(output_dir=str(args.output_dir), layout=args.layout,
                                overwrite=args.overwrite, device=args.device,
                                atlas_guard=args.atlas_guard,
                                command_line=command_line, qc=not args.skip_qc)
    results = []
    with progress_bar(len(scans), args) as bar:
        def on_result(job_result):
            for scan_result in job_result.scans:
                log_scan(scan_result, args.verbose)
            bar.update(len(job_result.scans))
            results.append(job_result)

        try:
            process.run_jobs(planned_jobs, settings, n_procs=args.n_procs, on_result=on_result)
        except process.ModelLoadError as exc:
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
        from deepdefacer.io import write_json

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
        summary += f"; {len(copy_failures)} file(s) could not be copied"
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
    """The QC report over the outputs, produced by deepdefacer.qc when it is installed."""
    try:
        from deepdefacer.qc import report
        run_group = report.run_group
    except (ImportError, AttributeError):
        log.error("the group level writes a quality-control report with deepdefacer.qc, "
                  "which this installation does not provide; the participant level "
                  "outputs in %s are complete without it", args.output_dir)
        return EXIT_SCANS_FAILED
    if not Path(args.output_dir).is_dir():
        log.error("%s: no such folder; run the participant level first", args.output_dir)
        return EXIT_USAGE
    status = run_group(args.output_dir, fail_on_flag=args.fail_on_flag)
    log.info("QC report: %s", Path(args.output_dir) / "qc_report.html")
    if status:
        log.error("QC flagged scans (see the report); exiting %d for --fail-on-flag", EXIT_QC_FLAGGED)
        return EXIT_QC_FLAGGED
    return EXIT_OK


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
    log.handlers.clear()
    log.propagate = False
    handler = _TqdmHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(handler)
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    log.setLevel(logging.DEBUG)
    handler.setLevel(level)
    if getattr(args, "work_dir", None):
        args.work_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(args.work_dir / "deepdefacer.log")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        log.addHandler(file_handler)


@contextmanager
def progress_bar(total: int, args):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="scan", desc="defacing", file=sys.stderr,
               disable=args.quiet or not sys.stderr.isatty(), leave=False)
    try:
        yield bar
    finally:
        bar.close()


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

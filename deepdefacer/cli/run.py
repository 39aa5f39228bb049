"""`deepdefacer bids_dir output_dir {participant,group}`: the BIDS App.

Reads top to bottom: parse, check the dataset and output folder, validate, select scans, plan
jobs, prepare the output dataset, deface, summarise. Problems with the user's input are one line
each; tracebacks only with --verbose.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time

from deepdefacer import messages
from deepdefacer.bids.deidentify import chosen_keys
from deepdefacer.cli.group import run_group_level
from deepdefacer.cli.parser import build_parser
from deepdefacer.cli.scratch import private_scratch_folder, terminate_as_interrupt
from deepdefacer.cli.terminal import FILE_ONLY, Progress, configure_logging, progress_bar, summarise
from deepdefacer.config import Settings
from deepdefacer.errors import InputError, ModelLoadError
from deepdefacer.messages import (EXIT_INVALID_DATASET, EXIT_NOTHING_SELECTED, EXIT_OK,
                                  EXIT_SCANS_FAILED, EXIT_USAGE)
from deepdefacer.parallel import plan_resources, reuse_freed_memory, set_threads
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
    if (args.deidentify_metadata or args.deidentify_keys) and args.layout != "bids":
        parser.print_usage(sys.stderr)
        print("deepdefacer: error: --deidentify-metadata and --deidentify-keys need --layout bids "
              "(they de-identify the upload-ready copy)", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(args)
    command_line = "deepdefacer " + shlex.join(argv)
    log.info("started %s: %s", time.strftime("%Y-%m-%dT%H:%M:%S%z"), command_line, extra=FILE_ONLY)
    try:
        with terminate_as_interrupt(), private_scratch_folder():
            if args.analysis_level == "group":
                return run_group_level(args)
            return run_participant_level(args, command_line)
    except KeyboardInterrupt:
        log.error(messages.INTERRUPTED)
        return messages.EXIT_INTERRUPTED
    except Exception as exc:  # a bug or an environment problem: one line unless --verbose
        if args.verbose:
            log.exception("unexpected error")
        else:
            log.error("%s %s", messages.unexpected(exc), messages.VERBOSE_HINT)
        return EXIT_SCANS_FAILED
    finally:
        logging.captureWarnings(False)  # a caller's own warnings go back where they went


def run_participant_level(args, command_line: str) -> int:
    from deepdefacer.bids import dispatch, jobs, layout_bids, outputs, select, validate

    deidentify_keys = chosen_keys(args.deidentify_metadata, args.deidentify_keys)
    # Checks before any work: nothing is written if any of them fails.
    for asked, option in ((args.mode == "reface", "--mode reface"), (args.remove_ears, "--remove-ears")):
        if asked and not args.atlas_guard:
            log.error(f"{option} places what it changes with the atlas guard's registration: it "
                      "cannot be combined with --no-atlas-guard")
            return EXIT_USAGE
    try:
        source_description = select.check_dataset(args.bids_dir)
        select.check_output_location(args.bids_dir, args.output_dir)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    participants = select.chosen_participants(
        args.bids_dir, (args.participant_label or []) + (args.participant_label_file or []),
        args.exclude_participant_label)
    if participants == []:
        log.error("every participant is excluded (--exclude-participant-label): nothing selected")
        return EXIT_NOTHING_SELECTED
    try:
        layout = select.open_layout(args.bids_dir, participants, args.bids_database_dir)
        scans = select.select_scans(layout, participants, args.session_label,
                                    args.suffix, args.bids_filter_file)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    if not args.skip_bids_validation:
        status = validate_input(args, validate, participants)
        if status != EXIT_OK:
            return status
    if not scans:
        log.error("no anatomical images match the selection (suffixes %s) in %s: nothing "
                  "selected", " ".join(args.suffix), args.bids_dir)
        return EXIT_NOTHING_SELECTED
    planned_jobs = jobs.plan_jobs(scans, args.mask_from)
    try:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        outputs.prepare_output_dataset(args.output_dir, args.bids_dir, source_description,
                                       args.layout, deidentify_keys=deidentify_keys)
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
                                          participants, args.session_label,
                                          include_undefaced=args.copy_undefaced_anat,
                                          deidentify_keys=deidentify_keys)
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
    resources = plan_resources(args.n_procs, args.nprocs, args.omp_nthreads, args.mem,
                               len(planned_jobs))
    for note in resources.notes:
        log.warning(note)
    if resources.n_procs == 1 and (args.nprocs or args.omp_nthreads):
        set_threads(resources.threads)  # OpenMP and OpenBLAS; workers set their own
    reuse_freed_memory()  # in this process; workers do it too
    progress = Progress(len(scans), args.verbose, resources.n_procs)
    with progress_bar(len(scans), args) as bar:
        def on_result(job_result):
            for scan_result in job_result.scans:
                progress.scan(scan_result)
            bar.update(len(job_result.scans))
            results.append(job_result)

        try:
            dispatch.run_jobs(planned_jobs, settings, n_procs=resources.n_procs,
                             on_result=on_result, threads=resources.threads)
        except ModelLoadError as exc:
            log.error(str(exc))
            if args.verbose:
                log.exception("details")
            return EXIT_SCANS_FAILED
    group_command = (shlex.join(["deepdefacer", str(args.bids_dir), str(args.output_dir), "group"])
                     if args.layout == "derivatives" else None)
    return summarise(results, copy_failures, args.output_dir, progress.elapsed(), group_command)


def validate_input(args, validate, participants=None) -> int:
    what = (f"{len(participants)} participant(s)" if participants else "the dataset")
    log.info("Validating %s with %s ...", what, validate.VALIDATOR_COMMAND)
    started = time.monotonic()
    try:
        result = validate.validate_participants(args.bids_dir, participants)
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
    log.info("BIDS validation passed (%d warning(s), %.0f s)", len(result.warnings),
             time.monotonic() - started)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

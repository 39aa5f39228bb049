"""`deepdefacer bids_dir output_dir group`: the QC report over the selected scans."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from deepdefacer.errors import InputError
from deepdefacer.messages import (EXIT_NOTHING_SELECTED, EXIT_OK, EXIT_QC_FLAGGED,
                                  EXIT_SCANS_FAILED, EXIT_USAGE)

log = logging.getLogger("deepdefacer")


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
        participants = select.chosen_participants(
            args.bids_dir, (args.participant_label or []) + (args.participant_label_file or []),
            args.exclude_participant_label)
        layout = select.open_layout(args.bids_dir, participants, args.bids_database_dir)
        # Counted from the selection, not from the verdicts found: a scan whose participant
        # level was interrupted has none, and must not go unnoticed.
        scans = select.select_scans(layout, participants, args.session_label,
                                    args.suffix, args.bids_filter_file, metadata=False)
    except InputError as exc:
        log.error(str(exc))
        return EXIT_USAGE
    if not scans:
        log.error("no anatomical images match the selection (suffixes %s) in %s: nothing "
                  "selected", " ".join(args.suffix), args.bids_dir)
        return EXIT_NOTHING_SELECTED
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

"""Exit codes of every command, and the messages that more than one place says, in one module.

The codes are part of the interface: SLURM arrays, Makefiles and upload pipelines branch on them.
"""

from __future__ import annotations

# deepdefacer (the BIDS App) and deepdeface
EXIT_OK = 0
EXIT_SCANS_FAILED = 1  # a scan failed (its face check, its input, a write), or a file was left out
EXIT_USAGE = 2  # a bad argument, dataset folder or output folder: nothing was written
EXIT_INVALID_DATASET = 3  # the input fails BIDS validation
EXIT_QC_FLAGGED = 4  # group level with --fail-on-flag: the QC report flagged a scan
EXIT_NOTHING_SELECTED = 5  # the selection (labels, suffixes, filters) matches no anatomical image
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM: what was written is complete, a rerun finishes

# deepdefacer-check
EXIT_NO_FACE = 0
EXIT_FACE = 1  # a face was found in at least one image
EXIT_UNCHECKED = 3  # an image could not be checked (unreadable, no orientation)

# deepdefacer.qc.report.run_group (the library call behind the group level)
REPORT_OK = 0
REPORT_FLAGGED = 1  # with fail_on_flag: at least one scan was flagged
REPORT_INCOMPLETE = 2  # a scan has no QC verdict (or no outputs), or a verdict is unreadable

INTERRUPTED = ("interrupted: every output written so far is complete; run the same command again "
               "to finish the rest")
WRITTEN_UNVERIFIED = "written anyway (--allow-unverified)"
NOT_WRITTEN_UNVERIFIED = "not written (--allow-unverified writes it for inspection)"
VERBOSE_HINT = "(--verbose shows the traceback)"


def unexpected(exc: BaseException) -> str:
    """An error that is not the input's: one line, the traceback only with --verbose."""
    return f"unexpected error: {type(exc).__name__}: {exc}"


def unverified(reason: str, written: bool) -> str:
    """A scan whose face check failed: why, and whether it was written anyway."""
    return f"{reason}; {WRITTEN_UNVERIFIED if written else NOT_WRITTEN_UNVERIFIED}"

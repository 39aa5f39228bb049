"""Command-line parser of the BIDS App, following the BIDS Apps and nipreps conventions.

Argument types validate on the spot, so a bad value is argparse's usage error (exit code 2)
before anything is read or written.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from deepdefacer.bids.outputs import LAYOUTS
from deepdefacer.bids.filters import check_bids_filters
from deepdefacer.bids.names import ANATOMICAL_SUFFIXES, DEFAULT_SUFFIXES
from deepdefacer.provenance import version
DEVICES = ("auto", "cpu", "gpu")


def existing_folder(value: str) -> Path:
    path = Path(value)
    if path.exists() and not path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a file, not a folder")
    if not path.is_dir():
        raise argparse.ArgumentTypeError(f"no such folder: {value}")
    return path.absolute()


def label(prefix: str):
    def parse(value: str) -> str:
        stripped = value[len(prefix):] if value.startswith(prefix) else value
        if not stripped or not stripped.isalnum():
            raise argparse.ArgumentTypeError(
                f"invalid label {value!r}: BIDS labels are letters and digits "
                f"(with or without '{prefix}')")
        return stripped
    parse.__name__ = f"{prefix.rstrip('-')} label"
    return parse


def suffix(value: str) -> str:
    by_lower = {name.lower(): name for name in ANATOMICAL_SUFFIXES}
    if value.lower() not in by_lower:
        raise argparse.ArgumentTypeError(
            f"unknown anatomical suffix {value!r}; choose from {', '.join(ANATOMICAL_SUFFIXES)}")
    return by_lower[value.lower()]


def bids_filter_file(value: str) -> dict:
    """fmriprep-style filters: {"t1w": {"acquisition": "mprage"}, "flair": {"run": 1}}."""
    path = Path(value)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{value} is a folder, not a file")
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    try:
        filters = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{value} is not valid JSON ({exc})") from None
    try:
        return check_bids_filters(filters)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc}") from None


def positive_int(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return number


def label_file(value: str) -> list:
    """Participant labels from a file, one a line or separated by spaces; '#' starts a comment."""
    path = Path(value)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file: {value}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"{value}: cannot read it ({exc})") from None
    words = [word for line in text.splitlines() for word in line.split("#", 1)[0].split()]
    if not words:
        raise argparse.ArgumentTypeError(f"{value}: no participant labels in it")
    parse = label("sub-")
    try:
        return [parse(word) for word in words]
    except argparse.ArgumentTypeError as exc:
        raise argparse.ArgumentTypeError(f"{value}: {exc}") from None


def memory_gb(value: str) -> float:
    """8, 8G, 8GB, 8000M or 8000MB as gigabytes."""
    text = value.strip().upper().removesuffix("B")
    scale = 1 / 1024 if text.endswith("M") else 1.0
    try:
        number = float(text.rstrip("MG")) * scale
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an amount of memory: {value!r} (e.g. 8G)") from None
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0: {value}")
    return number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deepdefacer",
        description="Remove faces from the anatomical MRI of a BIDS dataset with a 3D U-Net. "
                    "The input dataset is never written to.",
        epilog="Exit codes: 0 all scans defaced or up to date; 1 one or more scans failed "
               "(listed at the end), or, at the group level, a selected scan has no outputs or "
               "QC verdict; 2 usage error (bad arguments, not a BIDS dataset, unknown "
               "participant, output inside the input); 3 the input fails BIDS validation; 4 the "
               "group level with --fail-on-flag found a flagged scan; 5 nothing matched the selection; "
               "130 interrupted.",
        allow_abbrev=False)
    parser.add_argument("bids_dir", type=existing_folder,
                        help="the root folder of the input BIDS dataset")
    parser.add_argument("output_dir", type=lambda value: Path(value).absolute(),
                        help="where the outputs go (created if missing; outside bids_dir)")
    parser.add_argument("analysis_level", choices=("participant", "group"),
                        help="participant: deface scans; group: quality-control report of "
                             "the selected scans' outputs")
    parser.add_argument("--version", action="version", version=f"Deepdefacer {version()}")

    selection = parser.add_argument_group("what to deface")
    selection.add_argument("--participant-label", "--participant_label", nargs="+",
                           action="extend", type=label("sub-"), metavar="LABEL",
                           help="participants to process (with or without 'sub-'; the flag may "
                                "be repeated); default: all")
    selection.add_argument("--participant-label-file", "--participant_label_file",
                           type=label_file, metavar="FILE",
                           help="a text file of participant labels, one a line (or separated by "
                                "spaces; '#' starts a comment), added to --participant-label")
    selection.add_argument("--exclude-participant-label", "--exclude_participant_label",
                           nargs="+", action="extend", type=label("sub-"), metavar="LABEL",
                           help="participants to leave out of the selection")
    selection.add_argument("--session-label", "--session_label", "--session-id", "--session_id",
                           nargs="+", action="extend", type=label("ses-"), metavar="LABEL",
                           help="sessions to process (with or without 'ses-')")
    selection.add_argument("--suffix", nargs="+", type=suffix, metavar="SUFFIX",
                           default=list(DEFAULT_SUFFIXES),
                           help="anatomical suffixes to deface (default: "
                                f"{' '.join(DEFAULT_SUFFIXES)}; quantitative maps such as T1map "
                                "only when listed)")
    selection.add_argument("--bids-filter-file", "--bids_filter_file", type=bids_filter_file,
                           metavar="FILE",
                           help='JSON mapping suffixes to pybids entity filters, e.g. '
                                '{"t1w": {"acquisition": "mprage"}}; null means the entity is '
                                'absent, "*" any value')
    selection.add_argument("--mask-from", type=suffix, metavar="SUFFIX",
                           help="compute the mask on this suffix's first scan in each session "
                                "(e.g. T1w) and apply it, resampled, to the session's other scans")

    run = parser.add_argument_group("how to run")
    run.add_argument("--layout", choices=LAYOUTS, default="derivatives",
                     help="derivatives (default): a BIDS derivatives dataset of defaced images "
                          "and masks; bids: an upload-ready copy of the whole dataset with the "
                          "anatomical images defaced")
    run.add_argument("--fail-on-flag", "--fail_on_flag", action="store_true",
                     help="group level: exit with code 4 when the QC report flags any scan "
                          "(a gate for pipelines)")
    run.add_argument("--allow-unverified", action="store_true",
                     help="also write a scan whose face check fails (a face still found, no "
                          "face to compare with on the original, or nothing removed), for "
                          "inspection; it is still reported as failed")
    run.add_argument("--copy-undefaced-anat", action="store_true",
                     help="--layout bids: copy the anatomical images not selected for "
                          "defacing into the copy with their faces (default: left out, and the "
                          "run fails)")
    run.add_argument("--deidentify-metadata", "--deidentify_metadata", action="store_true",
                     help="--layout bids: remove identifying keys (institution, device serial "
                          "number, station, dates, patient and operator names; the list is in "
                          "docs/bids-app.md) from every JSON sidecar of the copy, and blank the "
                          "defaced images' header text (descrip, db_name, aux_file, "
                          "intent_name); default: both copied unchanged")
    run.add_argument("--deidentify-keys", "--deidentify_keys", nargs="+", metavar="KEY",
                     help="--layout bids: the sidecar keys to remove instead of the default set "
                          "(implies --deidentify-metadata)")
    run.add_argument("--skip-qc", action="store_true",
                     help="no per-scan QC figures and verdicts (sub-<label>/figures/; "
                          "derivatives layout only)")
    run.add_argument("--skip-bids-validation", "--skip_bids_validation",
                     "--skip-bids-validator", "--skip_bids_validator", action="store_true",
                     help="do not validate the input with bids-validator-deno (by default the "
                          "selected participants are validated before any work)")
    run.add_argument("--bids-database-dir", "--bids_database_dir", type=lambda value: Path(value).absolute(),
                     metavar="DIR", help="keep pybids' index of the whole dataset here and reuse "
                                         "it (e.g. across the tasks of a SLURM array); it is "
                                         "reused as it is: remove it when the dataset changes")
    resources = parser.add_argument_group("resources (nipreps' names)")
    resources.add_argument("--n-procs", "--n_procs", type=positive_int, metavar="N",
                           help="scans defaced in parallel, each process with its own copy of "
                                "the model (default: a process a CPU, as many as the memory "
                                "holds at ~1.6 GB each, no more than there are jobs)")
    resources.add_argument("--nprocs", "--nthreads", "--n-cpus", "--n_cpus", type=positive_int,
                           metavar="N", help="CPUs for the whole run, shared among the processes "
                                             "(default: those this process may use: its affinity "
                                             "and SLURM_CPUS_PER_TASK)")
    resources.add_argument("--omp-nthreads", "--omp_nthreads", type=positive_int, metavar="N",
                           help="threads a process (default: the CPUs / --n-procs)")
    resources.add_argument("--mem", "--mem-gb", "--mem_gb", type=memory_gb, metavar="GB",
                           help="memory for the whole run (e.g. 8, 8G or 8000M); fewer parallel "
                                "processes are started when --n-procs would not fit in it")
    run.add_argument("--device", choices=DEVICES, default="auto",
                     help="where the model runs (default auto: a GPU if there is one)")
    run.add_argument("--mode", choices=("deface", "reface"), default="deface",
                     help="what the face's voxels become: the air's value (deface, the default) "
                          "or an average face matched to the scan's contrast (reface: for tools "
                          "that expect a face; nothing of the participant's face is used)")
    run.add_argument("--remove-ears", "--remove_ears", action="store_true",
                     help="also remove the ears (pinnae): placed by the atlas guard's registration, "
                          "never within 12 mm of the brain; a scan whose ears cannot be placed fails "
                          "(docs/ears.md)")
    run.add_argument("--atlas-guard", "--atlas_guard", action=argparse.BooleanOptionalAction, default=True,
                     help="also keep everything near an average brain registered to each scan "
                          "(default: on). --no-atlas-guard: the network's brain guard alone, "
                          "faster, but it removes brain on more scans (docs/model-card.md)")
    run.add_argument("--overwrite", action="store_true",
                     help="redo scans whose outputs exist and are up to date")
    run.add_argument("--work-dir", "--work_dir", "-w", type=lambda value: Path(value).absolute(),
                     metavar="DIR", help="folder for the validator report and the run log "
                                         "(kept; default: none); group level: the QC report, "
                                         "when output_dir is not Deepdefacer's derivatives")
    verbosity = run.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="count", default=0,
                           help="debug messages and tracebacks of unexpected errors (nipreps' "
                                "-v; may be repeated)")
    verbosity.add_argument("--quiet", action="store_true",
                           help="no progress bar or per-scan lines: only problems and the summary")
    return parser


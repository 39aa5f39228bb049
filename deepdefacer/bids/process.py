"""One job of a BIDS run: deface its reference scan, carry the mask to the job's other scans,
check each, and write each group's outputs with the completion record last.

A job either completes or leaves its outputs unchanged: every file is renamed into place, and the
file that records completion is written last. Problems with one image are an InputError for that
image only; the run goes on with the next job.
"""

from __future__ import annotations

import logging
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deepdefacer import messages, nifti, provenance
from deepdefacer.apply import write_defaced, write_image
from deepdefacer.bids import deidentify, outputs
from deepdefacer.bids.jobs import Job
from deepdefacer.config import Settings
from deepdefacer.errors import InputError, ModelLoadError
from deepdefacer.files import remove_stale_temporaries, sha256_file, split_extension, write_json
from deepdefacer.pipeline import Defaced, load_defacer
from deepdefacer.qc.verify import Verification, verify_defacing

log = logging.getLogger("deepdefacer")

DEFACED, SKIPPED, FAILED = "defaced", "skipped", "failed"


@dataclass
class ScanResult:
    relpath: str
    status: str
    message: str = ""
    seconds: float = 0.0
    details: str = ""  # a traceback for unexpected errors, shown with --verbose
    qc_flags: list = field(default_factory=list)  # reasons the QC flagged the defaced scan


@dataclass
class JobResult:
    label: str
    scans: list = field(default_factory=list)


@dataclass
class _Job:
    """What every step of one job shares."""

    job: Job
    settings: Settings
    start: float
    input_sha256: dict
    mask_source: str
    defacer: object = None
    reference: Defaced | None = None


@dataclass
class _Checked:
    """A scan defaced and checked, its image written, waiting for its mask, QC and sidecars."""

    output: outputs.ScanOutput
    defaced: Defaced
    verification: Verification


def process_job(job: Job, settings: Settings, defacer=None) -> JobResult:
    """Deface every scan of job; never raises for problems with the input."""
    result = JobResult(job.label)
    planned = outputs.plan_outputs(job, settings.output_dir, settings.layout)
    for path in outputs.all_paths(planned):
        remove_stale_temporaries(path)
    run = _Job(job, settings, time.monotonic(), {}, outputs.source_uri(job.reference.relpath,
                                                                        settings.layout), defacer)
    try:
        run.input_sha256 = _input_checksums(job)
        if (not settings.overwrite and job.reference.relpath in run.input_sha256
                and _up_to_date(run, planned)):
            return skipped(job)
        # Only now that a scan needs work: the scan is read and checked, and TensorFlow and the
        # model (seconds) are loaded.
        reference = nifti.load_volume(job.reference.path)
        run.defacer = run.defacer or load_defacer(settings.device, settings.atlas_guard, settings.mode,
                                                 settings.remove_ears)
        run.reference = run.defacer.deface_volume(reference)
    except ModelLoadError:
        raise
    except Exception as exc:  # InputError or an unexpected failure: the whole job fails
        return _job_failed(job, planned, exc)
    for group_output in planned:
        checked = [entry for entry in (_deface_and_check(run, scan_output, result)
                                       for scan_output in group_output.scans) if entry]
        if checked:
            _finish_group(run, group_output, checked, result)
    return result


def job_up_to_date(job: Job, settings: Settings) -> bool:
    """Whether every output of ``job`` is there and up to date; no TensorFlow (a finished job
    needs no worker process)."""
    run = _Job(job, settings, time.monotonic(), _input_checksums(job),
               outputs.source_uri(job.reference.relpath, settings.layout))
    try:
        return job.reference.relpath in run.input_sha256 and _up_to_date(
            run, outputs.plan_outputs(job, settings.output_dir, settings.layout))
    except Exception:  # e.g. an unreadable input: its job reports it
        return False


def skipped(job: Job) -> JobResult:
    return JobResult(job.label, [ScanResult(scan.relpath, SKIPPED, "up to date") for scan in job.scans])


def _input_checksums(job: Job) -> dict:
    checksums = {}
    for scan in job.scans:
        try:
            checksums[scan.relpath] = sha256_file(scan.path)
        except OSError:
            pass  # reported when the scan itself is loaded
    return checksums


def _up_to_date(run: _Job, planned) -> bool:
    identity = provenance.method_identity(
        run.settings.atlas_guard, mode=run.settings.mode, remove_ears=run.settings.remove_ears) if run.defacer is None \
        else provenance.identity_of(run.defacer)
    mask_source_sha256 = run.input_sha256[run.job.reference.relpath]
    expected = {scan.relpath: provenance.up_to_date_key(
        identity, run.input_sha256.get(scan.relpath), run.mask_source, mask_source_sha256)
        for scan in run.job.scans}
    if run.settings.deidentify_keys and any(
            deidentify.has_header_text(scan_output.image) for group_output in planned
            for scan_output in group_output.scans if scan_output.image.is_file()):
        return False  # made without --deidentify-metadata: its header text is still there
    return outputs.is_up_to_date(planned, run.settings.layout, expected, qc=run.settings.qc)


def _job_failed(job: Job, planned, exc: BaseException) -> JobResult:
    """Every scan of the job failed with the reference: its mask could not be made."""
    failure = _failure(exc)
    result = JobResult(job.label, [
        ScanResult(scan.relpath, FAILED, failure.message if scan is job.reference else
                   f"mask source {job.reference.relpath} failed: {failure.message}",
                   details=failure.details) for scan in job.scans])
    for group_output in planned:
        for scan_output in group_output.scans:
            _drop_orphan_sidecar(scan_output)
    return result


def _deface_and_check(run: _Job, scan_output, result: JobResult) -> _Checked | None:
    """Deface one scan of the job (the reference's own result, or its mask carried onto the scan's
    grid), run its face check, and write its image only when it passes (fail closed), unless
    --allow-unverified asks for it. Returns the entry that waits for the group's mask and QC."""
    scan = scan_output.scan
    try:
        if scan == run.job.reference:
            defaced = run.reference
        else:
            defaced = run.defacer.with_mask(nifti.load_volume(scan.path), run.reference)
        verification = verify_defacing(defaced.volume.in_memory(), defaced.image, defaced.mask)
        if not verification.verified:
            written = run.settings.allow_unverified
            result.scans.append(ScanResult(scan.relpath, FAILED,
                                           messages.unverified(verification.reason, written)))
            if not written:
                _remove_earlier_outputs(scan_output)
                return None
        write_defaced(defaced.volume, defaced.written_raw, scan_output.image, edit_header=(
            deidentify.blank_header_text if run.settings.deidentify_keys
            and run.settings.layout == "bids" else None))
        return _Checked(scan_output, defaced, verification)
    except Exception as exc:
        failure = _failure(exc)
        result.scans.append(ScanResult(scan.relpath, FAILED, failure.message,
                                       details=failure.details))
        _drop_orphan_sidecar(scan_output)
        return None


def _finish_group(run: _Job, group_output, checked: list, result: JobResult) -> None:
    """The group's mask, each scan's QC, then the sidecars: the file that records completion (the
    image sidecar in derivatives, the mask sidecar in bids) is written last, so an interrupted
    job is redone."""
    from deepdefacer.qc.participant import defacing_flags

    settings, reference = run.settings, run.job.reference
    details = run.reference.details
    flags = defacing_flags(details)
    try:
        # The mask file lies on the grid of the group's reference (its first magnitude image).
        grid = next((entry for entry in checked if entry.output.scan == group_output.group.reference),
                    checked[0])
        write_image(grid.defaced.mask_image, group_output.mask)
        qc_flags = {entry.output.scan.relpath: run_qc(entry, settings, flags) if settings.qc
                    else list(flags) for entry in checked}
        seconds = time.monotonic() - run.start

        def record(input_sha256, verified):
            return provenance.record(run.defacer, details, input_sha256, run.mask_source,
                                     run.input_sha256[reference.relpath], verified, seconds,
                                     settings.command_line)

        write_json(outputs.mask_sidecar(group_output.group, reference, settings.layout, record(
            {entry.output.scan.relpath: run.input_sha256.get(entry.output.scan.relpath)
             for entry in checked},
            {entry.output.scan.relpath: entry.verification.verified for entry in checked})),
            group_output.mask_sidecar)
        if settings.layout == "derivatives":
            mask_relpath = Path(group_output.mask).relative_to(settings.output_dir).as_posix()
            for entry in checked:
                scan_record = record(run.input_sha256.get(entry.output.scan.relpath),
                                     entry.verification.verified)
                scan_record["Verification"] = entry.verification.to_dict()
                write_json(outputs.image_sidecar(entry.output.scan, mask_relpath, scan_record),
                           entry.output.sidecar)
    except Exception as exc:
        failure = _failure(exc)
        result.scans += [ScanResult(entry.output.scan.relpath, FAILED, failure.message,
                                    details=failure.details)
                         for entry in checked if entry.verification.verified]
        return
    for entry in checked:
        if not entry.verification.verified:
            continue  # reported when it was checked
        scan = entry.output.scan
        result.scans.append(ScanResult(
            scan.relpath, DEFACED,
            f"{100.0 * float(np.mean(entry.defaced.mask)):.1f}% of voxels removed, no face left"
            + (", an average face put in" if entry.defaced.refaced_raw is not None else "")
            + ("" if scan == reference else f" (mask of {reference.relpath})"),
            seconds=time.monotonic() - run.start, qc_flags=qc_flags[scan.relpath]))


def _remove_earlier_outputs(scan_output) -> None:
    """An earlier run's output of a scan that now fails its face check must not stay behind as
    "defaced" (it may come from another model or from before the check existed). In the bids
    layout the copied source sidecar goes too: BIDS rejects a sidecar without its image."""
    for path in (scan_output.image, scan_output.sidecar or _copied_sidecar(scan_output),
                 *scan_output.qc_files):
        if path is not None and path.is_file():
            log.warning("removing %s: its scan failed the face check", path)
            path.unlink()


def _drop_orphan_sidecar(scan_output) -> None:
    """A scan that failed for another reason keeps an earlier run's outputs (a DataLad dataset
    whose content was dropped must not lose its defaced images), but in the bids layout a source
    sidecar copied without its image is removed, for the copy to stay valid."""
    sidecar = _copied_sidecar(scan_output)
    if sidecar is not None and sidecar.is_file() and not scan_output.image.exists():
        sidecar.unlink()


def _copied_sidecar(scan_output):
    """The source sidecar copied next to the image (bids layout), else None."""
    if scan_output.sidecar is not None:
        return None
    return scan_output.image.with_name(split_extension(scan_output.image)[0] + ".json")


def run_qc(entry: _Checked, settings: Settings, extra_flags=()) -> list:
    """QC figures and verdict of one defaced scan (deepdefacer.qc), in sub-<label>/figures/.

    Only for the derivatives layout: an upload-ready copy must hold nothing but the dataset.
    Runs before the completion record is written, so an interrupted or failed QC leaves the
    scan to be redone; ``extra_flags`` (from the defacing) are written into the verdict.
    Returns the verdict's flags.
    """
    if settings.layout != "derivatives":
        return list(extra_flags)
    from deepdefacer.qc.participant import qc_scan

    scan, defaced = entry.output.scan, entry.defaced
    verdict = qc_scan(defaced.volume.img, defaced.image, defaced.mask_image,
                      Path(settings.output_dir) / scan.relpath.split("/")[0],
                      stem=split_extension(scan.path)[0], source=scan.relpath,
                      extra_flags=extra_flags, verification=entry.verification,
                      rendered_img=defaced.written_image if defaced.refaced_raw is not None else None)
    return list(verdict.get("flags", [])) if verdict.get("verdict") == "flag" else []


@dataclass
class _Failure:
    message: str
    details: str = ""


def _failure(exc: BaseException) -> _Failure:
    if isinstance(exc, InputError):
        return _Failure(exc.reason)
    return _Failure(messages.unexpected(exc), traceback.format_exc())

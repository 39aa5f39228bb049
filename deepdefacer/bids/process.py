"""Deface the jobs of a run: load, predict the mask once, carry it to the job's scans, write.

A job either completes or leaves its outputs unchanged: every file is renamed into place, and the
file that records completion is written last. Problems with one image are an InputError for that
image only; the run goes on with the next job.
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from deepdefacer.bids import outputs
from deepdefacer.bids.jobs import Job
from deepdefacer.errors import InputError
from deepdefacer.io import (load_image, mask_image_like, remove_stale_temporaries, sha256_file,
                            split_extension, write_image, write_in_source_encoding, write_json)
from deepdefacer.mask_transfer import apply_mask, resample_mask
from deepdefacer.model import ModelIdentity, model_identity
from deepdefacer.conform import background_intensity
from deepdefacer.qc.verify import Verification, verify_defacing

log = logging.getLogger("deepdefacer")

DEFACED, SKIPPED, FAILED = "defaced", "skipped", "failed"


class ModelLoadError(RuntimeError):
    """The model could not be loaded: nothing can be defaced, the run stops."""


@dataclass(frozen=True)
class Settings:
    output_dir: str
    layout: str = "derivatives"
    overwrite: bool = False
    device: str = "auto"
    atlas_guard: bool = True  # also guard an average brain registered to each scan (--no-atlas-guard: off)
    command_line: str = ""
    qc: bool = True  # per-scan QC figures and verdict (derivatives layout)
    allow_unverified: bool = False  # write a scan whose face check fails (still a failed scan)


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


# ---------------------------------------------------------------------------------------------
# The model, loaded once per process

_defacers: dict = {}


_identities: dict = {}


def get_model_identity(atlas_guard: bool = True):
    """The model's sha256 and decision record, read once per process without TensorFlow."""
    if atlas_guard not in _identities:
        try:
            _identities[atlas_guard] = model_identity(atlas_guard)
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"cannot read the Deepdefacer model or its card: {exc}") from exc
    return _identities[atlas_guard]


def get_defacer(device: str, atlas_guard: bool = True):
    key = (device, atlas_guard)
    if key not in _defacers:
        if atlas_guard:
            from deepdefacer.atlas import load_atlas

            try:
                load_atlas()
            except OSError as exc:
                raise ModelLoadError(f"the atlas guard cannot read its atlas: {exc} "
                                     "(or --no-atlas-guard: the network's brain guard alone)") from exc
        try:
            from deepdefacer.model import load_defacer

            defacer = load_defacer(device=device)
        except Exception as exc:
            raise ModelLoadError(f"cannot load the Deepdefacer model on device '{device}': "
                                 f"{type(exc).__name__}: {exc}") from exc
        defacer.atlas_guard = atlas_guard
        _defacers[key] = defacer
    return _defacers[key]


# ---------------------------------------------------------------------------------------------
# One job


def process_job(job: Job, settings: Settings, defacer=None) -> JobResult:
    """Deface every scan of job; never raises for problems with the input."""
    start = time.monotonic()
    result = JobResult(job.label)
    planned = outputs.plan_outputs(job, settings.output_dir, settings.layout)
    for path in outputs.all_paths(planned):
        remove_stale_temporaries(path)
    reference = job.reference
    try:
        reference_img = load_image(reference.path)
        input_sha256 = {}
        for scan in job.scans:
            try:
                input_sha256[scan.relpath] = sha256_file(scan.path)
            except OSError:
                pass  # reported when the scan itself is loaded
        identity = get_model_identity(settings.atlas_guard) if defacer is None else \
            ModelIdentity(defacer.model_name, defacer.model_sha256, defacer.decision)
        mask_source = outputs.source_uri(reference.relpath, settings.layout)
        expected = {scan.relpath: outputs.provenance_key(
            identity.sha256, input_sha256.get(scan.relpath), mask_source,
            input_sha256[reference.relpath], identity.decision) for scan in job.scans}
        if not settings.overwrite and outputs.is_up_to_date(planned, settings.layout, expected,
                                                            qc=settings.qc):
            result.scans = [ScanResult(scan.relpath, SKIPPED, "up to date") for scan in job.scans]
            return result
        # Only now that a scan needs work: TensorFlow and the model take seconds to load.
        defacer = defacer or get_defacer(settings.device, settings.atlas_guard)
        reference_defaced, reference_mask_img, details = defacer.deface_with_details(reference_img)
    except ModelLoadError:
        raise
    except Exception as exc:  # InputError or an unexpected failure: the whole job fails
        failure = _failure(exc)
        result.scans = [ScanResult(scan.relpath, FAILED,
                                   failure.message if scan is reference else
                                   f"mask source {reference.relpath} failed: {failure.message}",
                                   details=failure.details) for scan in job.scans]
        for group_output in planned:
            for scan_output in group_output.scans:
                _drop_orphan_sidecar(scan_output)
        return result

    reference_mask = _array(reference_mask_img)

    def provenance_for(relpath_sha256, verified, seconds):
        return {
            "Version": outputs.deepdefacer_version(),
            "Model": defacer.model_name,
            "ModelSHA256": defacer.model_sha256,
            "Decision": defacer.decision,
            **details,
            "InputSHA256": relpath_sha256,
            "MaskSource": mask_source,
            "MaskSourceSHA256": input_sha256[reference.relpath],
            "Verified": verified,
            "Device": str(defacer.device),
            "Seconds": round(seconds, 2),
            "CommandLine": settings.command_line,
            "Date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    for group_output in planned:
        # Each scan's face check runs before its image is written; a scan that fails it is not
        # written (fail closed) unless --allow-unverified asks for it.
        done = []
        for scan_output in group_output.scans:
            scan = scan_output.scan
            try:
                img, mask, defaced_img = _defaced_scan(scan, reference, reference_img,
                                                       reference_mask, reference_defaced)
                verification = verify_defacing(img, defaced_img, mask)
                if not verification.verified:
                    written = settings.allow_unverified
                    result.scans.append(ScanResult(
                        scan.relpath, FAILED, verification.reason + (
                            "; written anyway (--allow-unverified)" if written else
                            "; not written (--allow-unverified writes it for inspection)")))
                    if not written:
                        _remove_earlier_outputs(scan_output)
                        continue
                write_in_source_encoding(scan.path, _array(defaced_img, scaled=True), mask,
                                         scan_output.image)
                done.append(_Done(scan_output, img, mask, verification))
            except Exception as exc:
                failure = _failure(exc)
                result.scans.append(ScanResult(scan.relpath, FAILED, failure.message,
                                               details=failure.details))
                _drop_orphan_sidecar(scan_output)
        if not done:
            continue
        # The file that records completion is written last: the image sidecar (derivatives) or
        # the mask sidecar (bids), after the image, the mask and the QC; an interrupted job is redone.
        flags = atlas_flags(details)
        try:
            # The mask file lies on the grid of the group's reference (its first magnitude image).
            group = group_output.group
            grid = next((entry for entry in done if entry.output.scan == group.reference), done[0])
            write_image(mask_image_like(grid.mask, grid.img), group_output.mask)
            qc_flags = {}
            for entry in done:
                qc_flags[entry.output.scan.relpath] = run_qc(entry, settings, flags) \
                    if settings.qc else list(flags)
            seconds = time.monotonic() - start
            mask_provenance = provenance_for(
                {entry.output.scan.relpath: input_sha256.get(entry.output.scan.relpath)
                 for entry in done}, {entry.output.scan.relpath: entry.verification.verified
                                      for entry in done}, seconds)
            write_json(outputs.mask_sidecar(group, reference, settings.layout, mask_provenance),
                       group_output.mask_sidecar)
            if settings.layout == "derivatives":
                mask_relpath = Path(group_output.mask).relative_to(settings.output_dir).as_posix()
                for entry in done:
                    provenance = provenance_for(input_sha256.get(entry.output.scan.relpath),
                                                entry.verification.verified, seconds)
                    provenance["Verification"] = entry.verification.to_dict()
                    write_json(outputs.image_sidecar(entry.output.scan, mask_relpath, provenance),
                               entry.output.sidecar)
        except Exception as exc:
            failure = _failure(exc)
            result.scans += [ScanResult(entry.output.scan.relpath, FAILED, failure.message,
                                        details=failure.details)
                             for entry in done if entry.verification.verified]
            continue
        for entry in done:
            if not entry.verification.verified:
                continue  # reported above
            scan = entry.output.scan
            result.scans.append(ScanResult(
                scan.relpath, DEFACED,
                f"{100.0 * float(np.mean(entry.mask)):.1f}% of voxels removed, no face left"
                + ("" if scan == reference else f" (mask of {reference.relpath})"),
                seconds=time.monotonic() - start, qc_flags=qc_flags[scan.relpath]))
    return result


@dataclass
class _Done:
    """A scan whose defaced image is written, waiting for its mask, QC and sidecars."""

    output: outputs.ScanOutput
    img: object
    mask: object
    verification: Verification


def _defaced_scan(scan, reference, reference_img, reference_mask, reference_defaced):
    """(image, mask, defaced image) of one scan of a job: the reference's own, or the
    reference's mask carried onto the scan's grid."""
    if scan == reference:
        return reference_img, reference_mask, reference_defaced
    img = load_image(scan.path)
    mask = resample_mask(reference_mask, reference_img.affine, img.shape, img.affine)
    data = img.get_fdata()
    defaced = nib.Nifti1Image(apply_mask(data, mask, background_intensity(data)), img.affine,
                              img.header)
    return img, mask, defaced


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


def atlas_flags(details: dict) -> list:
    """Flags for a scan whose atlas guard was asked for but not used (its brain is then
    guarded by the network alone, the path that lost brain on 3 of 48 scans), and for a scan
    whose header's voxel sizes are implausible (its size was estimated: worth a look)."""
    flags = []
    header = details.get("HeaderVoxelSizes")
    if header:
        stored = " x ".join(f"{z:g}" for z in header["Stored"])
        fitted = (" and the atlas fit (" + " x ".join(f"{z:g}" for z in header["AtlasFit"]) + " mm)"
                  if header["AtlasFitUsed"] else f"; atlas fit not used: {header['Reason']}")
        flags.append(f"implausible voxel sizes in the header ({stored} mm): defaced under the "
                     f"head-size rule ({' x '.join(f'{z:g}' for z in header['HeadSizeRule'])} mm){fitted}")
    guard = details.get("AtlasGuard")
    if guard and not guard["Used"]:
        flags.append(f"atlas guard not used ({guard['Reason']}): only the network's brain guard applied")
    return flags


def run_qc(entry, settings: Settings, extra_flags=()) -> list:
    """QC figures and verdict of one defaced scan (deepdefacer.qc), in sub-<label>/figures/.

    Only for the derivatives layout: an upload-ready copy must hold nothing but the dataset.
    Runs before the completion record is written, so an interrupted or failed QC leaves the
    scan to be redone; ``extra_flags`` (from the defacing) are written into the verdict.
    Returns the verdict's flags.
    """
    if settings.layout != "derivatives":
        return list(extra_flags)
    from deepdefacer.qc.participant import qc_scan

    scan = entry.output.scan
    verdict = qc_scan(entry.img, nib.load(entry.output.image), mask_image_like(entry.mask, entry.img),
                      Path(settings.output_dir) / scan.relpath.split("/")[0],
                      stem=split_extension(scan.path)[0], source=scan.relpath,
                      extra_flags=extra_flags, verification=entry.verification)
    return list(verdict.get("flags", [])) if verdict.get("verdict") == "flag" else []


@dataclass
class _Failure:
    message: str
    details: str = ""


def _failure(exc: BaseException) -> _Failure:
    if isinstance(exc, InputError):
        return _Failure(exc.reason)
    return _Failure(f"unexpected error: {type(exc).__name__}: {exc}", traceback.format_exc())


def _array(img, scaled: bool = False):
    return img.get_fdata() if scaled else np.asarray(img.dataobj)


# ---------------------------------------------------------------------------------------------
# All jobs, one process or a pool


def run_jobs(jobs, settings: Settings, n_procs: int = 1, on_result=None, defacer=None):
    """Run jobs, calling on_result(JobResult) as each finishes; returns the list of results.

    n_procs > 1: that many worker processes, each with its own copy of the model and an equal
    share of the CPU threads (TensorFlow reads its thread counts when it starts).
    """
    results = []
    if n_procs <= 1 or len(jobs) <= 1:
        for job in jobs:
            job_result = process_job(job, settings, defacer=defacer)
            results.append(job_result)
            if on_result:
                on_result(job_result)
        return results

    threads = max(1, usable_cpus() // n_procs)
    context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=n_procs, mp_context=context, initializer=_init_worker,
            initargs=(threads,)) as pool:
        futures = {pool.submit(process_job, job, settings): job for job in jobs}
        try:
            for future in concurrent.futures.as_completed(futures):
                job = futures[future]
                try:
                    job_result = future.result()
                except ModelLoadError:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                except Exception as exc:  # a worker died (out of memory, killed)
                    job_result = JobResult(job.label, [
                        ScanResult(scan.relpath, FAILED, f"worker process failed: {exc!r}")
                        for scan in job.scans])
                results.append(job_result)
                if on_result:
                    on_result(job_result)
        except BaseException:
            # Stopped (Ctrl-C, SIGTERM from SLURM or `docker stop`): the queue is dropped and the
            # workers are stopped now, not after their current scans (10-13 s, past docker's
            # 10 s grace). Their outputs are renamed into place or not at all, and the next run
            # removes their hidden temporaries and redoes their jobs.
            workers = list((pool._processes or {}).values())  # no public way to stop them
            pool.shutdown(wait=False, cancel_futures=True)
            for worker in workers:
                worker.terminate()
            raise
    return results


def usable_cpus() -> int:
    """The CPUs this process may run on: its affinity (a SLURM task's or a container's cgroup
    allocation, not the whole node) and SLURM_CPUS_PER_TASK where set, whichever is fewer."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        count = os.cpu_count() or 1
    slurm = os.environ.get("SLURM_CPUS_PER_TASK", "")
    return max(1, min(count, int(slurm)) if slurm.isdigit() and int(slurm) > 0 else count)


def _init_worker(threads: int) -> None:
    # TensorFlow's and OpenMP's threads per worker (the atlas guard's registration is numpy since
    # stop 20: no ITK threads to set).
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

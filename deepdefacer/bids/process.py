"""Deface the jobs of a run: load, predict the mask once, carry it to the job's scans, write.

A job either completes or leaves its outputs unchanged: every file is renamed into place, and the
file that records completion is written last. Problems with one image are an InputError for that
image only; the run goes on with the next job.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from deepdefacer.bids import outputs
from deepdefacer.bids.jobs import Job
from deepdefacer.errors import InputError
from deepdefacer.io import (load_image, mask_image_like, remove_stale_temporaries, sha256_file,
                            split_extension, write_image, write_in_source_encoding, write_json)
from deepdefacer.mask_transfer import apply_mask, resample_mask

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
        defacer = defacer or get_defacer(settings.device, settings.atlas_guard)
        mask_source = outputs.source_uri(reference.relpath, settings.layout)
        expected = {scan.relpath: outputs.provenance_key(
            defacer.model_sha256, input_sha256.get(scan.relpath), mask_source,
            input_sha256[reference.relpath], defacer.decision) for scan in job.scans}
        if not settings.overwrite and outputs.is_up_to_date(planned, settings.layout, expected):
            result.scans = [ScanResult(scan.relpath, SKIPPED, "up to date") for scan in job.scans]
            return result
        reference_defaced, reference_mask_img, details = defacer.deface_with_details(reference_img)
    except ModelLoadError:
        raise
    except Exception as exc:  # InputError or an unexpected failure: the whole job fails
        failure = _failure(exc)
        result.scans = [ScanResult(scan.relpath, FAILED,
                                   failure.message if scan is reference else
                                   f"mask source {reference.relpath} failed: {failure.message}",
                                   details=failure.details) for scan in job.scans]
        return result

    reference_mask = _array(reference_mask_img)

    def provenance_for(relpath_sha256, seconds):
        return {
            "Version": outputs.deepdefacer_version(),
            "Model": defacer.model_name,
            "ModelSHA256": defacer.model_sha256,
            "Decision": defacer.decision,
            **details,
            "InputSHA256": relpath_sha256,
            "MaskSource": mask_source,
            "MaskSourceSHA256": input_sha256[reference.relpath],
            "Device": str(defacer.device),
            "Seconds": round(seconds, 2),
            "CommandLine": settings.command_line,
            "Date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    for group_output in planned:
        group = group_output.group
        group_reference = group.reference
        done = []
        for scan_output in group_output.scans:
            scan = scan_output.scan
            try:
                if scan == reference:
                    img, scan_mask = reference_img, reference_mask
                    defaced_data = _array(reference_defaced, scaled=True)
                else:
                    img = load_image(scan.path)
                    scan_mask = resample_mask(reference_mask, reference_img.affine,
                                              img.shape, img.affine)
                    defaced_data = apply_mask(img.get_fdata(), scan_mask)
                write_in_source_encoding(scan.path, defaced_data, scan_mask, scan_output.image)
                done.append((scan_output, img, scan_mask))
            except Exception as exc:
                failure = _failure(exc)
                result.scans.append(ScanResult(scan.relpath, FAILED, failure.message,
                                               details=failure.details))
        if not done:
            continue
        try:
            # The mask file lies on the grid of the group's reference (its first magnitude image).
            _, mask_grid_img, mask_on_grid = next(
                (entry for entry in done if entry[0].scan == group_reference), done[0])
            write_image(mask_image_like(mask_on_grid, mask_grid_img), group_output.mask)
            seconds = time.monotonic() - start
            mask_provenance = provenance_for(
                {out.scan.relpath: input_sha256.get(out.scan.relpath) for out, _, _ in done},
                seconds)
            mask_sidecar = outputs.mask_sidecar(group, reference, settings.layout,
                                                mask_provenance)
            if settings.layout == "derivatives":
                write_json(mask_sidecar, group_output.mask_sidecar)
                for out, _, _ in done:
                    mask_relpath = Path(group_output.mask).relative_to(settings.output_dir)
                    write_json(outputs.image_sidecar(
                        out.scan, mask_relpath.as_posix(),
                        provenance_for(input_sha256.get(out.scan.relpath), seconds)), out.sidecar)
            else:
                write_json(mask_sidecar, group_output.mask_sidecar)
        except Exception as exc:
            failure = _failure(exc)
            result.scans += [ScanResult(out.scan.relpath, FAILED, failure.message,
                                        details=failure.details) for out, _, _ in done]
            continue
        for out, img, mask in done:
            flags = atlas_flags(details)
            qc_flags = run_qc(out, img, mask, settings, flags) if settings.qc else flags
            result.scans.append(ScanResult(
                out.scan.relpath, DEFACED,
                f"{100.0 * float(mask.mean()):.1f}% of voxels removed"
                + ("" if out.scan == reference else f" (mask of {reference.relpath})"),
                seconds=time.monotonic() - start, qc_flags=qc_flags))
    return result


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


def run_qc(scan_output, img, mask, settings: Settings, extra_flags=()) -> list:
    """QC figures and verdict of one defaced scan (deepdefacer.qc), in sub-<label>/figures/.

    Only for the derivatives layout: an upload-ready copy must hold nothing but the dataset.
    A QC problem is reported as a flag; it never fails the scan, whose outputs are complete.
    ``extra_flags`` (from the defacing) are returned in any case, and written into the verdict.
    """
    if settings.layout != "derivatives":
        return list(extra_flags)
    try:
        import nibabel as nib

        from deepdefacer.qc.participant import qc_scan
    except ImportError:
        return list(extra_flags)
    scan = scan_output.scan
    try:
        verdict = qc_scan(img, nib.load(scan_output.image), mask_image_like(mask, img),
                          Path(settings.output_dir) / scan.relpath.split("/")[0],
                          stem=split_extension(scan.path)[0],
                          source=scan.relpath, extra_flags=extra_flags)
    except Exception as exc:  # QC must never cost the user a defaced scan
        return [f"QC could not run ({type(exc).__name__}: {exc})", *extra_flags]
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
    import numpy as np

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

    threads = max(1, (os.cpu_count() or 1) // n_procs)
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
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return results


def _init_worker(threads: int) -> None:
    # TensorFlow's and OpenMP's threads per worker (the atlas guard's registration is numpy since
    # stop 20: no ITK threads to set).
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

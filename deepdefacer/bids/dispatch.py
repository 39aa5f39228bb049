"""Run a BIDS run's jobs: in this process, or in worker processes after the finished ones are
set aside here (recognising a finished job needs no TensorFlow, so no worker is started for it)."""

from __future__ import annotations

import logging

from deepdefacer import parallel
from deepdefacer.bids.process import FAILED, JobResult, ScanResult, job_up_to_date, process_job, skipped
from deepdefacer.config import Settings

log = logging.getLogger("deepdefacer")


def run_jobs(jobs, settings: Settings, n_procs: int = 1, on_result=None, defacer=None,
             threads: int | None = None) -> list:
    """Run jobs (``n_procs`` > 1: in at most that many worker processes), calling
    on_result(JobResult) as each finishes; returns the list of results."""
    finished = []
    if n_procs > 1 and not settings.overwrite:
        finished = [skipped(job) for job in jobs if job_up_to_date(job, settings)]
        done = {result.label for result in finished}
        jobs = [job for job in jobs if job.label not in done]
        for result in finished:
            if on_result:
                on_result(result)
    n_procs = min(n_procs, len(jobs))
    if n_procs > 1:
        log.info("%d scans at a time, in as many processes%s", n_procs,
                 f" ({len(finished)} job(s) already up to date)" if finished else "")
    keywords = {"defacer": defacer} if defacer is not None else {}
    return finished + parallel.run_all(process_job, jobs, settings, n_procs, on_result,
                                       _worker_failed, threads, **keywords)


def _worker_failed(job, exc) -> JobResult:
    return JobResult(job.label, [ScanResult(scan.relpath, FAILED, f"worker process failed: {exc!r}")
                                 for scan in job.scans])

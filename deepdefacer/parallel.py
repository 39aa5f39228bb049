"""Run jobs in this process or in a pool of worker processes, and stop them all at once.

Each worker has its own copy of the model and an equal share of the CPUs this process may use:
TensorFlow reads its thread counts when it starts, so they are set before it is imported.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass

from deepdefacer.errors import ModelLoadError


# What one process needs at most: 0.95 GB measured on a 256x256x176 1 mm scan (docs/benchmark.md),
# with headroom for larger fields of view.
PEAK_GB_PER_PROCESS = 1.5


@dataclass(frozen=True)
class Resources:
    """How a run uses the machine: parallel processes and the threads of each."""

    n_procs: int
    threads: int
    notes: tuple = ()  # what was changed from the request, and why


def plan_resources(n_procs: int = 1, total_cpus: int | None = None, threads: int | None = None,
                   mem_gb: float | None = None, jobs: int | None = None) -> Resources:
    """nipreps' --nprocs (CPUs for the run), --omp-nthreads (threads a process) and --mem, with
    Deepdefacer's --n-procs (parallel processes), never beyond the CPUs this process may use."""
    notes = []
    cpus = usable_cpus()
    total = min(total_cpus or cpus, cpus)
    if total_cpus and total_cpus > cpus:
        notes.append(f"--nprocs {total_cpus}: this process may use {cpus} CPUs")
    if jobs is not None:
        n_procs = max(1, min(n_procs, jobs))
    if mem_gb is not None and n_procs * PEAK_GB_PER_PROCESS > mem_gb:
        fitting = max(1, int(mem_gb // PEAK_GB_PER_PROCESS))
        notes.append(f"--n-procs {n_procs} needs ~{n_procs * PEAK_GB_PER_PROCESS:g} GB, more than "
                     f"--mem {mem_gb:g} GB: {fitting} process(es)")
        n_procs = fitting
    per_process = max(1, total // n_procs)
    if threads is not None:
        per_process = threads
        if threads * n_procs > total:
            notes.append(f"{n_procs} process(es) x --omp-nthreads {threads} is more than the "
                         f"{total} CPUs")
    return Resources(n_procs, per_process, tuple(notes))


def run_all(function, jobs, settings, n_procs: int = 1, on_result=None, on_worker_failure=None,
            threads: int | None = None, **keywords) -> list:
    """``function(job, settings, **keywords)`` for every job, calling ``on_result`` with each
    result as it comes; returns the results. ``on_worker_failure(job, exc)`` makes the result of
    a job whose worker died (out of memory, killed). A ModelLoadError stops the run."""
    results = []

    def deliver(result):
        results.append(result)
        if on_result:
            on_result(result)

    if n_procs <= 1 or len(jobs) <= 1:
        for job in jobs:
            deliver(function(job, settings, **keywords))
        return results

    threads = threads or max(1, usable_cpus() // n_procs)
    context = multiprocessing.get_context("spawn")  # TensorFlow is not fork-safe
    with concurrent.futures.ProcessPoolExecutor(
            max_workers=n_procs, mp_context=context, initializer=_init_worker,
            initargs=(threads,)) as pool:
        futures = {pool.submit(function, job, settings): job for job in jobs}
        try:
            for future in concurrent.futures.as_completed(futures):
                try:
                    result = future.result()
                except ModelLoadError:
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
                except Exception as exc:  # a worker died (out of memory, killed)
                    result = on_worker_failure(futures[future], exc)
                deliver(result)
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


def set_threads(threads: int) -> None:
    """TensorFlow's and OpenMP's threads in this process; read when TensorFlow starts."""
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)


def _init_worker(threads: int) -> None:
    # TensorFlow's and OpenMP's threads per worker (the atlas guard's registration is numpy).
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Run jobs in this process or in a pool of worker processes, and stop them all at once.

Each worker has its own copy of the model and an equal share of the CPUs this process may use:
TensorFlow reads its thread counts when it starts, so they are set before it is imported.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os

from deepdefacer.errors import ModelLoadError


def run_all(function, jobs, settings, n_procs: int = 1, on_result=None, on_worker_failure=None,
            **keywords) -> list:
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

    threads = max(1, usable_cpus() // n_procs)
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


def _init_worker(threads: int) -> None:
    # TensorFlow's and OpenMP's threads per worker (the atlas guard's registration is numpy).
    for variable in ("TF_NUM_INTRAOP_THREADS", "OMP_NUM_THREADS"):
        os.environ[variable] = str(threads)
    os.environ["TF_NUM_INTEROP_THREADS"] = "1"
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

"""Run jobs in this process or in a pool of worker processes, and stop them all at once.

Each worker has its own copy of the model and an equal share of the CPUs this process may use:
OpenMP and OpenBLAS read their thread counts when they start, so they are set in the worker
before anything is imported.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
from dataclasses import dataclass

from deepdefacer.errors import ModelLoadError


# What one worker process needs at most: two of them peaked at 3.25 GB together on 256^3 1 mm
# scans (docs/hpc.md); and the main process, which holds the dataset's index and the results.
PEAK_GB_PER_PROCESS = 1.6
MAIN_PROCESS_GB = 0.4


def processes_for_memory(memory_gb: float) -> int:
    """How many worker processes fit in ``memory_gb`` (at least one)."""
    return max(1, int((memory_gb - MAIN_PROCESS_GB) // PEAK_GB_PER_PROCESS))


@dataclass(frozen=True)
class Resources:
    """How a run uses the machine: parallel processes and the threads of each."""

    n_procs: int
    threads: int
    notes: tuple = ()  # what was changed from the request, and why


def plan_resources(n_procs: int | None = None, total_cpus: int | None = None, threads: int | None = None,
                   mem_gb: float | None = None, jobs: int | None = None) -> Resources:
    """nipreps' --nprocs (CPUs for the run), --omp-nthreads (threads a process) and --mem, with
    Deepdefacer's --n-procs (parallel processes), never beyond the CPUs this process may use.

    Without --n-procs: a process a CPU (or a process a --omp-nthreads threads), as many as the
    memory holds (``mem_gb``, else what the allocation or the machine has: available_memory_gb),
    and no more than there are jobs. Most of
    a scan's work (loading, the atlas registration, the face check, gzip) runs on one core, so
    parallel scans, not threads, use a machine's CPUs."""
    notes = []
    cpus = usable_cpus()
    total = min(total_cpus or cpus, cpus)
    if total_cpus and total_cpus > cpus:
        notes.append(f"--nprocs {total_cpus}: this process may use {cpus} CPUs")
    if n_procs is None:
        n_procs = total // threads if threads else total
        memory = mem_gb if mem_gb is not None else available_memory_gb()
        if memory is not None:
            n_procs = min(n_procs, processes_for_memory(memory))
        n_procs = max(1, n_procs)
    elif mem_gb is not None and processes_for_memory(mem_gb) < n_procs:
        fitting = processes_for_memory(mem_gb)
        needed = n_procs * PEAK_GB_PER_PROCESS + MAIN_PROCESS_GB
        notes.append(f"--n-procs {n_procs} needs ~{needed:g} GB, more than --mem {mem_gb:g} GB: "
                     f"{fitting} process(es)")
        n_procs = fitting
    if jobs is not None:
        n_procs = max(1, min(n_procs, jobs))
    per_process = max(1, total // n_procs)
    if threads is not None:
        per_process = threads
        if threads * n_procs > total:
            notes.append(f"{n_procs} process(es) x --omp-nthreads {threads} is more than the "
                         f"{total} CPUs")
    return Resources(n_procs, per_process, tuple(notes))


def available_memory_gb() -> float | None:
    """The memory this run may use: a SLURM job's (SLURM_MEM_PER_NODE, or SLURM_MEM_PER_CPU times
    the CPUs), a container's cgroup limit, and the machine's available memory, whichever is
    least; None when none of them can be read."""
    limits = []
    per_node, per_cpu = os.environ.get("SLURM_MEM_PER_NODE", ""), os.environ.get("SLURM_MEM_PER_CPU", "")
    if per_node.isdigit() and int(per_node) > 0:
        limits.append(int(per_node) / 1024)  # megabytes
    elif per_cpu.isdigit() and int(per_cpu) > 0:
        limits.append(int(per_cpu) * usable_cpus() / 1024)
    for path, scale in (("/sys/fs/cgroup/memory.max", 2**30),  # cgroup v2
                        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", 2**30)):  # cgroup v1
        value = _read_number(path)
        if value is not None and value < 2**60:  # "max" or a huge number: no limit
            limits.append(value / scale)
            break
    available = _meminfo_kb("MemAvailable")
    if available is not None:
        limits.append(available / 2**20)
    return min(limits) if limits else None


def _read_number(path: str) -> int | None:
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _meminfo_kb(key: str) -> int | None:
    try:
        for line in open("/proc/meminfo"):
            name, _, value = line.partition(":")
            if name == key:
                return int(value.split()[0])
    except (OSError, ValueError, IndexError):
        pass
    return None


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
    """OpenMP's and OpenBLAS's threads in this process, read when they start. (The network's
    threads are fixed: deepdefacer.predictor.INFERENCE_THREADS.)"""
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[variable] = str(threads)


def reuse_freed_memory() -> None:
    """glibc: keep freed memory in the process for the next allocation.

    By default every array over 32 MB (a 1 mm head in float32 is 41 MB) is mapped from the
    system when made and unmapped when freed, so each of a scan's many working arrays has its
    pages faulted in and zeroed again. On 40 1 mm heads with two processes that was 19 s of a
    64 s run (system time); with this, 2.5 s of 54 s, and the same peak memory (1.0 GB a
    process). What a scan computes does not change.
    """
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.mallopt(-4, 0)  # M_MMAP_MAX: large blocks come from the heap too ...
        libc.mallopt(-1, 2**31 - 1)  # M_TRIM_THRESHOLD: ... and stay there when freed
    except (OSError, AttributeError):  # not glibc: its allocator's defaults
        pass


def _init_worker(threads: int) -> None:
    _die_with_parent()
    set_threads(threads)
    reuse_freed_memory()
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _die_with_parent() -> None:
    """Linux: this worker is killed when the run's main process dies (kill -9 of the run from a
    shell), instead of going on as an orphan; its hidden temporaries are removed by the next run."""
    try:
        import ctypes
        import signal

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux
        pass

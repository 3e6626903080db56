"""Worker processes shared by the batch commands (preprocess, infer, evaluate)."""

import multiprocessing
import os
import signal


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(limit=4):
    """min(limit, usable CPUs), at least 1."""
    return max(1, min(limit, usable_cpus()))


def worker_pool(workers, initializer=None, initargs=()):
    """A ProcessPoolExecutor of ``workers`` processes that ignore Ctrl-C.

    An executor, not multiprocessing.Pool: when a worker dies (the OOM killer, a crash in an
    image decoder) Pool waits forever for its task; the executor raises BrokenProcessPool.
    Started by forkserver (else spawn), not fork: the parent may run inference threads, and
    forking those can deadlock.
    """
    from concurrent.futures import ProcessPoolExecutor

    return ProcessPoolExecutor(
        workers, mp_context=worker_context(), initializer=_start_worker, initargs=(initializer, tuple(initargs))
    )


def worker_context():
    """The multiprocessing context ``worker_pool`` uses (for shared memory made before the pool)."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")


def _start_worker(initializer, initargs):
    # Ctrl-C reaches the whole process group: the parent stops the run, workers need not print tracebacks
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if initializer is not None:
        initializer(*initargs)

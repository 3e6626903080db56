"""The batch-job machinery shared by preprocess, infer and evaluate: how many workers, a pool of
worker processes, ordered and bounded mapping over it, the progress bar, and the failure list.

A batch job runs one function over many items (images, .bin files, output sets). One bad item
must not stop a run over thousands: :class:`Failures` logs it in one line and lists it (or, under
``--strict``, raises its InputError). Items are processed in worker processes and their outcomes
come back in item order (:func:`map_ordered`, :func:`ordered_bounded`), with at most a window of
items in flight; a worker that dies (the OOM killer, a crash in an image decoder) becomes
:class:`WorkerDied` naming the item, never a hang.
"""

import collections
import contextlib
import itertools
import logging
import multiprocessing
import os
import signal
import sys

from retinamask.core.errors import InputError

logger = logging.getLogger(__name__)


def usable_cpus():
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def default_workers(limit):
    """min(limit, usable CPUs), at least 1: each job's default ``--workers``."""
    return max(1, min(limit, usable_cpus()))


class Failures:
    """The bad items of a batch job, in the order met: ``items`` is a list of ``{"file", "cause"}``
    (plus any ``extra`` fields given). ``add`` logs one warning line ``file: cause`` and lists the
    item, or, with ``strict``, raises ``InputError(cause, file)`` instead."""

    def __init__(self, strict=False, log=logger):
        self.strict = strict
        self.log = log
        self.items = []

    def add(self, file, cause, **extra):
        if self.strict:
            raise InputError(cause, file)
        self.log.warning("%s: %s", file, cause)
        self.items.append({"file": str(file), "cause": cause, **extra})

    def __len__(self):
        return len(self.items)

    def __bool__(self):
        return bool(self.items)


@contextlib.contextmanager
def progress_bar(desc, total, progress=None):
    """A tqdm bar on stderr counting images (``desc``: the job's name), with log lines printed
    above it. ``progress``: on/off (None: on a terminal)."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    with (
        logging_redirect_tqdm(),
        tqdm(
            total=total,
            desc=desc,
            unit="img",
            file=sys.stderr,
            disable=(None if progress is None else not progress),
        ) as bar,
    ):
        yield bar


class WorkerDied(Exception):
    """A worker process died while ``job`` (or one near it) was in flight; the pool is broken."""

    def __init__(self, job):
        super().__init__(job)
        self.job = job


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


def ordered_bounded(pool, function, jobs, window):
    """Yield (job, function(job)) in job order, computed by the executor ``pool``, with at most
    ``window`` jobs submitted and not yet consumed. The next job is submitted only after the
    consumer asked for the next result, so a result may borrow a resource (a shared-memory slot)
    until then. The pool is shut down (pending jobs cancelled) when the generator ends or is closed.

    Raises :class:`WorkerDied` (naming the job awaited or submitted) when a worker process dies.
    """
    from concurrent.futures.process import BrokenProcessPool

    jobs = iter(jobs)
    job = None
    try:
        pending = collections.deque()
        for job in itertools.islice(jobs, window):
            pending.append((job, pool.submit(function, job)))
        while pending:
            job, future = pending.popleft()
            yield job, future.result()
            # submitted only after the consumer is done with the result (and its shared-memory slot)
            for job in itertools.islice(jobs, 1):
                pending.append((job, pool.submit(function, job)))
    except BrokenProcessPool:
        raise WorkerDied(job) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def map_ordered(function, jobs, workers, initializer=None):
    """Yield (job, function(job)) for each of ``jobs`` in order: here, one after the other, when
    ``workers`` <= 1 or there is at most one job; otherwise in a :func:`worker_pool` of
    min(workers, len(jobs)) processes (``initializer`` run in each), 2 * workers + 2 jobs in flight.

    Raises :class:`WorkerDied` when a worker process dies.
    """
    workers = min(workers, len(jobs))
    if workers <= 1:
        for job in jobs:
            yield job, function(job)
        return
    pool = worker_pool(workers, initializer=initializer)
    with contextlib.closing(ordered_bounded(pool, function, jobs, 2 * workers + 2)) as outcomes:
        yield from outcomes

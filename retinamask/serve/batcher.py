"""The serving core: a bounded queue in front of one worker thread per session, with dynamic batching.

A request's prepared image (its canvas tensor and geometry) is submitted and gets a
``concurrent.futures.Future``. Each worker thread owns one model session; it takes the oldest waiting
item, then gathers up to ``max_batch - 1`` more items *of the same canvas* (any-canvas models give images
of different sizes different canvases; they never share a batch), waiting at most ``batch_wait_s`` for
them, runs the batch and resolves each item's future with that image's raw outputs.

Nothing here knows HTTP: the app maps :class:`QueueFull` to 503 and a future's timeout to 504.
"""

import collections
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


class QueueFull(Exception):
    """The queue holds ``max_queue`` items already: the caller should come back later (503)."""


class Draining(Exception):
    """The batcher no longer accepts work (shutting down)."""


@dataclass(eq=False)  # items are compared by identity (the queue removes exactly this item)
class WorkItem:
    """One image waiting for the model: ``prepared`` is what the model's ``run`` takes for one image;
    ``canvas`` the key that decides which items may share a batch."""

    prepared: object
    canvas: tuple
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)
    started: float | None = None  # when its batch began running
    finished: float | None = None  # when its batch's run returned
    batch_size: int = 0


class Batcher:
    """Workers over ``runners`` (one callable per session: ``run(list of prepared) -> list of outputs``).

    max_batch: the most images one run takes (1: no batching). batch_wait_s: how long a worker that has
    one item waits for more of the same canvas. max_queue: items waiting (not yet running) at most;
    :meth:`submit` raises :class:`QueueFull` beyond it. observe: optional ``(event, value)`` callback for
    metrics ("batch_size", "queue_depth").
    """

    def __init__(self, runners, max_batch=1, batch_wait_s=0.0, max_queue=16, observe=None):
        if max_batch < 1 or max_queue < 1:
            raise ValueError("max_batch and max_queue must be >= 1")
        self.max_batch = int(max_batch)
        self.batch_wait_s = float(batch_wait_s)
        self.max_queue = int(max_queue)
        self._observe = observe or (lambda event, value: None)
        self._queue = collections.deque()
        self._lock = threading.Condition()
        self._accepting = True
        self._running = 0  # items inside a running batch
        self._stopped = False
        self._threads = [
            threading.Thread(target=self._work, args=(run,), name=f"retinamask-session-{i}", daemon=True)
            for i, run in enumerate(runners)
        ]
        for thread in self._threads:
            thread.start()

    # ---- the caller's side

    def submit(self, prepared, canvas):
        """Queue one image; returns its WorkItem (``item.future`` resolves to its outputs)."""
        item = WorkItem(prepared, tuple(canvas))
        with self._lock:
            if not self._accepting:
                raise Draining("the server is shutting down")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} images are waiting already (--max-queue {self.max_queue})")
            self._queue.append(item)
            self._observe("queue_depth", len(self._queue))
            self._lock.notify_all()
        return item

    def drain(self, timeout=None):
        """Stop accepting; wait until every accepted item has run. True when all finished in time."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self._accepting = False
            while self._queue or self._running:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._lock.wait(left if left is not None else 0.1)
        return True

    def close(self):
        """Stop the workers (after :meth:`drain`, nothing is lost)."""
        with self._lock:
            self._accepting = False
            self._stopped = True
            self._lock.notify_all()
        for thread in self._threads:
            thread.join(timeout=5)

    # ---- the workers' side

    def _take_batch(self):
        """Block for the oldest item, then gather same-canvas items for up to batch_wait_s. None when stopped."""
        with self._lock:
            while not self._queue:
                if self._stopped:
                    return None
                self._lock.wait(0.5)
            first = self._queue.popleft()
            batch = [first]
            deadline = time.perf_counter() + self.batch_wait_s
            while len(batch) < self.max_batch:
                same = [item for item in self._queue if item.canvas == first.canvas]
                for item in same[: self.max_batch - len(batch)]:
                    self._queue.remove(item)
                    batch.append(item)
                left = deadline - time.perf_counter()
                if len(batch) >= self.max_batch or left <= 0 or self._stopped:
                    break
                self._lock.wait(left)
            self._running += len(batch)
            self._observe("queue_depth", len(self._queue))
            return batch

    def _work(self, run):
        try:
            self._serve_batches(run)
        except BaseException:  # a bug here would silently stop a session: say so loudly
            logger.exception("a session worker thread stopped")
            raise

    def _serve_batches(self, run):
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            cancelled = [item for item in batch if not item.future.set_running_or_notify_cancel()]
            if cancelled:  # their callers gave up (timed out) while they waited
                batch = [item for item in batch if item not in cancelled]
                with self._lock:
                    self._running -= len(cancelled)
                    self._lock.notify_all()
                if not batch:
                    continue
            started = time.perf_counter()
            for item in batch:
                item.started, item.batch_size = started, len(batch)
            self._observe("batch_size", len(batch))
            try:
                outputs = run([item.prepared for item in batch])
            except BaseException as e:  # the caller answers with one line; the traceback stays in the log
                logger.exception("the model failed on a batch of %d image(s)", len(batch))
                outputs = [e] * len(batch)
            finished = time.perf_counter()
            for item, output in zip(batch, outputs):
                item.finished = finished
                if isinstance(output, BaseException):
                    item.future.set_exception(output)
                else:
                    item.future.set_result(output)
            with self._lock:
                self._running -= len(batch)
                self._lock.notify_all()

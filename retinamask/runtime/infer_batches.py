"""Batching by canvas and running the model: ``infer``'s loop between loading and writing.

Images are batched by canvas: a batch holds images of one canvas shape (always so for the seed
policy's single S x S canvas); a canvas's partial batch runs when the input ends, or earlier when
:data:`MAX_OPEN_CANVASES` canvases already wait for images. With several sessions, that many
batches run at once (one thread per session, each session with its share of the cores); their
events come back in the order the batches were formed.
"""

import collections
import contextlib
import queue
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from retinamask.core.errors import RetinaMaskError
from retinamask.formats.outputs import write_image_outputs
from retinamask.runtime.infer_inputs import load_inputs

# Partial batches waiting for more images of their canvas (original policy: up to ~36 canvases);
# a new canvas beyond this many runs the oldest first.
MAX_OPEN_CANVASES = 4


def infer_local(todo, info, sessions, batch_size, workers, out_dir, outfmt, legacy_names):
    """Load, infer and write ``todo`` here: images preprocessed by ``workers`` processes, the model
    run by ``sessions`` (a list of :class:`~.session.Session`: as many batches at once) in
    batches of ``batch_size`` images of one canvas. Yields the events
    :func:`~retinamask.runtime.infer.run_inference` consumes (any executor yields the same):

    * ``("failed", item, cause)``: the item could not be loaded; nothing was written for it;
    * ``("done", items, compute_ms)``: the outputs of ``items`` (one model call) are written and
      each ``item.record`` has its image geometry (compute_ms None: that call's time came already).

    Images wait for a full batch of their canvas; at most MAX_OPEN_CANVASES partial batches are
    open at once (the oldest runs when another canvas comes), which bounds memory under the
    ``original`` policy, where nearly every aspect ratio has its own canvas.
    """
    batches = {}  # canvas (H, W) -> (batch buffer filled in place, items in it), oldest first

    def write(session, batch, pending):
        return infer_batch(session, batch, pending, out_dir, info.outputs, outfmt, legacy_names)

    with contextlib.closing(_BatchRunner(sessions, write)) as runner:

        def run_batch(canvas):
            batch, pending = batches.pop(canvas)
            return runner.submit(batch[: len(pending)], pending)

        with contextlib.closing(load_inputs(todo, info, workers)) as loaded:
            for item, tensor, extra, cause in loaded:
                if cause is not None:
                    yield "failed", item, cause
                    continue
                item.record.update(extra)
                canvas = tuple(tensor.shape[-2:])
                if canvas not in batches:
                    if len(batches) == MAX_OPEN_CANVASES:
                        yield from run_batch(next(iter(batches)))
                    batches[canvas] = (np.empty((batch_size, 3) + canvas, np.float32), [])
                batch, pending = batches[canvas]
                batch[len(pending)] = tensor  # copy now: the tensor may be a shared slot about to be reused
                pending.append(item)
                if len(pending) == batch_size:
                    yield from run_batch(canvas)
        while batches:
            yield from run_batch(next(iter(batches)))
        yield from runner.drain()


class _BatchRunner:
    """Runs ``write(session, batch, items)`` for each submitted batch: in the caller's thread with one
    session; with N sessions, in N threads (a batch takes whichever session is free), at most N
    batches in flight. ``submit`` and ``drain`` yield ``("done", items, compute_ms)`` events of the
    finished batches, in submission order."""

    def __init__(self, sessions, write):
        self.write = write
        self.sessions = sessions
        self.free = queue.SimpleQueue()
        for session in sessions:
            self.free.put(session)
        self.pool = ThreadPoolExecutor(len(sessions), thread_name_prefix="infer") if len(sessions) > 1 else None
        self.in_flight = collections.deque()  # (items, future), oldest first

    def _call(self, batch, items):
        session = self.free.get()
        try:
            return self.write(session, batch, items)
        finally:
            self.free.put(session)

    def submit(self, batch, items):
        if self.pool is None:
            yield "done", items, self.write(self.sessions[0], batch, items)
            return
        self.in_flight.append((items, self.pool.submit(self._call, batch, items)))
        while len(self.in_flight) >= len(self.sessions):
            yield self._oldest()

    def drain(self):
        while self.in_flight:
            yield self._oldest()

    def _oldest(self):
        items, future = self.in_flight.popleft()
        return "done", items, future.result()

    def close(self):
        """Wait for the batches still running (after an error or a closed generator) and stop the threads."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def infer_batch(session, batch, items, out_dir, specs, outfmt, legacy_names):
    """Run one batch (float32 [len(items), 3, H, W], one canvas) and write each image's outputs
    atomically. Dynamic-H/W models also get each image's valid region (``image_sizes``). Returns
    the compute time in ms."""
    image_sizes = None
    if session.dynamic_hw:
        image_sizes = np.array([_resized_hw(item, batch.shape[-2:]) for item in items], np.int64)
    start = time.perf_counter()
    try:
        outputs = session.run(batch, image_sizes) if image_sizes is not None else session.run(batch)
    except Exception as e:  # the runtime's own error types (onnxruntime, OpenVINO)
        first = items[0].source if len(items) == 1 else f"{items[0].source} ... {items[-1].source}"
        raise RetinaMaskError(f"{session.name} failed on the batch of {first}: {' '.join(str(e).split())[:300]}") from e
    elapsed_ms = (time.perf_counter() - start) * 1000.0
    _check_output_shapes(outputs, specs, len(items), session)
    for row, item in enumerate(items):
        write_image_outputs(out_dir, item.basename, [out[row] for out in outputs], specs, outfmt, legacy_names)
    return elapsed_ms


def _resized_hw(item, canvas_hw):
    """(h, w) of the resized image, the valid region of its canvas (the whole canvas when the record lacks it)."""
    record = item.record
    if record.get("resized_height") and record.get("resized_width"):
        return (int(record["resized_height"]), int(record["resized_width"]))
    return tuple(int(v) for v in canvas_hw)


def _check_output_shapes(outputs, specs, rows, session):
    if len(outputs) != len(specs):
        raise RetinaMaskError(f"{session.name}: the model returned {len(outputs)} outputs, the contract has 4")
    for out, spec in zip(outputs, specs):
        if tuple(out.shape) != (rows, *spec.shape):
            raise RetinaMaskError(
                f"{session.name}: output {spec.index} ({spec.name}) came back {list(out.shape)}, "
                f"the model's contract says [{rows}, {', '.join(map(str, spec.shape))}]"
            )

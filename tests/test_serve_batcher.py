"""The serving core's batcher on its own: batches group one canvas, hold at most max_batch, wait at most
batch_wait; a full queue refuses; a failing run fails only its own items; draining finishes everything."""

import threading
import time

import numpy as np
import pytest

from retinamask.serve.batcher import Batcher, Draining, QueueFull


class Recorder:
    """A runner that records each batch (the prepared values) and answers value * 10, after ``delay``."""

    def __init__(self, delay=0.0, gate=None):
        self.batches, self.delay, self.gate = [], delay, gate

    def __call__(self, prepared):
        if self.gate is not None:
            self.gate.wait(10)
        time.sleep(self.delay)
        self.batches.append(list(prepared))
        return [value * 10 for value in prepared]


def _tensor(i):
    """A canvas tensor as the server queues them: [3, H, W], H x W by the parity of i, filled with i."""
    side = 8 if i % 2 else 4
    return np.full((3, side, side), i, np.float32)


def test_batches_hold_one_canvas_and_at_most_max_batch():
    gate = threading.Event()
    runner = Recorder(gate=gate)
    batcher = Batcher([runner], max_batch=3, batch_wait_s=0.2, max_queue=16)
    try:
        first = batcher.submit(_tensor(1), (8, 8))  # taken at once; its run waits for the gate
        time.sleep(0.1)
        items = [batcher.submit(_tensor(i), _tensor(i).shape[1:]) for i in range(2, 10)]  # canvases interleaved
        gate.set()
        answers = [float(item.future.result(10)[0, 0, 0]) for item in [first, *items]]
        assert answers == [v * 10.0 for v in range(1, 10)]
    finally:
        batcher.drain(10)
        batcher.close()
    batches = [[int(t[0, 0, 0]) for t in batch] for batch in runner.batches]
    assert all(len(batch) <= 3 for batch in batches)
    assert all(len({v % 2 for v in batch}) == 1 for batch in batches), batches  # one canvas per batch
    assert sorted(v for batch in batches for v in batch) == list(range(1, 10))
    assert max(len(batch) for batch in batches) == 3  # the waiting items did share batches


def test_a_full_queue_refuses_and_draining_refuses_new_work():
    gate = threading.Event()
    batcher = Batcher([Recorder(gate=gate)], max_batch=1, max_queue=2)
    try:
        running = batcher.submit(0, (1, 1))
        time.sleep(0.1)  # taken by the worker: the queue is empty again
        waiting = [batcher.submit(i, (1, 1)) for i in (1, 2)]
        with pytest.raises(QueueFull, match="--max-queue 2"):
            batcher.submit(3, (1, 1))
        gate.set()
        assert batcher.drain(10)
        assert [item.future.result(1) for item in [running, *waiting]] == [0, 10, 20]
        with pytest.raises(Draining):
            batcher.submit(4, (1, 1))
    finally:
        batcher.close()


def test_a_failing_run_fails_its_items_and_the_worker_goes_on():
    calls = []

    def flaky(prepared):
        calls.append(list(prepared))
        if prepared[0] == "bad":
            raise RuntimeError("the runtime broke")
        return [value.upper() for value in prepared]

    batcher = Batcher([flaky], max_batch=1)
    try:
        bad = batcher.submit("bad", (1, 1))
        with pytest.raises(RuntimeError, match="the runtime broke"):
            bad.future.result(10)
        assert batcher.submit("good", (1, 1)).future.result(10) == "GOOD"
    finally:
        batcher.close()


def test_an_item_cancelled_while_waiting_is_never_run():
    gate = threading.Event()
    runner = Recorder(gate=gate)
    batcher = Batcher([runner], max_batch=1)
    try:
        batcher.submit(0, (1, 1))
        time.sleep(0.1)
        given_up = batcher.submit(1, (1, 1))
        assert given_up.future.cancel()  # its caller timed out
        kept = batcher.submit(2, (1, 1))
        gate.set()
        assert kept.future.result(10) == 20
    finally:
        batcher.drain(10)
        batcher.close()
    assert [1] not in runner.batches

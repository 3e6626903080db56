"""infer with several sessions (``--sessions N``): N batches at once, the same bytes and records as one
session, events in the order the batches were formed, errors that still stop the run, and the rule
that splits the cores."""

import json
import threading
import time

import pytest

from retinamask.cli import main
from retinamask.core.errors import InputError, RetinaMaskError
from retinamask.runtime import backends
from retinamask.runtime.auto_backend import dataset_sessions
from retinamask.runtime.infer import run_inference
from retinamask.runtime.infer_batches import _BatchRunner
from test_runtime_fakes import BOX_IMAGES, build_fake_model, make_box_dataset


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return make_box_dataset(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("model") / "m.onnx", layout="end2end", canvas_side=96)


def test_two_sessions_write_what_one_writes(tmp_path, dataset, model_path):
    image_dir, _, _ = dataset
    one = run_inference(model_path, image_dir, tmp_path, "one", batch_size=2, sessions=1, progress=False)
    two = run_inference(model_path, image_dir, tmp_path, "two", batch_size=2, sessions=2, progress=False)
    assert one["count"] == two["count"] == len(BOX_IMAGES) and two["failed"] == []
    assert two["session"] == f"{one['session']} x2"
    files = sorted(path.name for path in (tmp_path / "one").glob("*.bin"))
    assert files and files == sorted(path.name for path in (tmp_path / "two").glob("*.bin"))
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    records = [json.loads((tmp_path / run / "images.json").read_text())["images"] for run in ("one", "two")]
    assert records[0] == records[1]  # same records, same (input) order
    # 5 images in batches of 2: 3 model calls, each timed
    assert len(two["NPU_compute_time"]) == 5 and two["NPU_compute_time"]["max"] > 0


class _SlowFirst:
    """A write function whose first batch takes longest, recording how many batches run at once."""

    def __init__(self):
        self.lock = threading.Lock()
        self.running = self.most = 0
        self.sessions_used = set()

    def __call__(self, session, batch, items):
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
            self.sessions_used.add(session)
        time.sleep(0.3 if batch == 0 else 0.02)
        with self.lock:
            self.running -= 1
        if batch == "bad":
            raise RetinaMaskError("the model failed")
        return float(batch)


def _run(runner, batches):
    events = []
    try:
        for batch in batches:
            events.extend(runner.submit(batch, [f"item{batch}"]))
        events.extend(runner.drain())
    finally:
        runner.close()
    return events


def test_batches_run_at_once_and_come_back_in_order():
    write = _SlowFirst()
    events = _run(_BatchRunner(["s1", "s2"], write), range(6))
    assert [event[2] for event in events] == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert [event[1] for event in events] == [[f"item{i}"] for i in range(6)]
    assert write.most == 2 and write.sessions_used == {"s1", "s2"}  # never more than one batch per session

    alone = _SlowFirst()
    assert [event[2] for event in _run(_BatchRunner(["s1"], alone), range(3))] == [0.0, 1.0, 2.0]
    assert alone.most == 1


def test_a_failed_batch_stops_the_run_with_its_error():
    runner = _BatchRunner(["s1", "s2"], _SlowFirst())
    with pytest.raises(RetinaMaskError, match="the model failed"):
        _run(runner, [1, "bad", 2, 3])


def test_the_cores_are_divided_among_the_sessions():
    # the default: 2 sessions where there are 2 cores (measured), and it says so
    assert dataset_sessions("cpu", None, None, cores=2)[:2] == (2, 1)
    assert "2 sessions x 1 thread (the dataset default" in dataset_sessions("cpu", None, None, cores=2)[2]
    assert dataset_sessions("cpu", None, None, cores=8)[:2] == (2, 4)
    assert dataset_sessions("cpu", None, None, cores=1) == (1, 1, None)
    assert dataset_sessions("cpu", None, 2, cores=2) == (1, 2, None)  # --threads alone: one session of them
    assert dataset_sessions("cuda", None, None, cores=2) == (1, 2, None)
    assert dataset_sessions("cpu", 1, None, cores=2) == (1, 2, None)
    assert dataset_sessions("cpu", 2, None, cores=2) == (2, 1, "2 sessions x 1 thread")
    assert dataset_sessions("cpu", 3, None, cores=16)[:2] == (3, 5)
    assert dataset_sessions("cpu", 2, 4, cores=2)[:2] == (2, 4)  # --threads is per session
    assert dataset_sessions("cuda", 2, None, cores=2) == (1, 2, "1 session: --device cuda runs one, not --sessions 2")
    with pytest.raises(InputError, match="--sessions must be >= 1, got 0"):
        dataset_sessions("cpu", 0, None)


def test_cli_passes_sessions_and_the_performance_hint(tmp_path, dataset, model_path, monkeypatch):
    image_dir, _, _ = dataset
    asked = []
    create = backends.create_session

    def recording(*args, **kwargs):
        asked.append((kwargs["threads"], kwargs["performance_hint"], kwargs.get("streams", 1)))
        return create(*args, **kwargs)

    monkeypatch.setattr(backends, "create_session", recording)
    argv = ["infer", "--model", str(model_path), "--input", str(image_dir), "--output", str(tmp_path)]
    flags = ["--sessions", "2", "--threads", "1", "--performance-hint", "THROUGHPUT", "--no-progress"]
    assert main([*argv, "--output-dirname", "r", *flags]) == 0
    # ONNX Runtime: two sessions; OpenVINO: one compile with two streams (and a replica)
    assert asked[0] == (1, "THROUGHPUT", 2) and set(asked[1:]) <= {(1, "THROUGHPUT", 1)}
    summary = json.loads((tmp_path / "r_summary.json").read_text())
    assert summary["session"].endswith(" x2"), summary["session"]
    assert main([*argv, "--output-dirname", "bad", "--sessions", "0", "--no-progress"]) == 2

"""Two OpenVINO sessions of one model run from two threads from the start of a fresh process, as
``infer --sessions 2`` and ``serve`` run them, never hang. Before the numpy-bridge set-up in
``create_openvino_session`` the same loop hung in about one process in eighteen (pybind11's one-time
numpy API lookup, first used by both threads at once), so this runs ten fresh processes (~17 s)."""

import subprocess
import sys
import textwrap

import pytest

from test_runtime_fakes import build_fake_model

SCRIPT = textwrap.dedent(
    """
    import sys, threading
    import numpy as np
    from retinamask.runtime.backends import create_sessions

    sessions = create_sessions(sys.argv[1], 2, "openvino", "cpu", threads=1)

    def work(session):
        for _ in range(1500):
            session.run(np.random.rand(2, 3, 64, 64).astype(np.float32))  # a new array each time, as infer's

    runners = [threading.Thread(target=work, args=(s,), daemon=True) for s in sessions]
    for runner in runners:
        runner.start()
    while any(r.is_alive() for r in runners):  # short-lived threads meanwhile, as infer's pools make
        t = threading.Thread(target=lambda: None)
        t.start()
        t.join()
    print("done")
    """
)


def test_two_sessions_in_two_threads_from_a_fresh_process_never_hang(tmp_path):
    pytest.importorskip("openvino")
    model = build_fake_model(tmp_path / "m.onnx", layout="end2end", canvas_side=64)
    for attempt in range(10):
        try:
            done = subprocess.run(
                [sys.executable, "-c", SCRIPT, str(model)], capture_output=True, text=True, timeout=120
            )
        except subprocess.TimeoutExpired:
            pytest.fail(f"process {attempt + 1} of 10 hung")
        assert done.returncode == 0 and done.stdout.strip() == "done", done.stderr[-2000:]

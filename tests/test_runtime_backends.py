"""Sessions: ONNX Runtime and OpenVINO give the same outputs (f32), fixed batches are padded,
and a missing accelerator is an error rather than a silent CPU run."""

import numpy as np
import pytest

from retinamask.data.transforms import seed_preprocess
from retinamask.runtime.backends import (
    BackendUnavailable,
    candidate_configurations,
    create_session,
    create_sessions,
    physical_cores,
)
from test_runtime_fakes import BOX_IMAGES, MEAN, box_image, build_fake_model


def _batch(count, size=96):
    tensors = [
        seed_preprocess(box_image(*BOX_IMAGES[i % len(BOX_IMAGES)], seed=i), size, MEAN)[0] for i in range(count)
    ]
    return np.stack(tensors)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    return build_fake_model(tmp_path_factory.mktemp("model") / "m.onnx", layout="end2end", canvas_side=96)


def test_onnxruntime_cpu_runs_a_batch(model_path):
    session = create_session(model_path, "onnxruntime", "cpu", threads=1)
    assert session.name == "onnxruntime-cpu-fp32" and session.providers == ("CPUExecutionProvider",)
    outputs = session.run(_batch(3))
    assert [o.shape for o in outputs] == [(3, 10, 4), (3, 10), (3, 10), (3, 10, 1, 28, 28)]
    assert outputs[1].dtype == np.int32


def test_physical_cores_is_positive():
    assert physical_cores() >= 1


def test_openvino_f32_matches_onnxruntime(model_path):
    pytest.importorskip("openvino")
    batch = _batch(4)
    reference = create_session(model_path, "onnxruntime", "cpu").run(batch)
    session = create_session(model_path, "openvino", "cpu", precision="fp32")
    assert session.name == "openvino-cpu-fp32" and session.applied_precision == "f32"
    outputs = session.run(batch)
    for ours, theirs in zip(outputs, reference):
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(ours, theirs, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_sessions_run_at_once_and_agree(model_path, backend):
    """create_sessions: ONNX Runtime makes independent sessions; OpenVINO one compile with N streams and a
    replica per session (its own infer request); run from N threads at once, each gives one session's outputs."""
    from concurrent.futures import ThreadPoolExecutor

    if backend == "openvino":
        pytest.importorskip("openvino")
    batches = [_batch(2), _batch(3)]
    reference = [create_session(model_path, backend, "cpu", threads=1).run(b) for b in batches]
    sessions = create_sessions(model_path, 2, backend, "cpu", threads=1)
    assert len(sessions) == 2 and all(s.backend == backend for s in sessions)
    if backend == "openvino":
        first, twin = sessions
        assert twin.compiled is first.compiled and twin.request is not first.request
        assert first.compiled.get_property("NUM_STREAMS") == 2
        assert first.compiled.get_property("INFERENCE_NUM_THREADS") == 2  # threads per stream x streams
    else:
        assert sessions[0] is not sessions[1]
    with ThreadPoolExecutor(2) as pool:
        for _ in range(3):
            results = list(pool.map(lambda pair: pair[0].run(pair[1]), zip(sessions, batches)))
            for ours, theirs in zip(results, reference):
                for a, b in zip(ours, theirs):
                    np.testing.assert_array_equal(a, b)


def test_openvino_bf16_when_the_cpu_has_it(model_path):
    pytest.importorskip("openvino")
    from retinamask.runtime.backends import openvino_capabilities

    if "BF16" not in openvino_capabilities():
        with pytest.raises(BackendUnavailable, match="cannot run bf16"):
            create_session(model_path, "openvino", "cpu", precision="bf16")
        return
    session = create_session(model_path, "openvino", "cpu", precision="bf16")
    assert session.applied_precision == "bf16"
    assert session.run(_batch(1))[0].shape == (1, 10, 4)


def test_fixed_batch_pads_and_drops_rows(tmp_path):
    path = build_fake_model(tmp_path / "fixed.onnx", batch=2)
    session = create_session(path, "onnxruntime", "cpu")
    assert session.batch_size == 2
    batch = _batch(3)
    outputs = session.run(batch)  # chunks of 2: [0,1] and [2 + one padding row]
    assert outputs[0].shape == (3, 10, 4)
    single = [session.run(batch[i : i + 1]) for i in range(3)]
    for index in range(4):
        np.testing.assert_array_equal(outputs[index], np.concatenate([s[index] for s in single]))


def test_wrong_input_shape_is_refused(model_path):
    session = create_session(model_path, "onnxruntime", "cpu")
    with pytest.raises(ValueError, match=r"\[B, 3, 96, 96\]"):
        session.run(np.zeros((1, 3, 64, 64), np.float32))


def test_missing_gpu_provider_is_reported(model_path):
    import onnxruntime

    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed here")
    with pytest.raises(BackendUnavailable) as e:
        create_session(model_path, "onnxruntime", "cuda")
    assert "CUDAExecutionProvider" in e.value.cause and "onnxruntime-gpu" in e.value.cause
    with pytest.raises(BackendUnavailable, match="TensorrtExecutionProvider"):
        create_session(model_path, "onnxruntime", "tensorrt")


def test_unsupported_combinations(model_path):
    with pytest.raises(BackendUnavailable, match="--backend openvino"):
        create_session(model_path, "onnxruntime", "cpu", precision="bf16")
    with pytest.raises(BackendUnavailable, match="--device cpu"):
        create_session(model_path, "openvino", "cuda")
    with pytest.raises(BackendUnavailable, match="precision must be one of"):
        create_session(model_path, "onnxruntime", "cpu", precision="int3")


def test_caches(model_path, tmp_path):
    cache = tmp_path / "cache"
    first = create_session(model_path, "onnxruntime", "cpu", cache_dir=cache)
    cached = list(cache.glob("*.ort.onnx"))
    assert len(cached) == 1 and not list(cache.glob(".*tmp"))
    second = create_session(model_path, "onnxruntime", "cpu", cache_dir=cache)  # loads the optimized graph
    batch = _batch(2)
    for a, b in zip(first.run(batch), second.run(batch)):
        np.testing.assert_array_equal(a, b)
    pytest.importorskip("openvino")
    ov_session = create_session(model_path, "openvino", "cpu", cache_dir=cache / "ov")
    assert ov_session.run(batch)[0].shape == (2, 10, 4)
    assert any((cache / "ov").iterdir())


def test_candidate_configurations_lists_cpu_first():
    rows = candidate_configurations()
    assert rows[0] == ("onnxruntime", "cpu", "fp32", None)
    assert {(r[0], r[1]) for r in rows} >= {("onnxruntime", "cuda"), ("onnxruntime", "tensorrt")}

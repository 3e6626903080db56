"""--backend auto: the rule per CPU class, precision and device, its fall-backs, and that a
session made with it runs what the rule names (and says why)."""

import logging

import pytest

from retinamask.runtime.auto_backend import choose_backend, cpu_class, describe_cpu
from retinamask.runtime.backends import create_session
from test_runtime_fakes import build_fake_model

CLASS_A = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
CLASS_B = {"sse4_2", "avx2", "fma"}
BOTH = ("onnxruntime", "openvino")


def test_cpu_classes_from_flags():
    assert cpu_class(CLASS_A) == "A" and cpu_class(CLASS_B) == "B" and cpu_class({"sse2"}) == "?"
    assert cpu_class({"avx2", "avx512f"}) == "B"  # AVX-512 without VNNI: the AVX2 INT8 path, not class A
    assert describe_cpu(CLASS_B) == "class B (avx2 only)"
    assert "avx512_vnni" in describe_cpu(CLASS_A)


@pytest.mark.parametrize(
    "flags, quantized, expected",
    [
        (CLASS_A, False, "openvino"),
        (CLASS_A, True, "openvino"),
        (CLASS_B, False, "onnxruntime"),
        (CLASS_B, True, "onnxruntime"),
        ({"sse2"}, False, "onnxruntime"),
    ],
)
def test_fastest_cpu_runtime_per_class(flags, quantized, expected):
    choice = choose_backend("fp32", "cpu", quantized=quantized, flags=flags, installed=BOTH)
    assert choice.backend == expected
    assert choice.reason  # one line says why


def test_precision_and_device_decide_before_speed():
    assert choose_backend("bf16", "cpu", flags=CLASS_B, installed=BOTH).backend == "openvino"
    assert choose_backend("fp16", "cpu", flags=CLASS_A, installed=BOTH).backend == "openvino"
    for device in ("cuda", "tensorrt"):
        assert choose_backend("fp32", device, flags=CLASS_A, installed=BOTH).backend == "onnxruntime"


def test_a_faster_runtime_that_is_not_installed_is_named_not_used():
    choice = choose_backend("fp32", "cpu", flags=CLASS_A, installed=("onnxruntime",))
    assert (
        choice.backend == "onnxruntime" and "openvino is faster" in choice.reason and "not installed" in choice.reason
    )


def test_auto_session_runs_the_chosen_runtime_and_logs_why(tmp_path, caplog):
    model = build_fake_model(tmp_path / "m.onnx", input_size=64)
    expected = choose_backend("fp32", "cpu")
    with caplog.at_level(logging.INFO, logger="retinamask.runtime.backends"):
        session = create_session(model)  # backend="auto" is the default
    assert session.backend == expected.backend and session.precision == "fp32"
    assert session.choice == expected
    assert [r.getMessage() for r in caplog.records] == [expected.line("fp32", "cpu")]
    explicit = create_session(model, "onnxruntime")
    assert explicit.backend == "onnxruntime" and explicit.choice is None

"""--backend auto: the rule per CPU class, precision and device, its fall-backs, and that a
session made with it runs what the rule names (and says why)."""

import logging

import pytest

from retinamask.core.cpu import CLASS_RULES, CpuInfo, cpu_class, describe_cpu_class, measured_class, read_cpu_info
from retinamask.runtime import backends
from retinamask.runtime.auto_backend import choose_backend, faster_precision_offer, reduced_precision_note
from retinamask.runtime.backends import create_session
from test_runtime_fakes import build_fake_model

ZEN4_FLAGS = {"sse4_2", "avx2", "avx512f", "avx512_vnni", "avx512_bf16"}
CLASS_A = CpuInfo.from_flags(ZEN4_FLAGS, "AuthenticAMD", "AMD EPYC", 25)
CLASS_B = CpuInfo.from_flags({"sse4_2", "avx2", "fma"}, "AuthenticAMD", "AMD EPYC")
NO_AVX2 = CpuInfo.from_flags({"sse2"})
BOTH = ("onnxruntime", "openvino")


XEON = CpuInfo.from_flags(
    {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni"}, "GenuineIntel", "Intel(R) Xeon(R)"
)


def test_cpu_classes_from_vendor_and_flags():
    assert cpu_class(CLASS_A) == "A" and cpu_class(CLASS_B) == "B" and cpu_class(NO_AVX2) == "?"
    assert cpu_class(XEON) == "C"  # bf16 and fp16, no AMX: the class where bf16 is measured slower
    amx = CpuInfo.from_flags(XEON.flags | {"amx_tile", "amx_bf16", "amx_int8"}, "GenuineIntel")
    assert cpu_class(amx) == "D" and measured_class(amx) == "D"  # AMX bf16 + int8: measured (issue 30)
    # fp16 tiles too (Granite Rapids): another kind of speed, unmeasured, class D's figures stand in
    amx_fp16 = CpuInfo.from_flags(amx.flags | {"amx_fp16"}, "GenuineIntel")
    assert cpu_class(amx_fp16) == "G" and measured_class(amx_fp16) == "D"
    # AVX-512 + VNNI without bf16 (or of another vendor): unmeasured, class A's figures stand in
    other = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"}, "GenuineIntel")
    assert cpu_class(other) == "E" and measured_class(other) == "A"
    # AVX-512 without VNNI, unknown vendor: the AVX2 rules, unmeasured
    assert cpu_class(CpuInfo.from_flags({"avx2", "avx512f"})) == "F"
    assert [rule.name for rule in CLASS_RULES if rule.measured] == ["D", "C", "A", "B"]
    assert describe_cpu_class(CLASS_B) == "class B (avx2 only)"
    assert describe_cpu_class(CLASS_A) == "class A (AMD family 25, avx2 avx512f avx512_vnni avx512_bf16)"
    assert describe_cpu_class(XEON) == "class C (Intel, avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16, no amx)"
    assert describe_cpu_class(other) == "class E (Intel, avx2 avx512f avx512_vnni; unmeasured, as class A)"
    assert describe_cpu_class(amx) == ("class D (Intel, avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16)")
    assert describe_cpu_class(amx_fp16).endswith("amx_bf16 amx_fp16; unmeasured, as class D)")
    assert describe_cpu_class(NO_AVX2) == "class ? (no avx2)"


def test_amd_classes_follow_the_measured_microarchitecture_families():
    # Zen 4 (family 25) and Zen 5 (family 26) are both measured bf16-fast; another family is not
    zen5 = CpuInfo.from_flags(CLASS_A.flags | {"avx512_vp2intersect"}, "AuthenticAMD", "AMD EPYC", 26)
    assert cpu_class(zen5) == "A" and "unmeasured" not in describe_cpu_class(zen5)
    for family in (27, None):
        later = CpuInfo.from_flags(CLASS_A.flags, "AuthenticAMD", "AMD EPYC", family)
        assert cpu_class(later) == "E" and measured_class(later) == "A"
        assert "not measured" in reduced_precision_note("bf16", later)
    assert reduced_precision_note("bf16", zen5) == reduced_precision_note("bf16", CLASS_A)


CPUINFO_XEON = """processor\t: 0
vendor_id\t: GenuineIntel
cpu family\t: 6
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 avx_vnni
vmx flags\t: vnmi

processor\t: 1
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 avx_vnni
"""


def test_cpu_info_reads_vendor_model_and_the_flags_that_decide_speed(tmp_path):
    path = tmp_path / "cpuinfo"
    path.write_text(CPUINFO_XEON)
    info = read_cpu_info(path)
    assert (info.vendor, info.model_name, info.family) == ("GenuineIntel", "Intel(R) Xeon(R) Processor", 6)
    assert info.speed_flags == ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16")
    assert info.avx512 and info.vnni and info.avx512_bf16 and info.avx512_fp16 and not info.amx
    assert "vnmi" not in info.flags  # "vmx flags" is another line
    assert cpu_class(info) == "C"
    assert read_cpu_info(tmp_path / "missing") == CpuInfo() and cpu_class(CpuInfo()) == "?"


@pytest.mark.parametrize(
    "cpu, quantized, expected",
    [
        (CLASS_A, False, "openvino"),
        (CLASS_A, True, "openvino"),
        (CLASS_B, False, "onnxruntime"),
        (CLASS_B, True, "onnxruntime"),
        (NO_AVX2, False, "onnxruntime"),
        (XEON, False, "openvino"),  # ONNX Runtime unmeasured there: class A's comparison stands in
        (CpuInfo.from_flags({"avx2", "fma"}, "GenuineIntel"), False, "onnxruntime"),  # class F, as B
    ],
)
def test_fastest_cpu_runtime_per_class(cpu, quantized, expected):
    choice = choose_backend("fp32", "cpu", quantized=quantized, cpu=cpu, installed=BOTH)
    assert choice.backend == expected
    assert choice.reason  # one line says why


def test_unmeasured_or_stand_in_choices_say_so():
    assert (
        "unmeasured on class F"
        in choose_backend("fp32", "cpu", cpu=CpuInfo.from_flags({"avx2"}), installed=BOTH).reason
    )
    assert "as on class A" in choose_backend("fp32", "cpu", cpu=XEON, installed=BOTH).reason
    measured = choose_backend("fp32", "cpu", cpu=CLASS_A, installed=BOTH)
    assert measured.reason.startswith("fastest on class A") and "unmeasured" not in measured.reason


def test_an_unmeasured_class_runs_what_its_stand_in_runs_and_the_line_says_so():
    # class G (AMX with fp16 tiles) stands in as class D, measured with both runtimes: G runs what D runs,
    # ONNX Runtime for fp32 and OpenVINO for INT8, and the line says it is unmeasured and whose figures stand in
    amx_fp16 = CpuInfo.from_flags(XEON.flags | {"amx_tile", "amx_bf16", "amx_fp16"}, "GenuineIntel")
    for quantized, expected in ((False, "onnxruntime"), (True, "openvino")):
        choice = choose_backend("fp32", "cpu", quantized=quantized, cpu=amx_fp16, installed=BOTH)
        assert choice.backend == expected
    reason = choose_backend("fp32", "cpu", cpu=amx_fp16, installed=BOTH).reason
    assert reason.startswith("unmeasured on class G (") and "unmeasured, as class D" in reason
    assert "; as on class D: ONNX Runtime fp32 3.15 s vs OpenVINO 3.20 s" in reason
    assert "portable default" not in reason


def test_amx_runs_int8_on_openvino_and_fp32_on_onnx_runtime_as_measured():
    # issue 30: on the AMX Xeon, OpenVINO INT8 0.394 s vs ONNX Runtime 1.051 s; fp32 within 2 %, ONNX Runtime ahead
    amx = CpuInfo.from_flags(XEON.flags | {"amx_tile", "amx_bf16", "amx_int8"}, "GenuineIntel")
    int8 = choose_backend("fp32", "cpu", quantized=True, cpu=amx, installed=BOTH)
    assert int8.backend == "openvino" and int8.reason.startswith("fastest on class D")
    assert "OpenVINO INT8 0.39 s vs ONNX Runtime 1.05 s" in int8.reason and "unmeasured" not in int8.reason
    assert choose_backend("fp32", "cpu", cpu=amx, installed=BOTH).backend == "onnxruntime"
    assert choose_backend("bf16", "cpu", cpu=amx, installed=BOTH).backend == "openvino"


def test_reduced_precision_notes_per_class():
    # bf16 on the Intel class: measured slower than fp32, one line says so
    note = reduced_precision_note("bf16", XEON)
    assert "measured 1.85x slower than fp32 on this CPU class" in note and "\n" not in note
    faster = reduced_precision_note("bf16", CLASS_A)  # measured faster there, at a known segm cost
    assert "1.96x faster" in faster and "0.016 segm mAP" in faster and "slower" not in faster
    assert reduced_precision_note("fp32", XEON) is None
    assert "not measured" in reduced_precision_note("fp16", XEON)
    assert "not measured" in reduced_precision_note("bf16", CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni"}))


def test_precision_and_device_decide_before_speed():
    assert choose_backend("bf16", "cpu", cpu=CLASS_B, installed=BOTH).backend == "openvino"
    assert choose_backend("fp16", "cpu", cpu=CLASS_A, installed=BOTH).backend == "openvino"
    for device in ("cuda", "tensorrt"):
        assert choose_backend("fp32", device, cpu=CLASS_A, installed=BOTH).backend == "onnxruntime"


def test_a_faster_runtime_that_is_not_installed_is_named_not_used():
    choice = choose_backend("fp32", "cpu", cpu=CLASS_A, installed=("onnxruntime",))
    assert (
        choice.backend == "onnxruntime" and "openvino is faster" in choice.reason and "not installed" in choice.reason
    )


def test_auto_session_runs_the_chosen_runtime_and_logs_why(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(backends, "_ADVISED", set())  # as a new process: the precision line not said yet
    model = build_fake_model(tmp_path / "m.onnx", canvas_side=64)
    expected = choose_backend("fp32", "cpu")
    offer = faster_precision_offer()  # this CPU's: a faster precision measured on its class, or None
    with caplog.at_level(logging.INFO, logger="retinamask.runtime.backends"):
        session = create_session(model)  # backend="auto" is the default
    assert session.backend == expected.backend and session.precision == "fp32"
    assert session.choice == expected
    assert [r.getMessage() for r in caplog.records] == [expected.line("fp32", "cpu")] + ([offer] if offer else [])
    explicit = create_session(model, "onnxruntime")
    assert explicit.backend == "onnxruntime" and explicit.choice is None

"""The fast precision offered in one line, never taken silently (issue 30): at fp32 on a CPU class where a
reduced precision is measured at least 1.5x faster, `infer`, `predict --model`, `bench` and `serve` say
which, how much faster, what it costs and the flag; ``--precision fastest`` takes the fastest one within
the segm budget and says which. The CPU is faked (``core.cpu.this_cpu``) as each measured class."""

import logging

import pytest

from retinamask.cli import main
from retinamask.core import cpu as cpu_module
from retinamask.core.cpu import CpuInfo
from retinamask.runtime import auto_backend, backends
from retinamask.runtime.auto_backend import (
    choose_precision,
    faster_precision_offer,
    reduced_precision_note,
)
from retinamask.runtime.backends import create_session, create_sessions
from retinamask.serve.model import ServedModel
from retinamask.serve.settings import ServeSettings
from test_runtime_fakes import build_fake_model, make_box_dataset

XEON_FLAGS = {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "avx_vnni"}
# the AMX Xeon of ../shared/facts/cpu-classes.md (family 6, model 167): amx bf16 + int8, no amx_fp16
AMX = CpuInfo.from_flags(XEON_FLAGS | {"amx_tile", "amx_bf16", "amx_int8"}, "GenuineIntel", "Intel(R) Xeon(R)", 6)
AMX_FP16 = CpuInfo.from_flags(AMX.flags | {"amx_fp16"}, "GenuineIntel", "Intel(R) Xeon(R)", 6)
ZEN4 = CpuInfo.from_flags({"avx2", "avx512f", "avx512_vnni", "avx512_bf16"}, "AuthenticAMD", "AMD EPYC", 25)
XEON = CpuInfo.from_flags(XEON_FLAGS, "GenuineIntel", "Intel(R) Xeon(R)", 6)
AVX2 = CpuInfo.from_flags({"avx2"}, "AuthenticAMD", "AMD EPYC", 23)
BOTH = ("onnxruntime", "openvino")


def test_an_fp32_run_is_offered_the_precision_measured_much_faster_on_its_class():
    offer = faster_precision_offer(AMX, installed=BOTH)
    # 3141 / 644 ms: 4.9x; the shipped model keeps its boxes and loses 0.012 segm mAP
    assert offer.startswith("fp32 here; bf16 is measured 4.9x faster on CPU class D") and "\n" not in offer
    assert "0.012 segm mAP" in offer and "--precision bf16 takes it" in offer and "--precision fastest" in offer
    assert "fp16" not in offer.split("(")[0]  # fp16 is slower there: never offered
    zen4 = faster_precision_offer(ZEN4, installed=BOTH)  # class A: bf16 1.96x at 0.016 segm
    assert "bf16 is measured 2.0x faster" in zen4 and "0.016 segm mAP" in zen4
    # measured slower (C), not measured (G: AMX with fp16 tiles, AVX2 classes): nothing offered
    for cpu in (XEON, AMX_FP16, AVX2, CpuInfo()):
        assert faster_precision_offer(cpu, installed=BOTH) is None, cpu
    assert "pip install 'retinamask[openvino]'" in faster_precision_offer(AMX, installed=("onnxruntime",))


def test_the_offer_needs_a_speedup_of_one_and_a_half(monkeypatch):
    measured = dict(auto_backend.REDUCED_PRECISION_MEASURED)
    measured["D", "bf16"] = (1 / 1.4, "a slimmer measurement")
    monkeypatch.setattr(auto_backend, "REDUCED_PRECISION_MEASURED", measured)
    assert faster_precision_offer(AMX, installed=BOTH) is None
    assert choose_precision("fastest", cpu=AMX, installed=BOTH).precision == "bf16"  # faster still, if less


def test_fastest_takes_the_fastest_within_the_segm_budget_and_says_which(monkeypatch):
    on_amx = choose_precision("fastest", cpu=AMX, installed=BOTH)
    assert on_amx.precision == "bf16" and "4.9x faster" in on_amx.reason and "-0.012" in on_amx.reason
    assert on_amx.line().startswith("precision fastest -> bf16: ")
    assert choose_precision("fastest", cpu=ZEN4, installed=BOTH).precision == "bf16"
    for cpu in (XEON, AMX_FP16, AVX2):  # slower, or unmeasured: fp32, and why
        choice = choose_precision("Fastest", cpu=cpu, installed=BOTH)
        assert choice.precision == "fp32" and "no reduced precision is measured faster" in choice.reason
    # a budget tighter than bf16's segm cost keeps fp32
    monkeypatch.setattr(auto_backend, "FASTEST_SEGM_BUDGET", 0.01)
    assert choose_precision("fastest", cpu=AMX, installed=BOTH).precision == "fp32"


def test_fastest_keeps_fp32_where_a_reduced_precision_cannot_run():
    assert choose_precision("fastest", "cuda", cpu=AMX, installed=BOTH).precision == "fp32"
    pinned = choose_precision("fastest", backend="onnxruntime", cpu=AMX, installed=BOTH)
    assert pinned.precision == "fp32" and "onnxruntime runs fp32" in pinned.reason
    absent = choose_precision("fastest", cpu=AMX, installed=("onnxruntime",))
    assert absent.precision == "fp32" and "OpenVINO is not installed" in absent.reason
    # a precision by name is itself, normalised, with no line to log
    assert choose_precision("float32", cpu=AMX) == auto_backend.PrecisionChoice("fp32", "")
    with pytest.raises(ValueError, match="precision must be one of"):
        choose_precision("int4", cpu=AMX)


def test_amx_notes_say_measured_never_unmeasured():
    bf16 = reduced_precision_note("bf16", AMX)
    assert "4.88x faster" in bf16 and "0.012 segm mAP" in bf16
    fp16 = reduced_precision_note("fp16", AMX)  # kept available: accurate, but slower without amx_fp16
    assert "1.45x slower than fp32" in fp16 and "--precision fp32 is faster" in fp16
    for note in (bf16, fp16):
        assert "not measured" not in note and "unmeasured" not in note
    assert "not measured" in reduced_precision_note("bf16", AMX_FP16)


@pytest.fixture(autouse=True)
def fresh_process(monkeypatch):
    """Each test as a new process: no precision line said yet (they are said once a process)."""
    monkeypatch.setattr(backends, "_ADVISED", set())


@pytest.fixture
def on_amx(monkeypatch):
    monkeypatch.setattr(cpu_module, "this_cpu", lambda: AMX)


def _offers(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("fp32 here; bf16 is measured")]


def test_the_offer_is_said_once_a_process_not_per_session(tmp_path, caplog, on_amx):
    model = build_fake_model(tmp_path / "m.onnx", canvas_side=64)
    with caplog.at_level(logging.INFO):
        create_session(model, "onnxruntime", advise=False)  # a comparison's sessions: its table says it
        assert _offers(caplog) == []
        sessions = create_sessions(model, 3, "onnxruntime")
        assert len(sessions) == 3 and len(_offers(caplog)) == 1
        create_session(model, "onnxruntime")  # a demo's later steps: said already
    assert len(_offers(caplog)) == 1
    backends._ADVISED.clear()
    caplog.clear()
    with caplog.at_level(logging.INFO):  # serve: a session per worker thread, one line
        served = ServedModel(ServeSettings(model=model, backend="onnxruntime", sessions=2), log=lambda line: None)
    assert len(served.predictors) == 2 and len(_offers(caplog)) == 1


def test_cli_runs_offer_it_in_one_line(tmp_path, caplog, on_amx):
    model = build_fake_model(tmp_path / "m.onnx", canvas_side=64)
    images, _, _ = make_box_dataset(tmp_path / "data")
    image = sorted(images.iterdir())[0]
    runs = {
        "infer": ["infer", "--model", str(model), "--input", str(images), "--output", str(tmp_path / "out")],
        "predict": ["predict", "--input", str(image), "--model", str(model), "--output", str(tmp_path / "pred")],
        "bench": ["bench", "--model", str(model), "--loop", "2", "--warmup", "1"],
    }
    for name, argv in runs.items():
        backends._ADVISED.clear()  # each command a new process
        caplog.clear()
        with caplog.at_level(logging.INFO):
            assert main(argv + ["--backend", "onnxruntime"]) == 0, name
        offers = _offers(caplog)
        assert len(offers) == 1 and "4.9x faster" in offers[0] and "0.012 segm mAP" in offers[0], (name, offers)


def test_fastest_runs_what_it_names_on_this_machine(tmp_path, caplog):
    # no faking: whatever this CPU's class, the session runs the precision the rule names and logs it
    model = build_fake_model(tmp_path / "m.onnx", canvas_side=64)
    expected = choose_precision("fastest")
    with caplog.at_level(logging.INFO):
        session = create_session(model, precision="fastest")
    assert session.precision == expected.precision
    said = [r.getMessage() for r in caplog.records]
    assert expected.line() in said
    assert not any(line.startswith((f"{expected.precision} is measured", "fp32 here; ")) for line in said)  # once


def test_predict_says_precision_is_for_an_exported_model(tmp_path, capsys):
    image = tmp_path / "x.png"
    argv = ["predict", "--input", str(image), "--output", str(tmp_path), "--precision", "bf16"]
    assert main(argv + ["--url", "http://127.0.0.1:9"]) == 2  # the server runs its own precision
    assert "--precision is for --model" in capsys.readouterr().err


def test_a_ray_run_takes_fastest_for_its_nodes_to_decide(tmp_path):
    pytest.importorskip("ray")
    from retinamask.distributed.ray_infer import RayExecutor

    model = build_fake_model(tmp_path / "m.onnx", canvas_side=64)
    executor = RayExecutor(model, threads=1, precision="fastest")  # each actor decides for its node's CPU
    assert executor.precision == "fastest" and executor.name.endswith("-fastest")
    assert RayExecutor(model, threads=1, precision="float32").precision == "fp32"

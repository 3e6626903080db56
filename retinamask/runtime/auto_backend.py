"""``--backend auto``: the fastest installed runtime for this CPU at the requested precision, and
what is known about a reduced precision on this CPU.

The choice is a rule drawn from side-by-side measurements (benchmarks/RESULTS.md, one section per
CPU class of :mod:`retinamask.core.cpu`), not a timing taken at start-up: a start-up race would
cost seconds per command and pick differently from run to run on a busy machine.

Measured, R-50 RetinaMask end2end, batch 1, s / image:

=====================================  ===================================  ==================================
CPU class                              fp32                                 INT8 model
=====================================  ===================================  ==================================
A: AMD Zen 4, AVX-512 + VNNI + bf16    OpenVINO 4.21, ONNX Runtime 4.48     OpenVINO 1.18, ONNX Runtime 1.23
A: AMD Zen 5 (800x1088)                OpenVINO 0.96, ONNX Runtime 1.01     -
B: AMD, AVX2 only                      ONNX Runtime 5.89, OpenVINO 6.19     ONNX Runtime 2.84, OpenVINO 3.09
C: Intel, AVX-512 + bf16 + fp16        OpenVINO 2.94 (ONNX Runtime: -)      OpenVINO 0.44 at 800x1088
=====================================  ===================================  ==================================

(A and B at 1344², C from issue 17.) A class without a measurement of both runtimes (C; the
unmeasured classes D, E, F) runs what is measured faster on its stand-in class, following the
stand-ins to a class with both runtimes measured (D as C, which runs as A: OpenVINO), and the
line says so.

``auto`` never changes the precision: fp32 stays fp32 (OpenVINO is told to run f32 exactly), and
bf16 / fp16 run only when asked for. Asked for on a CPU class where it is measured slower than
fp32, or never measured, one line says so (:func:`reduced_precision_note`).
"""

from dataclasses import dataclass

from retinamask.core.cpu import CLASSES, cpu_class, cpu_class_rule, describe_cpu_class
from retinamask.core.errors import InputError

AUTO = "auto"

# (CPU class, model kind) -> runtime, with the measurement behind it (s / image, R-50, batch 1)
_FASTEST_CPU_RUNTIME = {
    ("A", "fp32"): ("openvino", "OpenVINO fp32 4.21 s vs ONNX Runtime 4.48 s"),
    ("A", "int8"): ("openvino", "OpenVINO INT8 1.18 s vs ONNX Runtime 1.23 s"),
    ("B", "fp32"): ("onnxruntime", "ONNX Runtime fp32 5.89 s vs OpenVINO 6.19 s"),
    ("B", "int8"): ("onnxruntime", "ONNX Runtime INT8 2.84 s vs OpenVINO 3.09 s"),
}
# Measured classes whose runtimes were not both measured: the class whose comparison stands in.
_RUNTIME_STAND_IN = {"C": "A"}

# (CPU class, precision) -> (ratio of its time to fp32's on OpenVINO, the measurement). > 1: slower.
REDUCED_PRECISION_MEASURED = {
    ("A", "bf16"): (
        0.51,
        "OpenVINO bf16 2.14 s vs fp32 4.21 s (R-50 1344², AMD EPYC family 25); 507 vs 955 ms (800x1088, family 26)",
    ),
    ("C", "bf16"): (1.85, "OpenVINO bf16 2633 vs fp32 1412 ms (R-50 800x1088; 5389 vs 2940 ms at 1344²)"),
}

# precision -> what it costs in accuracy, measured on the shipped model (benchmarks/accuracy.py, seed 7)
REDUCED_PRECISION_ACCURACY = {
    "bf16": "on the shipped model it keeps the boxes but loses 0.016 segm mAP (mask edges; benchmarks/RESULTS.md)",
}


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str

    def line(self, precision, device):
        return f"backend auto -> {self.backend} ({device}, {precision}): {self.reason}"


def choose_backend(precision="fp32", device="cpu", quantized=False, cpu=None, installed=None):
    """The runtime ``auto`` stands for, and why.

    precision: the normalised precision asked for ("fp32", "bf16", "fp16"); device: "cpu",
    "cuda" or "tensorrt"; quantized: the model is an INT8 (QDQ) export; cpu: a
    :class:`~retinamask.core.cpu.CpuInfo` (default: this machine's, classed by
    :func:`~retinamask.core.cpu.cpu_class`); installed: the installed runtimes (default: probed).
    """
    installed = _installed_runtimes() if installed is None else tuple(installed)
    if device != "cpu":
        return BackendChoice("onnxruntime", f"only ONNX Runtime runs --device {device}")
    if precision in ("bf16", "fp16"):
        return BackendChoice("openvino", f"only OpenVINO runs {precision} on the CPU")
    kind = "int8" if quantized else "fp32"
    described = describe_cpu_class(cpu)
    klass = cpu_class(cpu)
    rule = CLASSES.get(klass)
    chain = _stand_in_chain(klass)
    source = chain[-1]
    backend, measured = _FASTEST_CPU_RUNTIME.get((source, kind), ("onnxruntime", None))
    if measured is None:
        return BackendChoice("onnxruntime", f"no measurement for this CPU ({described}): the portable default")
    if backend not in installed:
        return BackendChoice("onnxruntime", f"{backend} is faster on {described} ({measured}) but not installed")
    if source != klass:
        what = "unmeasured" if rule.stand_in else "both runtimes not measured"
        via = "".join(f"as on class {name}, " for name in chain[1:-1])
        return BackendChoice(
            backend,
            f"{what} on {described}; {via}as on class {source}: {measured} (R-50 1344², benchmarks/RESULTS.md)",
        )
    return BackendChoice(backend, f"fastest on {described}: {measured} (R-50 1344², benchmarks/RESULTS.md)")


def _stand_in_chain(klass):
    """``klass`` and the classes whose runtime comparison stands in for it, in turn, ending at the one measured:
    D -> C (its stand-in class) -> A (whose comparison stands in for C's unmeasured ONNX Runtime)."""
    chain = [klass]
    while True:
        rule = CLASSES.get(chain[-1])
        if rule is None:
            return chain
        nxt = rule.stand_in or _RUNTIME_STAND_IN.get(rule.name)
        if not nxt or nxt in chain:
            return chain
        chain.append(nxt)


def reduced_precision_note(precision, cpu=None):
    """None, or one line on what is known of ``precision`` (bf16 / fp16) against fp32 on this CPU's
    class: measured slower, never measured, or measured faster at a known accuracy cost. Nothing for
    fp32, or where it is measured faster at no known cost."""
    if precision not in ("bf16", "fp16"):
        return None
    rule = cpu_class_rule(cpu)
    described = describe_cpu_class(cpu)
    klass = rule.name if rule is not None else cpu_class(cpu)
    ratio, measured = REDUCED_PRECISION_MEASURED.get((klass, precision), (None, None))
    if ratio is not None and ratio > 1:
        return (
            f"{precision} is measured {ratio:.2f}x slower than fp32 on this CPU class ({described}: {measured}); "
            "--precision fp32 is faster and exact"
        )
    if ratio is None:
        return (
            f"{precision} is not measured on this CPU class ({described}); it can be slower than fp32 "
            "(1.85x on class C): `retinamask bench --compare` times it here"
        )
    cost = REDUCED_PRECISION_ACCURACY.get(precision)
    if cost is not None:
        return f"{precision} is measured {1 / ratio:.2f}x faster than fp32 on this CPU class ({measured}); {cost}"
    return None


def _installed_runtimes():
    import importlib.util

    return tuple(name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None)


DATASET_SESSIONS = 2  # a dataset run's default sessions on a CPU with 2 cores or more (benchmarks/RESULTS.md)


def dataset_sessions(device="cpu", sessions=None, threads=None, cores=None):
    """(sessions, intra-op threads each, None or one line worth logging) for a dataset run (``infer``).

    sessions: the number asked for (``--sessions``); None: ``DATASET_SESSIONS`` with the cores divided
    among them where there are 2 cores or more (measured by ``benchmarks/infer_levers.py`` on 2 cores:
    2 sessions x 1 thread ran the shipped model 1.24x and R-50 fp32 1.01x as fast as 1 x 2; INT8 models on
    OpenVINO share one stream, ``openvino_streams``), else one; one also when ``threads`` is given alone
    (it is per session). threads: intra-op
    threads per session (``--threads``); None: the cores (``cores``, default: physical cores) divided
    among the sessions. Off the CPU: one session, and the line says so when more were asked for.
    """
    from retinamask.core.cpu import physical_cores

    cores = physical_cores() if cores is None else int(cores)
    if sessions is None:
        chosen = DATASET_SESSIONS if device == "cpu" and threads is None and cores >= DATASET_SESSIONS else 1
    else:
        chosen = int(sessions)
    if chosen < 1:
        raise InputError(f"--sessions must be >= 1, got {sessions}")
    if device != "cpu" and chosen > 1:
        note = f"1 session: --device {device} runs one, not --sessions {sessions}"
        return 1, int(threads) if threads else cores, note
    each = int(threads) if threads else max(1, cores // chosen)
    note = None
    if chosen > 1:
        why = " (the dataset default, measured faster: --sessions 1 for one)" if sessions is None else ""
        note = f"{chosen} sessions x {each} thread{'s' if each > 1 else ''}{why}"
    return chosen, each, note

"""``--backend auto``: the fastest installed runtime for this CPU at the requested precision;
``--precision fastest``: the fastest precision measured here within an accuracy budget; and what is
known about a reduced precision on this CPU, said in one line.

The choices are rules drawn from side-by-side measurements (benchmarks/RESULTS.md, one section per
CPU class of :mod:`retinamask.core.cpu`), not timings taken at start-up: a start-up race would
cost seconds per command and pick differently from run to run on a busy machine.

Measured, R-50 RetinaMask end2end, batch 1, s / image:

=====================================  ===================================  ==================================
CPU class                              fp32                                 INT8 model
=====================================  ===================================  ==================================
A: AMD Zen 4, AVX-512 + VNNI + bf16    OpenVINO 4.21, ONNX Runtime 4.48     OpenVINO 1.18, ONNX Runtime 1.23
A: AMD Zen 5 (800x1088)                OpenVINO 0.96, ONNX Runtime 1.01     -
B: AMD, AVX2 only                      ONNX Runtime 5.89, OpenVINO 6.19     ONNX Runtime 2.84, OpenVINO 3.09
C: Intel, AVX-512 + bf16 + fp16        OpenVINO 2.94 (ONNX Runtime: -)      OpenVINO 0.44 at 800x1088
D: Intel, AMX bf16 + int8              ONNX Runtime 3.15, OpenVINO 3.20     OpenVINO 0.39, ONNX Runtime 1.05
=====================================  ===================================  ==================================

(A, B and D at 1344², C from issue 17, D from issue 30.) A class without a measurement of both
runtimes (C; the unmeasured classes E, F, G) runs what is measured faster on its stand-in class,
following the stand-ins to a class with both runtimes measured (C runs as A: OpenVINO), and the
line says so.

``auto`` never changes the precision: fp32 stays fp32 (OpenVINO is told to run f32 exactly), and
bf16 / fp16 run only when asked for -- by name, or by ``--precision fastest``, which takes the
fastest one measured on this CPU class whose segm mAP cost on the shipped model is within
:data:`FASTEST_SEGM_BUDGET` (:func:`choose_precision`). At fp32 on a class where a reduced precision
is measured at least :data:`OFFER_SPEEDUP` times faster, one line offers it (:func:`faster_precision_offer`);
asked for where it is measured slower than fp32, or never measured, one line says so
(:func:`reduced_precision_note`).
"""

from dataclasses import dataclass

from retinamask.core.cpu import CLASSES, cpu_class, describe_cpu_class
from retinamask.core.errors import InputError
from retinamask.runtime.session import normalize_precision

AUTO = "auto"

# (CPU class, model kind) -> runtime, with the measurement behind it (s / image, R-50, batch 1)
_FASTEST_CPU_RUNTIME = {
    ("A", "fp32"): ("openvino", "OpenVINO fp32 4.21 s vs ONNX Runtime 4.48 s"),
    ("A", "int8"): ("openvino", "OpenVINO INT8 1.18 s vs ONNX Runtime 1.23 s"),
    ("B", "fp32"): ("onnxruntime", "ONNX Runtime fp32 5.89 s vs OpenVINO 6.19 s"),
    ("B", "int8"): ("onnxruntime", "ONNX Runtime INT8 2.84 s vs OpenVINO 3.09 s"),
    ("D", "fp32"): ("onnxruntime", "ONNX Runtime fp32 3.15 s vs OpenVINO 3.20 s"),
    ("D", "int8"): ("openvino", "OpenVINO INT8 0.39 s vs ONNX Runtime 1.05 s"),
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
    ("D", "bf16"): (0.205, "OpenVINO bf16 644 vs fp32 3141 ms (R-50 800x1088, Intel Xeon with AMX, 2026-12-07)"),
    ("D", "fp16"): (1.45, "OpenVINO fp16 4550 vs fp32 3141 ms (R-50 800x1088; no amx_fp16, 2026-12-07)"),
}

# (CPU class, precision) -> segm mAP lost against fp32 on the shipped model (benchmarks/accuracy.py, seed 7);
# the boxes keep their mAP within 0.001 in each
REDUCED_PRECISION_SEGM_COST = {
    ("A", "bf16"): 0.016,
    ("D", "bf16"): 0.012,
    ("D", "fp16"): 0.000,
}
FASTEST_SEGM_BUDGET = 0.02  # --precision fastest: the most segm mAP a faster precision may lose
OFFER_SPEEDUP = 1.5  # at fp32, a reduced precision at least this much faster is offered in one line
FASTEST = "fastest"


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
    G -> D (its stand-in class); C -> A (whose comparison stands in for C's unmeasured ONNX Runtime)."""
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
    klass, described = cpu_class(cpu), describe_cpu_class(cpu)
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
    cost = REDUCED_PRECISION_SEGM_COST.get((klass, precision))
    if cost is not None:
        faster = f"{precision} is measured {1 / ratio:.2f}x faster than fp32 on this CPU class ({measured})"
        return f"{faster}; {_cost(cost)}"
    return None


def _cost(segm):
    return f"on the shipped model it keeps the boxes and loses {segm:.3f} segm mAP (benchmarks/RESULTS.md)"


def _measured_faster(cpu=None, budget=None):
    """[(speed-up over fp32, precision, segm cost)] of the reduced precisions measured faster
    than fp32 on this CPU's own class (never a stand-in's) at a measured accuracy cost (within ``budget``
    when given), fastest first."""
    klass = cpu_class(cpu)
    found = []
    for (row_class, precision), (ratio, _) in REDUCED_PRECISION_MEASURED.items():
        cost = REDUCED_PRECISION_SEGM_COST.get((row_class, precision))
        if row_class == klass and ratio < 1 and cost is not None and (budget is None or cost <= budget):
            found.append((1 / ratio, precision, cost))
    return sorted(found, reverse=True)


def faster_precision_offer(cpu=None, installed=None):
    """None, or the one line an fp32 run on the CPU prints where a reduced precision is measured at least
    :data:`OFFER_SPEEDUP` times faster on this CPU's class: which, how much faster, its accuracy cost, the flag."""
    installed = _installed_runtimes() if installed is None else tuple(installed)
    offers = [row for row in _measured_faster(cpu) if row[0] >= OFFER_SPEEDUP]
    if not offers:
        return None
    speedup, precision, cost = offers[0]
    how = f"--precision {precision}" + ("" if "openvino" in installed else " (pip install 'retinamask[openvino]')")
    return (
        f"fp32 here; {precision} is measured {speedup:.1f}x faster on CPU class {cpu_class(cpu)} (R-50 on OpenVINO, "
        f"benchmarks/RESULTS.md) and loses {cost:.3f} segm mAP on the shipped model (boxes kept): {how} takes it, "
        f"--precision {FASTEST} the fastest within {FASTEST_SEGM_BUDGET} segm mAP"
    )


@dataclass(frozen=True)
class PrecisionChoice:
    precision: str
    reason: str  # "" for a precision asked for by name

    def line(self):
        return f"precision {FASTEST} -> {self.precision}: {self.reason}"


def choose_precision(precision, device="cpu", backend=AUTO, cpu=None, installed=None):
    """The precision to run: ``precision`` itself, normalised ('float32' -> 'fp32'), or for
    ``fastest`` the fastest reduced precision measured on this CPU class within
    :data:`FASTEST_SEGM_BUDGET` segm mAP on the shipped model that ``backend`` runs here, else fp32,
    with the reason. Raises ValueError for an unknown name."""
    if str(precision).lower() != FASTEST:
        return PrecisionChoice(normalize_precision(precision), "")
    installed = _installed_runtimes() if installed is None else tuple(installed)
    if device != "cpu":
        return PrecisionChoice("fp32", f"reduced precisions are measured on the CPU only, not --device {device}")
    if backend not in (AUTO, "openvino") or "openvino" not in installed:
        runtime = "OpenVINO is not installed" if backend in (AUTO, "openvino") else f"{backend} runs fp32 on the CPU"
        return PrecisionChoice("fp32", f"{runtime}; bf16 / fp16 run on OpenVINO")
    faster = _measured_faster(cpu, budget=FASTEST_SEGM_BUDGET)
    if not faster:
        return PrecisionChoice(
            "fp32",
            f"no reduced precision is measured faster within {FASTEST_SEGM_BUDGET} segm mAP on this CPU class "
            f"({describe_cpu_class(cpu)})",
        )
    speedup, chosen, cost = faster[0]
    return PrecisionChoice(
        chosen,
        f"measured {speedup:.1f}x faster than fp32 on {describe_cpu_class(cpu)} (R-50 on OpenVINO, "
        f"benchmarks/RESULTS.md); segm mAP -{cost:.3f} on the shipped model, within the budget of "
        f"{FASTEST_SEGM_BUDGET}",
    )


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

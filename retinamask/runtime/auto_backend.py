"""``--backend auto``: the fastest installed runtime for this CPU at the requested precision.

The choice is a rule drawn from side-by-side measurements (benchmarks/RESULTS.md, one
section per CPU class), not a timing taken at start-up: a start-up race would cost
seconds per command and pick differently from run to run on a busy machine.

Measured, R-50 RetinaMask end2end 1344x1344 batch 1 (``python -m benchmarks.suite``); the CPU
classes are :func:`retinamask.core.cpu.cpu_class`'s:

=========================  ===================================  ====================================
CPU class                  fp32 (s / image)                     INT8 model (s / image)
=========================  ===================================  ====================================
A: AVX-512 + VNNI (+bf16)  OpenVINO 4.21, ONNX Runtime 4.48     OpenVINO 1.18, ONNX Runtime 1.23
B: AVX2 only               ONNX Runtime 5.89, OpenVINO 6.19     ONNX Runtime 2.84, OpenVINO 3.09
=========================  ===================================  ====================================

bf16 (and fp16 on the CPU) run only in OpenVINO; CUDA and TensorRT only in ONNX Runtime.
The precision is never changed: fp32 stays fp32 (OpenVINO is told to run f32 exactly,
see backends.py), so ``auto`` never trades exactness for speed.
"""

from dataclasses import dataclass

from retinamask.core.cpu import cpu_class, describe_cpu_class

AUTO = "auto"

# (CPU class, model kind) -> runtime, with the measurement behind it (s / image, R-50 1344², batch 1)
_FASTEST_CPU_RUNTIME = {
    ("A", "fp32"): ("openvino", "OpenVINO fp32 4.21 s vs ONNX Runtime 4.48 s"),
    ("A", "int8"): ("openvino", "OpenVINO INT8 1.18 s vs ONNX Runtime 1.23 s"),
    ("B", "fp32"): ("onnxruntime", "ONNX Runtime fp32 5.89 s vs OpenVINO 6.19 s"),
    ("B", "int8"): ("onnxruntime", "ONNX Runtime INT8 2.84 s vs OpenVINO 3.09 s"),
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
    klass = cpu_class(cpu)
    kind = "int8" if quantized else "fp32"
    backend, measured = _FASTEST_CPU_RUNTIME.get((klass, kind), ("onnxruntime", None))
    described = describe_cpu_class(cpu)
    if measured is None:
        return BackendChoice("onnxruntime", f"no measurement for this CPU ({described}): the portable default")
    if backend not in installed:
        return BackendChoice("onnxruntime", f"{backend} is faster on {described} ({measured}) but not installed")
    return BackendChoice(backend, f"fastest on {described}: {measured} (R-50 1344², benchmarks/RESULTS.md)")


def _installed_runtimes():
    import importlib.util

    return tuple(name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None)

"""``--backend auto``: the fastest installed runtime for this CPU at the requested precision.

The choice is a rule drawn from side-by-side measurements (benchmarks/RESULTS.md, one
section per CPU class), not a timing taken at start-up: a start-up race would cost
seconds per command and pick differently from run to run on a busy machine.

Measured, R-50 RetinaMask end2end 1344x1344 batch 1 (``benchmarks/suite.py``):

=========================  ===================================  ====================================
CPU class                  fp32 (s / image)                     INT8 model (s / image)
=========================  ===================================  ====================================
A: AVX-512 + VNNI + bf16   OpenVINO 4.21, ONNX Runtime 4.48     OpenVINO 1.18, ONNX Runtime 1.23
B: AVX2 only               ONNX Runtime 5.89, OpenVINO 6.19     ONNX Runtime 2.84, OpenVINO 3.09
=========================  ===================================  ====================================

bf16 (and fp16 on the CPU) run only in OpenVINO; CUDA and TensorRT only in ONNX Runtime.
The precision is never changed: fp32 stays fp32 (OpenVINO is told to run f32 exactly,
see backends.py), so ``auto`` never trades exactness for speed.
"""

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

AUTO = "auto"

# (CPU class, model kind) -> runtime, with the measurement behind it (s / image, R-50 1344², batch 1)
_FASTEST_CPU_RUNTIME = {
    ("A", "fp32"): ("openvino", "OpenVINO fp32 4.21 s vs ONNX Runtime 4.48 s"),
    ("A", "int8"): ("openvino", "OpenVINO INT8 1.18 s vs ONNX Runtime 1.23 s"),
    ("B", "fp32"): ("onnxruntime", "ONNX Runtime fp32 5.89 s vs OpenVINO 6.19 s"),
    ("B", "int8"): ("onnxruntime", "ONNX Runtime INT8 2.84 s vs OpenVINO 3.09 s"),
}


@lru_cache(maxsize=1)
def cpu_flags():
    """The CPU feature flags of /proc/cpuinfo (a frozenset; empty where it cannot be read)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_class(flags=None):
    """'A' (AVX-512 with VNNI), 'B' (AVX2 without them) or '?' (neither, or unreadable).

    The two classes this project's machines come with (../shared/facts/cpu-classes.md):
    they differ in the fastest fp32 runtime, in bf16 support and in INT8 kernels.
    """
    flags = cpu_flags() if flags is None else frozenset(flags)
    if {"avx512f", "avx512_vnni"} <= flags:
        return "A"
    if "avx2" in flags:
        return "B"
    return "?"


def describe_cpu(flags=None):
    """E.g. 'class A (avx512f avx512_vnni avx512_bf16)' or 'class B (avx2 only)'."""
    flags = cpu_flags() if flags is None else frozenset(flags)
    shown = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile") if f in flags]
    klass = cpu_class(flags)
    if klass == "B":
        return "class B (avx2 only)"
    return f"class {klass} ({' '.join(shown) or 'no avx2'})"


@dataclass(frozen=True)
class BackendChoice:
    backend: str
    reason: str

    def line(self, precision, device):
        return f"backend auto -> {self.backend} ({device}, {precision}): {self.reason}"


def choose_backend(precision="fp32", device="cpu", quantized=False, flags=None, installed=None):
    """The runtime ``auto`` stands for, and why.

    precision: the normalised precision asked for ("fp32", "bf16", "fp16"); device: "cpu",
    "cuda" or "tensorrt"; quantized: the model is an INT8 (QDQ) export; flags: CPU flags
    (default: this machine's); installed: the installed runtimes (default: probed).
    """
    installed = _installed_runtimes() if installed is None else tuple(installed)
    if device != "cpu":
        return BackendChoice("onnxruntime", f"only ONNX Runtime runs --device {device}")
    if precision in ("bf16", "fp16"):
        return BackendChoice("openvino", f"only OpenVINO runs {precision} on the CPU")
    klass = cpu_class(flags)
    kind = "int8" if quantized else "fp32"
    backend, measured = _FASTEST_CPU_RUNTIME.get((klass, kind), ("onnxruntime", None))
    cpu = describe_cpu(flags)
    if measured is None:
        return BackendChoice("onnxruntime", f"no measurement for this CPU ({cpu}): the portable default")
    if backend not in installed:
        return BackendChoice("onnxruntime", f"{backend} is faster on {cpu} ({measured}) but not installed")
    return BackendChoice(backend, f"fastest on {cpu}: {measured} (R-50 1344², benchmarks/RESULTS.md)")


def _installed_runtimes():
    import importlib.util

    return tuple(name for name in ("onnxruntime", "openvino") if importlib.util.find_spec(name) is not None)

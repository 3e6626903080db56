"""The torch-free runtime half: exported model -> sessions (ONNX Runtime, OpenVINO) ->
per-image outputs -> benchmarks. Imports neither torch nor the runtimes until used."""

from retinamask.formats.model_info import ModelInfo, OutputSpec, output_specs, read_model_info
from retinamask.formats.outputs import find_output_files, read_image_outputs, write_image_outputs
from retinamask.runtime.backends import BACKENDS, DEVICES, PRECISIONS, BackendUnavailable, Session, create_session
from retinamask.runtime.bench import benchmark_session, compare_backends, run_benchmark
from retinamask.runtime.infer import run_inference

__all__ = [
    "BACKENDS",
    "DEVICES",
    "PRECISIONS",
    "BackendUnavailable",
    "ModelInfo",
    "OutputSpec",
    "Session",
    "benchmark_session",
    "compare_backends",
    "create_session",
    "find_output_files",
    "output_specs",
    "read_image_outputs",
    "read_model_info",
    "run_benchmark",
    "run_inference",
    "write_image_outputs",
]

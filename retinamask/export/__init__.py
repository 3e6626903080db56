"""Checkpoint -> ONNX export (needs torch + torchvision + onnxscript): the export-friendly graphs
(layouts ``end2end`` and ``seed``, docs/onnx_contract.md) and :func:`export_onnx`."""

from retinamask.export.contract import ExportError
from retinamask.export.graphs import End2EndGraph, SeedGraph, half_precision_copy
from retinamask.export.onnx_export import export_model, export_onnx
from retinamask.export.options import ExportOptions
from retinamask.export.verify import compare_detections, sample_input

__all__ = [
    "End2EndGraph",
    "ExportError",
    "ExportOptions",
    "SeedGraph",
    "compare_detections",
    "export_model",
    "export_onnx",
    "half_precision_copy",
    "sample_input",
]

"""Benchmarks of this project, run from the repository root as modules
(``python -m benchmarks.suite``, ``python -m benchmarks.resize_policies`` ...). Figures and the
commands behind them: benchmarks/RESULTS.md. Nothing here asserts a speed: the numbers are the
result.

Scripts: ``suite`` (every route in one run; its sections in ``benchmarks.sections``),
``resize_policies``, ``accuracy``, ``conventions``, ``coco_eval_speed``, ``ray_scaling``,
``pytorch_latency``.

Shared helpers: ``machine`` (what the run ran on), ``cpu_load`` (the load monitor: is a run fit
for the record?), ``timing``, ``flops`` (counted on the ONNX graph), ``tables`` (Markdown),
``r50`` (the random-weights R-50 model, its inputs and JPEGs), ``synthetic`` (COCO-like ground
truth and model outputs).
"""

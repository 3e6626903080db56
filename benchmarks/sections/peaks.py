"""Suite section "Matmul peaks": GFLOP/s of one square matmul per runtime and precision, on the
threads the models run on; the latency table judges each route against the peak of its precision."""

import functools

import numpy as np

from benchmarks.tables import table_head, table_row
from benchmarks.timing import best_rate


def matmul_model(path, size, int8=False):
    """An ONNX model Y = A @ W, A float32 [size, size] (int8: A and W quantized, QDQ)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    if int8:
        weight = rng.integers(-127, 128, size=(size, size), dtype=np.int8)
        inits += [
            numpy_helper.from_array(weight, "Wq"),
            numpy_helper.from_array(np.float32(0.01), "w_scale"),
            numpy_helper.from_array(np.int8(0), "w_zero"),
            numpy_helper.from_array(np.float32(0.05), "a_scale"),
            numpy_helper.from_array(np.uint8(128), "a_zero"),
        ]
        nodes += [
            helper.make_node("QuantizeLinear", ["A", "a_scale", "a_zero"], ["Aq"]),
            helper.make_node("DequantizeLinear", ["Aq", "a_scale", "a_zero"], ["Ad"]),
            helper.make_node("DequantizeLinear", ["Wq", "w_scale", "w_zero"], ["W"]),
            helper.make_node("MatMul", ["Ad", "W"], ["Y"]),
        ]
    else:
        inits.append(numpy_helper.from_array(rng.standard_normal((size, size), dtype=np.float32), "W"))
        nodes.append(helper.make_node("MatMul", ["A", "W"], ["Y"]))
    graph = helper.make_graph(
        nodes,
        "matmul",
        [helper.make_tensor_value_info("A", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, str(path))
    return path


def _onnxruntime_rates(models, a, threads, flops, repeats):
    import onnxruntime as ort

    rates = {}
    for precision, path in models.items():
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        rates[("onnxruntime", precision)] = best_rate(functools.partial(session.run, None, {"A": a}), flops, repeats)
    return rates


def _openvino_rates(models, a, threads, flops, repeats):
    try:
        import openvino as ov
    except ImportError:
        return {}
    rates = {}
    core = ov.Core()
    capabilities = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    for precision, path, hint in (
        ("fp32", models["fp32"], "f32"),
        ("bf16", models["fp32"], "bf16"),
        ("int8", models["int8"], "f32"),
    ):
        if precision.upper() not in capabilities and precision != "fp32":
            continue
        compiled = core.compile_model(
            str(path),
            "CPU",
            {"INFERENCE_PRECISION_HINT": hint, "INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"},
        )
        request = compiled.create_infer_request()
        rates[("openvino", precision)] = best_rate(functools.partial(request.infer, {0: a}), flops, repeats)
    return rates


def _torch_rates(a, threads, flops, repeats):
    try:
        import torch
    except ImportError:
        return {}
    rates = {}
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            x = torch.from_numpy(a).to(dtype)
            w = torch.from_numpy(a.T.copy()).to(dtype)
            rates[("torch", precision)] = best_rate(functools.partial(torch.mm, x, w), flops, repeats)
    finally:
        torch.set_num_threads(previous)
    return rates


def matmul_peaks(workdir, threads, size, repeats):
    """GFLOP/s of a [size x size] x [size x size] matmul per runtime and precision (best of repeats)."""
    flops = 2.0 * size**3
    a = np.random.default_rng(1).standard_normal((size, size), dtype=np.float32)
    models = {
        "fp32": matmul_model(workdir / "matmul_fp32.onnx", size),
        "int8": matmul_model(workdir / "matmul_int8.onnx", size, int8=True),
    }
    rates = {
        **_onnxruntime_rates(models, a, threads, flops, repeats),
        **_openvino_rates(models, a, threads, flops, repeats),
        **_torch_rates(a, threads, flops, repeats),
    }
    peaks = {}
    for (runtime, precision), rate in rates.items():
        if rate > peaks.get(precision, (None, 0.0))[1]:
            peaks[precision] = (runtime, rate)
    return {
        "size": size,
        "rates": [{"runtime": r, "precision": p, "gflops": v} for (r, p), v in rates.items()],
        "peak": {p: {"runtime": r, "gflops": v} for p, (r, v) in peaks.items()},
    }


def markdown(peaks):
    """The section's lines."""
    lines = ["## Matmul peaks (same threads)", "", *table_head("runtime", "precision", "GFLOP/s:")]
    for rate in peaks["rates"]:
        lines.append(table_row(rate["runtime"], rate["precision"], f"{rate['gflops']:.0f}"))
    return lines + ["", f"Matrix {peaks['size']}x{peaks['size']}; best of the repeats.", ""]

"""Pure-inference benchmark of an exported model (ais_bench's ``--loop`` mode), and a
comparison of every backend / precision that runs on this machine."""

import logging
import time

import numpy as np

from retinamask.core.contract import PIXEL_MEAN, PIXEL_STD
from retinamask.core.errors import RetinaMaskError
from retinamask.formats.run_sidecar import CANVAS_SIDE_KEY

logger = logging.getLogger(__name__)


DEFAULT_IMAGE_HW = (480, 640)  # the image a dynamic-H/W model is timed on: COCO's common 640 x 480


def random_input(batch_size, canvas, mean=PIXEL_MEAN, std=PIXEL_STD, seed=0):
    """float32 [B, 3, H, W] for ``canvas`` (H, W), or [B, 3, S, S] for an int S: uniform 0..255
    pixels normalised like real input (a fixed seed)."""
    h, w = (canvas, canvas) if isinstance(canvas, int) else canvas
    rng = np.random.default_rng(seed)
    pixels = rng.uniform(0.0, 255.0, size=(batch_size, 3, h, w)).astype(np.float32)
    pixels -= np.asarray(mean, np.float32).reshape(1, 3, 1, 1)
    pixels /= np.asarray(std, np.float32).reshape(1, 3, 1, 1)
    return pixels


def latency_stats(times_ms, batch_size):
    """Per-call times (ms) -> mean/p50/p90/p99/min/max, throughput (images/s = 1000*B/mean),
    plus ais_bench's ``NPU_compute_time`` block (min/max/mean/median/percentile(99%))."""
    t = np.asarray(times_ms, dtype=np.float64)
    stats = {
        "mean_ms": float(t.mean()),
        "p50_ms": float(np.percentile(t, 50)),
        "p90_ms": float(np.percentile(t, 90)),
        "p99_ms": float(np.percentile(t, 99)),
        "min_ms": float(t.min()),
        "max_ms": float(t.max()),
        "throughput": 1000.0 * batch_size / float(t.mean()),
    }
    stats["NPU_compute_time"] = {
        "min": stats["min_ms"],
        "max": stats["max_ms"],
        "mean": stats["mean_ms"],
        "median": stats["p50_ms"],
        "percentile(99%)": stats["p99_ms"],
    }
    return stats


def benchmark_session(session, batch_size, loop=100, warmup=5, seed=0, geometry=None):
    """Time ``session.run`` on random input: ``warmup`` untimed calls, then ``loop`` timed ones.

    ``geometry``: the :class:`~retinamask.core.geometry.ImageGeometry` of the timed image (its canvas
    and valid region) for dynamic-H/W sessions; square sessions take their S x S.
    Returns :func:`latency_stats` plus ``loop``, ``warmup``, ``batchsize``, ``session``, ``canvas``.
    """
    if loop < 1:
        raise RetinaMaskError(f"--loop must be >= 1, got {loop}")
    if warmup < 0:
        raise RetinaMaskError(f"--warmup must be >= 0, got {warmup}")
    if session.dynamic_hw:
        if geometry is None:
            raise RetinaMaskError("a model that takes any canvas is timed on an image size: pass a geometry")
        canvas = tuple(geometry.canvas_hw)
        sizes = np.tile(np.asarray(geometry.resized_hw, np.int64), (batch_size, 1))
    else:
        canvas, sizes = (session.canvas_side, session.canvas_side), None
    batch = random_input(batch_size, canvas, seed=seed)

    def call():
        return session.run(batch) if sizes is None else session.run(batch, sizes)

    for _ in range(warmup):
        call()
    times = []
    for _ in range(loop):
        start = time.perf_counter()
        call()
        times.append((time.perf_counter() - start) * 1000.0)
    return {
        "session": session.name,
        "batchsize": batch_size,
        "loop": loop,
        "warmup": warmup,
        "canvas": list(canvas),
        **latency_stats(times, batch_size),
    }


def run_benchmark(
    model_path,
    backend="auto",
    device="cpu",
    precision="fp32",
    batch_size=1,
    loop=100,
    warmup=5,
    threads=None,
    cache_dir=None,
    performance_hint="LATENCY",
    model_info=None,
    resize=None,
    image_hw=DEFAULT_IMAGE_HW,
    static_shapes=None,
    advise=True,
):
    """Compile the model (timed as ``load_s``) and benchmark it (see :func:`benchmark_session`).

    A fixed-batch model runs its own batch size (a different ``batch_size`` is an error).
    A dynamic-H/W model is timed on the canvas its resize policy (``resize``, else the
    metadata's) gives an ``image_hw`` image (default 480 x 640). advise: log the line on this CPU's
    precisions (``create_session``; a comparison's table says it instead).
    """
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.backends import create_session

    info = model_info or read_model_info(model_path, resize=resize)
    batch_size = _batch_for(info, batch_size)
    start = time.perf_counter()
    session = create_session(
        model_path,
        backend,
        device,
        precision,
        threads=threads,
        cache_dir=cache_dir,
        performance_hint=performance_hint,
        model_info=info,
        static_shapes=static_shapes,
        advise=advise,
    )
    load_s = time.perf_counter() - start
    geometry = info.resize.geometry(*image_hw) if info.dynamic_hw else None
    result = benchmark_session(session, batch_size, loop, warmup, geometry=geometry)
    result.update(
        backend=session.backend,
        device=session.device,
        precision=session.precision,
        load_s=load_s,
        model=str(model_path),
        layout=info.layout,
        **{CANVAS_SIDE_KEY: info.canvas_side},
        resize=info.resize.to_dict(),
        image_hw=list(image_hw) if geometry else None,
    )
    return result


def _batch_for(info, batch_size):
    if batch_size is None:
        return info.batch_size or 1
    batch_size = int(batch_size)
    if batch_size < 1:
        raise RetinaMaskError(f"--batchsize must be >= 1, got {batch_size}")
    if info.batch_size is not None and batch_size != info.batch_size:
        raise RetinaMaskError(
            f"the model has a fixed batch of {info.batch_size}; --batchsize {batch_size} cannot run on it "
            "(export with a dynamic batch or that batch size)",
            info.path,
        )
    return batch_size


def compare_backends(
    model_path,
    batch_size=None,
    loop=20,
    warmup=3,
    threads=None,
    cache_dir=None,
    resize=None,
    image_hw=DEFAULT_IMAGE_HW,
    int8_model=None,
):
    """Benchmark every precision route of ``backends.candidate_configurations`` on this machine
    (fp32, bf16, fp16 per runtime and device), plus, with ``int8_model`` (an INT8 export of the same
    model), its INT8 route on each CPU runtime. A quantized ``model_path`` is labelled int8 itself.

    Returns a list of row dicts (those of :func:`run_benchmark`, with ``route``: the precision as
    the table shows it); a route that cannot run here has ``error`` set instead of timings. Marks:
    ``auto`` (the reason ``--backend auto`` runs that row: CPU, fp32), ``fastest_exact`` (the
    fastest fp32 CPU row) and ``fastest`` (the fastest row of all).
    """
    from retinamask.formats.model_info import read_model_info
    from retinamask.runtime.auto_backend import choose_backend
    from retinamask.runtime.backends import candidate_configurations

    info = read_model_info(model_path, resize=resize)
    batch_size = _batch_for(info, batch_size)
    choice = choose_backend("fp32", "cpu", quantized=info.quantized)
    routes = [(model_path, info, *config) for config in candidate_configurations()]
    if int8_model is not None:
        int8_info = read_model_info(int8_model, resize=resize)
        if not int8_info.quantized:
            raise RetinaMaskError("--int8-model is not an INT8 (quantized) export", int8_info.path)
        routes += [(int8_model, int8_info, *c) for c in candidate_configurations() if c[1:3] == ("cpu", "fp32")]
    rows = []
    for path, model_info, backend, device, precision, reason in routes:
        route = "int8" if model_info.quantized and precision == "fp32" else precision
        row = {"backend": backend, "device": device, "precision": precision, "route": route, "batchsize": batch_size}
        if path == model_path and (backend, device, precision) == (choice.backend, "cpu", "fp32"):
            row["auto"] = choice.reason
        if reason is not None:
            rows.append({**row, "error": reason})
            continue
        logger.info("benchmarking %s %s %s ...", backend, device, route)
        try:
            result = run_benchmark(
                path,
                backend,
                device,
                precision,
                batch_size,
                loop,
                warmup,
                threads=threads,
                cache_dir=cache_dir,
                model_info=model_info,
                image_hw=image_hw,
                advise=False,
            )
            rows.append({**row, **result})
        except RetinaMaskError as e:
            rows.append({**row, "error": e.cause})
        except Exception as e:  # e.g. a GPU that fails at run time: one row fails, not the table
            if device == "cpu":
                raise
            rows.append({**row, "error": f"failed: {type(e).__name__}: {' '.join(str(e).split())[:200]}"})
    _mark_fastest(rows)
    return rows


def _mark_fastest(rows):
    """``fastest_exact`` on the fastest timed fp32 CPU row, ``fastest`` on the fastest timed row."""
    timed = [row for row in rows if "mean_ms" in row]
    exact = [row for row in timed if row["route"] == "fp32" and row["device"] == "cpu"]
    if exact:
        min(exact, key=lambda row: row["mean_ms"])["fastest_exact"] = True
    if timed:
        min(timed, key=lambda row: row["mean_ms"])["fastest"] = True


def format_stats(result):
    """Console lines for one benchmark, ais_bench-like."""
    return "\n".join(
        [
            f"[INFO] {result['session']}  model {result['model']}  batchsize {result['batchsize']}  "
            f"canvas {'x'.join(map(str, result.get('canvas') or []))}  "
            f"loop {result['loop']} (+{result['warmup']} warm-up)  load {result['load_s']:.2f} s",
            f"[INFO] latency (ms): mean = {result['mean_ms']:.2f}, p50 = {result['p50_ms']:.2f}, "
            f"p90 = {result['p90_ms']:.2f}, p99 = {result['p99_ms']:.2f}, min = {result['min_ms']:.2f}, "
            f"max = {result['max_ms']:.2f}",
            f"[INFO] throughput 1000*batchsize({result['batchsize']})/NPU_compute_time.mean({result['mean_ms']:.2f}): "
            f"{result['throughput']:.3f}",
        ]
    )


def format_table(rows):
    """One Markdown table for :func:`compare_backends` rows, then a line each for the fastest exact
    route, the fastest route and the one ``--backend auto`` runs."""
    lines = [
        "| backend | device | precision | batch | mean ms | p50 ms | p90 ms | p99 ms | images/s | load s | note |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        auto = " (auto)" if row.get("auto") else ""
        head = (
            f"| {row['backend']}{auto} | {row['device']} | {row.get('route', row['precision'])} | {row['batchsize']} |"
        )
        if "error" in row:
            note = row["error"] if row["error"].startswith("failed") else "unavailable: " + row["error"]
            lines.append(head + " - | - | - | - | - | - | " + note.replace("|", "/") + " |")
        else:
            marks = [name for key, name in (("fastest_exact", "fastest exact"), ("fastest", "fastest")) if row.get(key)]
            lines.append(
                head + f" {row['mean_ms']:.2f} | {row['p50_ms']:.2f} | {row['p90_ms']:.2f} | {row['p99_ms']:.2f} |"
                f" {row['throughput']:.3f} | {row['load_s']:.2f} | {', '.join(marks)} |"
            )
    lines.append("")
    for key, what in (("fastest_exact", "Fastest exact route (fp32)"), ("fastest", "Fastest route")):
        row = next((row for row in rows if row.get(key)), None)
        if row is not None:
            lines.append(f"{what}: {_route_name(row)}, {row['mean_ms']:.2f} ms")
    chosen = next((row for row in rows if row.get("auto")), None)
    if chosen is not None:
        lines.append(
            f"--backend auto (the default) runs {chosen['backend']} {chosen['device']} "
            f"{chosen['precision']}: {chosen['auto']}"
        )
    return "\n".join(lines)


def _route_name(row):
    return f"{row['backend']} {row['device']} {row.get('route', row['precision'])}"

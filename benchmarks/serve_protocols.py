"""The Open Inference Protocol against ``/v1/predict``, side by side on one server (issue 26):
``python -m benchmarks.serve_protocols [--model M] [--backend B] [--requests N] [--rounds R]``.

One ``retinamask serve --grpc-port`` process (the default layout: 2 sessions x 1 thread) and the same
images, driven through ``/v1/predict`` (masks as RLE), ``/v2/models/M/infer`` over HTTP (the binary data
extension, every output binary, as ``tritonclient`` sends it) and ModelInfer over gRPC, by the client of
``bench --url`` (``retinamask.serve.client.sender``: new HTTP connection per request as before, one gRPC
channel). The protocols take turns, round after round, each going first in turn, so that a drift in the
machine's load touches each alike; a protocol's figure pools its rounds, and the median of its per-round
ratios to /v1 (a round's protocols ran seconds apart) is given beside it. Goal: at concurrency 4 each
protocol reaches >= 0.95x the images/s of /v1/predict. The load monitor marks a run disturbed by other
processes as unfit for the record.
"""

import argparse
import json
import socket
import statistics
import tempfile
from pathlib import Path

from benchmarks.cpu_load import LoadMonitor
from benchmarks.machine import environment
from benchmarks.serve import Server, images_for
from benchmarks.tables import table_head, table_row

LABELS = {"v1": "/v1/predict (HTTP, JSON + RLE)", "v2": "/v2 infer over HTTP (binary)", "grpc": "ModelInfer over gRPC"}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def measure(server, images, sends, concurrency, requests, rounds, monitor):
    """{protocol: pooled figures} of ``rounds`` turns of ``requests`` requests at ``concurrency`` each."""
    from retinamask.serve.client import run_load

    pooled = {protocol: {"ok": 0, "seconds": 0.0, "latencies_ms": [], "errors": {}, "rates": []} for protocol in sends}
    order = list(sends)
    for turn in range(rounds):
        for protocol in order[turn % len(order) :] + order[: turn % len(order)]:  # each goes first in turn
            send = sends[protocol]
            with monitor.timed(f"{protocol} c{concurrency} round {turn + 1}"):
                result = run_load(server.client, images, concurrency, requests, send=send)
            row, summary = pooled[protocol], result.summary()
            row["ok"] += summary["ok"]
            row["seconds"] += result.seconds
            row["latencies_ms"] += result.latencies_ms
            row["rates"].append(round(summary["images_per_s"], 2))
            for status, count in summary["errors"].items():
                row["errors"][status] = row["errors"].get(status, 0) + count
    first = pooled[order[0]]["rates"]
    return {
        protocol: {
            "images_per_s": row["ok"] / row["seconds"],
            "rounds_images_per_s": row["rates"],
            "paired_ratio": statistics.median(r / f for r, f in zip(row["rates"], first) if f),
            "p50_ms": statistics.median(row["latencies_ms"]) if row["latencies_ms"] else float("nan"),
            "errors": row["errors"],
        }
        for protocol, row in pooled.items()
    }


def run(args):
    from retinamask.serve.client import PROTOCOLS, run_load, sender

    monitor = LoadMonitor()
    report = {"environment": environment(threads=None), "model": str(args.model), "backend": args.backend}
    with tempfile.TemporaryDirectory() as scratch:
        images = images_for(Path(scratch) / "data", args.images)
        grpc_port = _free_port()
        server = Server(args.model, args.backend, ["--grpc-port", str(grpc_port)], scratch)
        try:
            name = server.client.get_json("/v1/models")["models"][0]["name"]
            sends = {p: sender(server.client, p, model=name, grpc_address=f"127.0.0.1:{grpc_port}") for p in PROTOCOLS}
            for send in sends.values():  # warm the sessions on every canvas, the threads, the channel
                run_load(server.client, images, 4, len(images), send=send)
            report["c4"] = measure(server, images, sends, 4, args.requests, args.rounds, monitor)
            report["c1"] = measure(server, images, sends, 1, args.requests // 2, args.rounds, monitor)
        finally:
            server.stop()
    report["load"] = monitor.summary()
    report["verdict"] = monitor.verdict()
    return report


def markdown(report):
    env = report["environment"]
    v1_c4, v1_c1 = report["c4"]["v1"], report["c1"]["v1"]
    lines = [
        f"### The Open Inference Protocol vs /v1/predict — {env['date']}",
        "",
        f"CPU: {env['cpu']} ({env['cpu_class']}); model {Path(report['model']).name}, {report['backend']}; "
        f"{report['verdict']}",
        "",
        *table_head(
            "protocol",
            "c=4 images/s:",
            "vs /v1:",
            "vs /v1, median of rounds:",
            "rounds:",
            "c=4 p50 ms:",
            "c=1 p50 ms:",
            "vs /v1:",
            "errors",
        ),
    ]
    for protocol, c4 in report["c4"].items():
        c1 = report["c1"][protocol]
        errors = {**c4["errors"], **{f"c1 {k}": v for k, v in c1["errors"].items()}}
        lines.append(
            table_row(
                LABELS[protocol],
                f"{c4['images_per_s']:.2f}",
                f"**{c4['images_per_s'] / v1_c4['images_per_s']:.2f}x**",
                f"{c4['paired_ratio']:.2f}x",
                " / ".join(f"{r:.1f}" for r in c4["rounds_images_per_s"]),
                f"{c4['p50_ms']:.0f}",
                f"{c1['p50_ms']:.1f}",
                f"{c1['p50_ms'] / v1_c1['p50_ms']:.2f}x",
                str(errors or "none"),
            )
        )
    return "\n".join(lines)


def main(argv=None):
    from retinamask.config.shipped import SHIPPED_ONNX

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", type=Path, default=SHIPPED_ONNX, help="exported model (default: the shipped one)")
    parser.add_argument("--backend", default="onnxruntime", choices=["onnxruntime", "openvino"])
    parser.add_argument("--images", type=int, default=16, help="synthetic images (default 16)")
    parser.add_argument("--requests", type=int, default=64, help="requests per protocol per round at c=4 (default 64)")
    parser.add_argument("--rounds", type=int, default=3, help="turns of the three protocols (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    report = run(args)
    print(markdown(report))
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()

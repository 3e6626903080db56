"""``retinamask bench``: pure-inference benchmark of an exported model (ais_bench's
``--loop`` mode) on random input of the model's shape; ``--compare`` runs every
backend/precision available here and prints one Markdown table."""

from retinamask.cli import add_precision_argument, add_resize_argument
from retinamask.core.errors import EXIT_OK

HELP = "pure-inference benchmark of an exported model (ais_bench-style)"


def add_arguments(parser):
    from retinamask.runtime.backends import BACKEND_CHOICES, DEVICES, PERFORMANCE_HINTS

    parser.add_argument("--model", help="exported ONNX model (or --url)")
    server = parser.add_argument_group("a running server (retinamask serve): bounded load from this machine")
    server.add_argument("--url", help="benchmark the server at URL instead of a local model")
    server.add_argument("--concurrency", default="1,2,4,8", help="client threads, one run each (default 1,2,4,8)")
    server.add_argument("--requests", type=int, default=40, help="requests per concurrency level (default 40)")
    server.add_argument("--input", nargs="+", default=None, help="images to send (default: 8 synthetic shapes)")
    server.add_argument("--api-key", default=None, help="the server's key (default: $RETINAMASK_API_KEY)")
    server.add_argument(
        "--protocol",
        default="v1",
        help="what to drive, one table each: v1 (POST /v1/predict), v2 (the Open Inference Protocol over HTTP), "
        "grpc (over gRPC: give --grpc-port); comma-separated (default v1)",
    )
    server.add_argument("--grpc-port", type=int, default=None, help="with --protocol grpc: the server's gRPC port")
    server.add_argument(
        "--retries", type=int, default=4, help="retries of a 500/502/503/504 or a lost connection (default 4; 0: none)"
    )
    parser.add_argument("--loop", type=int, default=100, help="timed runs (default 100)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default 5)")
    parser.add_argument(
        "--batchsize",
        "--batch-size",
        "--batch_size",
        dest="batchsize",
        type=int,
        default=None,
        help="batch size (default: the model's fixed batch, else 1)",
    )
    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto (default): the fastest installed runtime for this CPU and precision",
    )
    parser.add_argument("--device", choices=DEVICES, default="cpu")
    add_precision_argument(parser)
    parser.add_argument("--threads", type=int, default=None, help="inference threads (default: physical cores)")
    parser.add_argument(
        "--cache-dir", "--cache_dir", dest="cache_dir", default=None, help="keep optimized/compiled models here"
    )
    parser.add_argument(
        "--performance-hint",
        "--performance_hint",
        dest="performance_hint",
        choices=PERFORMANCE_HINTS,
        default="LATENCY",
        help="OpenVINO performance hint",
    )
    parser.add_argument(
        "--compare",
        action="store_true",
        help="run every backend/precision route available here and print a Markdown table "
        "(marks the fastest exact route, the fastest route and the one --backend auto runs)",
    )
    parser.add_argument(
        "--int8-model",
        "--int8_model",
        dest="int8_model",
        default=None,
        help="with --compare: an INT8 export of the same model, timed as the int8 route of each CPU runtime",
    )
    parser.add_argument("--json", dest="json_path", default=None, help="also write the results as JSON here")
    add_resize_argument(parser)
    parser.add_argument(
        "--image-size",
        "--image_size",
        dest="image_size",
        default="640x480",
        metavar="WxH",
        help="models that take any canvas: time the canvas the policy gives a WxH image (default: 640x480)",
    )


def run(args):
    if args.url:
        return _run_url(args)
    if not args.model:
        from retinamask.core.errors import ConfigError

        raise ConfigError("give --model (an exported ONNX model) or --url (a running server)", path="command line")
    from retinamask.core.fileio import atomic_write_json
    from retinamask.runtime.bench import compare_backends, format_stats, format_table, run_benchmark

    image_hw = _image_hw(args.image_size)
    if args.compare:
        rows = compare_backends(
            args.model,
            args.batchsize,
            args.loop,
            args.warmup,
            threads=args.threads,
            cache_dir=args.cache_dir,
            resize=args.resize,
            image_hw=image_hw,
            int8_model=args.int8_model,
        )
        print(format_table(rows))
        result = {"model": args.model, "loop": args.loop, "warmup": args.warmup, "rows": rows}
    else:
        result = run_benchmark(
            args.model,
            args.backend,
            args.device,
            args.precision,
            args.batchsize,
            args.loop,
            args.warmup,
            threads=args.threads,
            cache_dir=args.cache_dir,
            performance_hint=args.performance_hint,
            resize=args.resize,
            image_hw=image_hw,
        )
        print(format_stats(result))
    if args.json_path:
        atomic_write_json(args.json_path, result)
        print(f"[INFO] written {args.json_path}")
    return EXIT_OK


def _image_hw(text):
    """'640x480' (W x H) -> (480, 640)."""
    from retinamask.core.errors import ConfigError

    try:
        width, height = (int(v) for v in str(text).lower().split("x"))
        if width <= 0 or height <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"--image-size must be WxH with positive sides, e.g. 640x480, got {text!r}", path="command line"
        ) from None
    return (height, width)


def _run_url(args):
    """Bounded load on a running server: p50/p95/p99, images/s, errors by status, the server's stages, RSS."""
    import os
    import tempfile
    from urllib.parse import urlsplit

    from retinamask.core.errors import ConfigError
    from retinamask.core.fileio import atomic_write_json
    from retinamask.serve.client import PROTOCOLS, Client, format_load_report, run_load, sender, server_rss_bytes

    levels = [int(v) for v in str(args.concurrency).split(",") if v.strip()]
    protocols = [v.strip() for v in str(args.protocol).split(",") if v.strip()]
    unknown = [p for p in protocols if p not in PROTOCOLS]
    if unknown or ("grpc" in protocols and args.grpc_port is None):
        raise ConfigError(
            f"--protocol takes {', '.join(PROTOCOLS)} (grpc with --grpc-port), got {args.protocol!r}",
            path="command line",
        )
    key = args.api_key or os.environ.get("RETINAMASK_API_KEY")
    client = Client(args.url, api_key=key, retries=args.retries)
    model = client.get_json("/v1/models")["models"][0]["name"] if set(protocols) - {"v1"} else None
    grpc_address = f"{urlsplit(args.url).hostname}:{args.grpc_port}"
    report = {"url": args.url, "protocols": {}}
    with tempfile.TemporaryDirectory() as scratch:
        images = args.input or _synthetic_images(scratch)
        for protocol in protocols:
            send = sender(client, protocol, model=model, grpc_address=grpc_address)
            rss_before = server_rss_bytes(client)
            results = [run_load(client, images, level, args.requests, send=send).summary() for level in levels]
            rss_after = server_rss_bytes(client)
            print(format_load_report(args.url, results, rss_before, rss_after, protocol) + "\n")
            report["protocols"][protocol] = {"levels": results, "rss_before": rss_before, "rss_after": rss_after}
    if args.json_path:
        first = report["protocols"][protocols[0]]
        atomic_write_json(args.json_path, {**report, **first})  # the first protocol's figures at the top, as before
    return EXIT_OK


def _synthetic_images(folder):
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(folder, num_train=0, num_val=8, seed=7)
    from pathlib import Path

    return sorted(Path(data["val_images"]).glob("*.png"))

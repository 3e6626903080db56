"""``retinamask infer``: run an exported model over images, .bin files or an .info list,
writing ais_bench-style per-image outputs and a ``{output_dirname}_summary.json``.

ais_bench's flag spellings (``--output_dirname``, ``--batchsize``, ``--outfmt``) work,
and dashed forms too. Exit codes: 0 all done; 1 some items failed (listed); 2 nothing
usable (bad model/arguments, or the first bad item under --strict).
"""

from retinamask.cli import add_precision_argument, add_resize_argument, report_failures

HELP = "run an exported model over .bin files or images (ais_bench-style outputs)"


def add_arguments(parser):
    _add_io_arguments(parser)
    _add_backend_arguments(parser)
    _add_run_arguments(parser)
    _add_model_arguments(parser)
    add_ray_arguments(
        parser,
        "model actors (default: one per --threads CPUs of each node, or one per GPU with "
        "--device cuda/tensorrt); --threads is then each actor's CPUs and threads (default 1)",
    )


def _add_io_arguments(parser):
    """What runs on what and where its outputs go: --model, --input, --output, --output_dirname, --batchsize,
    --outfmt."""
    parser.add_argument("--model", required=True, help="exported ONNX model (retinamask export)")
    parser.add_argument(
        "--input", required=True, help="folder of images, folder of .bin files, an .info list, or one .bin/image file"
    )
    parser.add_argument("--output", default=".", help="parent folder of the results folder (default: .)")
    parser.add_argument(
        "--output_dirname",
        "--output-dirname",
        dest="output_dirname",
        default=None,
        help="results subfolder (default: the start time, as ais_bench; name it to resume a run)",
    )
    parser.add_argument(
        "--batchsize",
        "--batch-size",
        "--batch_size",
        dest="batchsize",
        type=int,
        default=1,
        help="images per model call (a fixed-batch model uses its own; default 1)",
    )
    parser.add_argument(
        "--outfmt",
        type=str.upper,
        choices=("BIN", "NPY"),
        default="BIN",
        help="per-image output files: raw little-endian BIN (as ais_bench) or NPY",
    )


def _add_backend_arguments(parser):
    """The runtime: --backend, --device, --precision."""
    from retinamask.runtime.backends import BACKEND_CHOICES, DEVICES

    parser.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        default="auto",
        help="auto (default): the fastest installed runtime for this CPU and precision",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="cpu, cuda or tensorrt (ONNX Runtime EPs; onnxruntime-gpu needed for the last two)",
    )
    add_precision_argument(parser)


def _add_run_arguments(parser):
    """How the run goes: --legacy-names, --workers, --strict, --threads, --sessions, --cache-dir,
    --performance-hint."""
    from retinamask.core.jobs import default_workers
    from retinamask.runtime.backends import PERFORMANCE_HINTS
    from retinamask.runtime.infer import WORKER_LIMIT

    parser.add_argument(
        "--legacy-names",
        "--legacy_names",
        dest="legacy_names",
        action="store_true",
        help="name outputs _1.._4 (the seed postprocess's) instead of ais_bench's _0.._3",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(WORKER_LIMIT),
        help="image preprocessing processes (0: in this process; default %(default)s)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad item (exit code 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="inference threads of each session (default: the physical cores divided among the sessions)",
    )
    parser.add_argument(
        "--sessions",
        type=int,
        default=None,
        help="model sessions run at once, one batch each, the cores divided among them (default: 2 on a CPU "
        "with 2 cores or more and no --threads, measured faster; else 1)",
    )
    parser.add_argument(
        "--cache-dir",
        "--cache_dir",
        dest="cache_dir",
        default=None,
        help="keep optimized/compiled models here (ORT optimized graph, TensorRT engines, OpenVINO blobs)",
    )
    parser.add_argument(
        "--performance-hint",
        "--performance_hint",
        dest="performance_hint",
        choices=PERFORMANCE_HINTS,
        default="LATENCY",
        help="OpenVINO performance hint of each session (THROUGHPUT pays only with parallel requests)",
    )


def _add_model_arguments(parser):
    """For models whose metadata lacks them: --layout, --input-size; and --resize, --no-progress."""
    parser.add_argument(
        "--layout",
        choices=("end2end", "seed"),
        default=None,
        help="the model's output layout, for models whose metadata lacks retinamask.layout",
    )
    parser.add_argument(
        "--input-size",
        "--input_size",
        dest="canvas_side",
        metavar="INPUT_SIZE",
        type=int,
        default=None,
        help="the model's input side S, for models whose metadata and input shape lack it",
    )
    add_resize_argument(parser)
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: shown on a terminal)",
    )


def add_ray_arguments(parser, actors_help):
    """--ray [ADDRESS] and --ray-actors (infer and evaluate)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="run on a Ray cluster: auto, ray://host:10001 or host:port (no address: RAY_ADDRESS, "
        "else a local Ray instance); model, inputs and outputs must be at the same paths on "
        "every node (pip install 'retinamask[ray]')",
    )
    parser.add_argument("--ray-actors", "--ray_actors", dest="ray_actors", type=int, default=None, help=actors_help)


def run(args):
    from retinamask.runtime.infer import format_summary, run_inference

    infer = run_inference
    if args.ray is not None:
        from functools import partial

        from retinamask.distributed.ray_infer import run_inference_on_ray

        infer = partial(run_inference_on_ray, address=args.ray or None, actors=args.ray_actors)
    summary = infer(
        args.model,
        args.input,
        output_dir=args.output,
        output_dirname=args.output_dirname,
        batch_size=args.batchsize,
        outfmt=args.outfmt,
        backend=args.backend,
        device=args.device,
        precision=args.precision,
        legacy_names=args.legacy_names,
        workers=args.workers,
        strict=args.strict,
        threads=args.threads,
        cache_dir=args.cache_dir,
        layout=args.layout,
        canvas_side=args.canvas_side,
        progress=args.progress,
        resize=args.resize,
        sessions=args.sessions,  # a local run's (Ray's actors have --threads each)
        performance_hint=args.performance_hint,
    )
    print(format_summary(summary))
    return report_failures(summary["failed"])

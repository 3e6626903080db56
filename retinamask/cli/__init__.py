"""The ``retinamask`` command: a thin face over library functions.

Each subcommand lives in its own module of this package, exposing
``add_arguments(parser)`` and ``run(args) -> int`` (the exit code) and a one-line
``HELP``. Modules are imported lazily so that ``retinamask --help`` and the
torch-free commands never import torch.
"""

import argparse
import contextlib
import importlib
import logging
import signal
import sys

from retinamask.core.errors import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL_ERROR,
    EXIT_INTERRUPTED,
    EXIT_ITEMS_FAILED,
    EXIT_OK,
    EXIT_TERMINATED,
    RetinaMaskError,
    Terminated,
)

# subcommand name -> module under retinamask.cli (in --help order)
COMMANDS = {
    "demo": "demo",
    "predict": "predict",
    "data": "data",
    "train": "train",
    "preprocess": "preprocess",
    "export": "export",
    "infer": "infer",
    "evaluate": "evaluate",
    "bench": "bench",
    "serve": "serve",
}

# One-line help per subcommand, kept here so --help does not import every module.
HELP = {
    "demo": "run the whole flow on the embedded model and synthetic data (offline)",
    "predict": "detect and segment images; write overlays and JSON",
    "data": "generate datasets (synthetic shapes, COCO format)",
    "train": "train a RetinaMask model on a COCO-format dataset",
    "preprocess": "images -> seed-compatible 1344x1344 float32 .bin files + .info list",
    "export": "checkpoint + config -> ONNX (end2end or seed layout)",
    "infer": "run an exported model over .bin files or images (ais_bench-style outputs)",
    "evaluate": "inference outputs -> COCO results JSON + bbox/segm mAP",
    "bench": "pure-inference benchmark of an exported model (ais_bench-style)",
    "serve": "serve a model over HTTP: web page, /v1/predict with RLE masks, metrics, Ray Serve",
}


def build_parser(argv=None):
    parser = argparse.ArgumentParser(
        prog="retinamask",
        description="RetinaMask instance segmentation: checkpoint -> ONNX -> inference -> COCO evaluation.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    wanted = _wanted_command(argv)
    for name, module in COMMANDS.items():
        p = sub.add_parser(name, help=HELP[name], description=HELP[name])
        if name == wanted:
            mod = importlib.import_module(f"{__name__}.{module}")
            mod.add_arguments(p)
            p.set_defaults(_run=mod.run)
    return parser


def report_failures(failed, noun="item"):
    """Print a batch command's failed items, one line each, to stderr; return the exit code
    (EXIT_ITEMS_FAILED when any failed, else EXIT_OK)."""
    if not failed:
        return EXIT_OK
    print(f"{len(failed)} {noun}(s) failed:", file=sys.stderr)
    for failure in failed:
        print(f"  {failure['file']}: {failure['cause']}", file=sys.stderr)
    return EXIT_ITEMS_FAILED


@contextlib.contextmanager
def terminate_as_interrupt():
    """SIGTERM raises :class:`~retinamask.core.errors.Terminated` (a KeyboardInterrupt) in the main thread while
    inside, so that a job stopped by a service manager closes its files as on Ctrl-C (exit 143)."""

    def terminated(signum, frame):
        raise Terminated()

    try:
        previous = signal.signal(signal.SIGTERM, terminated)
    except ValueError:  # not the main thread: leave SIGTERM alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _wanted_command(argv):
    for a in argv or []:
        if a in COMMANDS:
            return a
    return None


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        return int(args._run(args) or 0)
    except RetinaMaskError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt as e:
        print("terminated" if isinstance(e, Terminated) else "interrupted", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(e, Terminated) else EXIT_INTERRUPTED
    except OSError as e:  # one the library did not turn into a RetinaMaskError: still one line
        if args.debug:
            raise
        where = f"{e.filename}: " if e.filename else ""
        print(f"error: {where}{e.strerror or e}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except Exception as e:
        if args.debug:
            raise
        text = " ".join(str(e).split())[:300]
        print(
            f"error: unexpected {type(e).__name__}: {text} (a bug; 'retinamask --debug {args.command} ...' "
            "shows the traceback)",
            file=sys.stderr,
        )
        return EXIT_INTERNAL_ERROR


if __name__ == "__main__":
    sys.exit(main())


def add_resize_argument(parser, default_help="the model's, from its metadata"):
    """``--resize original|seed|buckets`` (shared by preprocess, infer, evaluate, predict, bench)."""
    parser.add_argument(
        "--resize",
        choices=("original", "seed", "buckets"),
        default=None,
        help="resize policy: original (the original's test resize, padded to /32; exact), "
        "seed (long side S, S x S canvas: the Ascend seed's), buckets (the original's resize "
        f"padded to a few fixed canvases); default: {default_help}. A model exported with "
        "--resize original or buckets runs any of them; a square (seed) model only seed",
    )


def add_precision_argument(parser, scope=""):
    """``--precision fp32|bf16|fp16|fastest`` (shared by infer, bench, serve, predict); ``scope``: what it
    applies to, e.g. "for --model: "."""
    from retinamask.runtime.auto_backend import FASTEST, FASTEST_SEGM_BUDGET

    parser.add_argument(
        "--precision",
        default="fp32",
        help=f"{scope}fp32 (default); bf16 (OpenVINO) on a CPU that has it; fp16 with tensorrt (OpenVINO where "
        f"the CPU has avx512_fp16); {FASTEST}: the fastest measured on this CPU class within "
        f"{FASTEST_SEGM_BUDGET} segm mAP of fp32 on the shipped model (one line says which)",
    )

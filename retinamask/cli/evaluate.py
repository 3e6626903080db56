"""``retinamask evaluate``: per-image inference outputs -> COCO results JSON + bbox/segm mAP.

Accepts the seed postprocess's flags (``--input_text_path --infer_results_path
--coco_path --output_path``) and their dashed forms. Reads ais_bench's ``_0.._3`` and
the legacy ``_1.._4`` names, .bin or .npy, either layout. Exit codes: 0 all images
evaluated; 1 some failed (listed; the rest is evaluated); 2 nothing usable, or the
first bad item under --strict. An interrupted run resumes: rerun the same command.
"""

import sys

from retinamask.cli import add_resize_argument, report_failures
from retinamask.core.contract import CONVENTIONS
from retinamask.formats.coco_layout import find_annotation_file

HELP = "inference outputs -> COCO results JSON + bbox/segm mAP"


def add_arguments(parser):
    _add_output_arguments(parser)
    _add_coco_arguments(parser)
    _add_model_arguments(parser)
    _add_scoring_arguments(parser)
    _add_run_arguments(parser)
    _add_ray_argument(parser)


def _add_output_arguments(parser):
    """Where the per-image outputs are and which images they are: --infer_results_path, --input_text_path,
    --images."""
    parser.add_argument(
        "--infer_results_path",
        "--infer-results-path",
        dest="infer_results_path",
        required=True,
        help="folder of per-image outputs ({name}_0.bin ...), e.g. result/<output_dirname>",
    )
    parser.add_argument(
        "--input_text_path",
        "--input-text-path",
        dest="input_text_path",
        default=None,
        help="the .info list of the inferred .bin files (the seed's); its sidecar is used when present",
    )
    parser.add_argument(
        "--images",
        default=None,
        help="image list: the images.json that infer writes (default: the one in the results "
        "folder) or a preprocess sidecar; alternative to --input_text_path",
    )


def _add_coco_arguments(parser):
    """The annotations and what is written: --coco_path, --ann_file, --output_path, --results-json."""
    parser.add_argument(
        "--coco_path",
        "--coco-path",
        dest="coco_path",
        default="./coco",
        help="COCO root holding annotations/ (default: ./coco)",
    )
    parser.add_argument(
        "--ann_file",
        "--ann-file",
        dest="ann_file",
        default=None,
        help="annotation JSON (default: {coco_path}/annotations/instances_val2017.json, else the one "
        "instances_*.json there, or its one instances_val*.json)",
    )
    parser.add_argument(
        "--output_path",
        "--output-path",
        dest="output_path",
        default="./evaluation_results.txt",
        help="the 12 bbox + 12 segm stats as text (default: ./evaluation_results.txt); the stats "
        "JSON goes beside it as <name>.json",
    )
    parser.add_argument(
        "--results-json",
        "--results_json",
        dest="results_json",
        default=None,
        help="COCO results JSON (default: <output_path without .txt>_coco_results.json)",
    )


def _add_model_arguments(parser):
    """How the outputs are read and mapped back to the images: --layout, --model, --input-size, --convention,
    --resize, --mask-paste."""
    parser.add_argument(
        "--layout",
        choices=("auto", "end2end", "seed"),
        default="auto",
        help="output layout (auto: the run sidecar / --model metadata, else 1000 rows = seed)",
    )
    parser.add_argument("--model", default=None, help="the ONNX model that produced the outputs (for its metadata)")
    parser.add_argument(
        "--input-size",
        "--input_size",
        dest="canvas_side",
        metavar="INPUT_SIZE",
        type=int,
        default=None,
        help="model input side S when nothing else says it (default 1344, the seed's)",
    )
    parser.add_argument(
        "--convention",
        choices=CONVENTIONS,
        default=None,
        help="outputs -> COCO results and their evaluation: original (default: the original "
        "RetinaMask's), seed (the Ascend seed's RetinaMask_postprocess.py, number for number: "
        "its NMS, one resize ratio, box width x2 - x1, its mask paste, box areas for segm) or subpixel "
        "(the original's, masks pasted at sub-pixel precision instead of on the original's integer box: "
        "sharper on small objects, not the original's numbers)",
    )
    add_resize_argument(parser, "the image list's resized sizes, else the model's or the run sidecar's policy")
    parser.add_argument(
        "--mask-paste",
        "--mask_paste",
        dest="mask_paste",
        choices=("original", "seed"),
        default=None,
        help="deprecated: --convention",
    )


def _add_scoring_arguments(parser):
    """The COCO evaluator and the report: --coco-backend, --report, --image-dir."""
    parser.add_argument(
        "--coco-backend",
        dest="coco_backend",
        choices=("auto", "direct", "pycocotools", "faster-coco-eval"),
        default="auto",
        help="COCO evaluator (auto: direct = faster-coco-eval's C++ evaluator fed our own IoUs, "
        "when faster-coco-eval is installed, else pycocotools; all give the same stats)",
    )
    parser.add_argument(
        "--report",
        dest="report_dir",
        default=None,
        metavar="DIR",
        help="also write an evaluation report to DIR: index.html with per-class AP, AP by object "
        "size, precision-recall curves and the best and worst images drawn",
    )
    parser.add_argument(
        "--image-dir",
        "--image_dir",
        dest="image_dir",
        default=None,
        help="the images, for the report's drawings (default: the annotation file's split folder, "
        "e.g. coco/val2017 for annotations/instances_val2017.json)",
    )


def _add_run_arguments(parser):
    """How the run goes: --workers, --no-progress, --strict, --no-resume."""
    from retinamask.apps.evaluate import WORKER_LIMIT
    from retinamask.core.jobs import default_workers

    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(WORKER_LIMIT),
        help="postprocessing processes (default %(default)s; 1: in this process)",
    )
    parser.add_argument(
        "--no-progress",
        dest="progress",
        action="store_false",
        default=None,
        help="no progress bar (default: shown on a terminal)",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad item (exit code 2)")
    parser.add_argument(
        "--no-resume",
        dest="resume",
        action="store_false",
        help="redo every image, not reusing what an interrupted run left in <output_path stem>_parts/",
    )


def _add_ray_argument(parser):
    """--ray [ADDRESS]: postprocess on a Ray cluster (COCO evaluation stays here)."""
    parser.add_argument(
        "--ray",
        nargs="?",
        const="",
        default=None,
        metavar="ADDRESS",
        help="postprocess on a Ray cluster (COCO evaluation stays here): auto, ray://host:10001 or "
        "host:port (no address: RAY_ADDRESS, else a local Ray instance); the results folder "
        "must be at the same path on every node (pip install 'retinamask[ray]')",
    )


def run(args):
    from retinamask.apps.evaluate import evaluate_outputs
    from retinamask.evaluation.coco_eval import format_stats_text

    ann_file = args.ann_file
    if ann_file is None:
        ann_file, note = find_annotation_file(args.coco_path)
        if note is not None:
            print(f"note: {note}", file=sys.stderr)
    convention = args.convention or args.mask_paste or "original"
    if args.mask_paste is not None:
        print("note: --mask-paste is deprecated; use --convention", file=sys.stderr)
        if args.convention is not None and args.convention != args.mask_paste:
            print(f"error: --convention {args.convention} and --mask-paste {args.mask_paste} disagree", file=sys.stderr)
            return 2
    evaluate = evaluate_outputs
    if args.ray is not None:
        from functools import partial

        from retinamask.distributed.ray_evaluate import evaluate_outputs_on_ray

        evaluate = partial(evaluate_outputs_on_ray, address=args.ray or None)
    summary = evaluate(
        args.infer_results_path,
        ann_file,
        info_path=args.input_text_path,
        images_path=args.images,
        layout=args.layout,
        model_path=args.model,
        canvas_side=args.canvas_side,
        output_path=args.output_path,
        results_json=args.results_json,
        workers=args.workers,
        coco_backend=args.coco_backend,
        convention=convention,
        report_dir=args.report_dir,
        image_dir=args.image_dir,
        progress=args.progress,
        strict=args.strict,
        resume=args.resume,
        resize=args.resize,
    )
    stats = summary["stats"]
    if stats.get("bbox") is not None:
        print(format_stats_text(stats), end="")
    timing = summary["timing"]
    resumed = f"{summary['images_resumed']} kept from an interrupted run; " if summary["images_resumed"] else ""
    print(
        f"evaluated {summary['images_evaluated']} of {summary['images_listed']} images "
        f"({resumed}{summary['layout']} layout, {summary['convention']} convention, "
        f"{summary['num_results']} detections; postprocess {timing['postprocess_ms_per_image']:.1f} ms/image, "
        f"COCO eval {timing['coco_eval_s']:.2f} s); stats: {summary['output_path']}, {summary['stats_json']}; "
        f"results: {summary['results_json']}"
    )
    if summary.get("report"):
        print(f"report: {summary['report']} ({timing['report_s']:.2f} s)")
    if summary["annotation_images_without_outputs"]:
        print(
            f"note: {summary['annotation_images_without_outputs']} annotation images have no outputs "
            "(they count as images without detections)",
            file=sys.stderr,
        )
    return report_failures(summary["failed"])

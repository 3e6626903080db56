"""``retinamask export``: checkpoint + config -> ONNX (layout end2end or seed, docs/onnx_contract.md).

Accepts the seed script's flags (``--cfg_path --weight_path --save_path --simplify=True``)
and their dashed forms. Exit codes: 0 exported (and verified, unless --no-verify); 1 exported
but the check against PyTorch failed (the file is kept, the numbers are printed); 2 bad
arguments, config or checkpoint (nothing written).
"""

import argparse

from retinamask.core.errors import EXIT_ITEMS_FAILED, EXIT_OK

HELP = "checkpoint + config -> ONNX (end2end or seed layout)"


def _bool(text):
    value = str(text).strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def add_arguments(parser):
    _add_file_arguments(parser)
    _add_graph_arguments(parser)
    _add_canvas_arguments(parser)


def _add_file_arguments(parser):
    """Config, weights, output file, simplification."""
    parser.add_argument(
        "--cfg_path",
        "--cfg-path",
        dest="cfg_path",
        default=None,
        help="config: a shipped name (e.g. retinanet_mask_R-50-FPN_2x_adjust_std011_ms) or a YAML path "
        "(default: the config saved beside the weights)",
    )
    parser.add_argument(
        "--weight_path",
        "--weight-path",
        dest="weight_path",
        required=True,
        help="checkpoint (.pth) in the original's format, or retinamask_shapes_small (the shipped model)",
    )
    parser.add_argument(
        "--save_path",
        "--save-path",
        dest="save_path",
        default="retinamask.onnx",
        help="output .onnx file (default: %(default)s)",
    )
    parser.add_argument(
        "--simplify",
        type=_bool,
        nargs="?",
        const=True,
        default=True,
        metavar="{True,False}",
        help="simplify with onnxslim (default: True; skipped with a note if onnxslim is missing)",
    )
    parser.add_argument("--no-simplify", dest="simplify", action="store_false", help="same as --simplify=False")


def _add_graph_arguments(parser):
    """Layout, batch, precision (fp16 / int8 and its calibration), opset."""
    parser.add_argument(
        "--layout",
        choices=("end2end", "seed"),
        default="end2end",
        help="end2end: NMS and top-K in the graph (default); seed: the Ascend seed's 1000 candidates",
    )
    batch = parser.add_mutually_exclusive_group()
    batch.add_argument(
        "--batch-size",
        "--batch_size",
        dest="batch_size",
        type=int,
        default=1,
        help="fixed batch size B of the input [B,3,S,S] (default: 1)",
    )
    batch.add_argument(
        "--dynamic-batch",
        "--dynamic_batch",
        dest="dynamic_batch",
        action="store_true",
        help="a dynamic batch axis instead of a fixed one",
    )
    parser.add_argument(
        "--fp16", action="store_true", help="float16 convolutions; input, outputs, NMS and RoIAlign stay float32"
    )
    parser.add_argument(
        "--int8",
        action="store_true",
        help="quantize the dense convolutions to INT8 (static, calibrated on --calib images); "
        "NMS, RoIAlign and box decoding stay float32",
    )
    parser.add_argument(
        "--calib",
        "--calib-dir",
        "--calib_dir",
        dest="calib",
        default=None,
        metavar="DIR",
        help="with --int8: folder of calibration images, like the data the model will see",
    )
    parser.add_argument(
        "--calib-images",
        "--calib_images",
        dest="calib_images",
        type=int,
        default=None,
        metavar="N",
        help="with --int8: use N images of --calib, evenly spread (default: 32)",
    )
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, 18 or later (default: 18)")


def _add_canvas_arguments(parser):
    """Resize policy and its canvas, output rows, verification, config overrides."""
    parser.add_argument(
        "--resize",
        choices=("seed", "original", "buckets"),
        default="seed",
        help="seed (default): the Ascend seed's fixed S x S canvas, one input; original: the "
        "original's resize (INPUT.MIN/MAX_SIZE_TEST), any canvas (dynamic H/W) plus an "
        "image_sizes input, exact to the original; buckets: the same graph, run on a few "
        "fixed canvases by aspect ratio (--buckets)",
    )
    parser.add_argument(
        "--buckets",
        default=None,
        metavar="HxW,...",
        help="with --resize buckets: the canvases, e.g. 800x1088,1088x800,800x1344,1344x800 "
        "(default: 3 aspect classes x 2 orientations from the config's test sizes)",
    )
    parser.add_argument(
        "--input-size",
        "--input_size",
        dest="canvas_side",
        metavar="INPUT_SIZE",
        type=int,
        default=None,
        help="--resize seed: side S of the square input, a multiple of 32 (default: the config's "
        "INPUT.MAX_SIZE_TEST rounded up to a multiple of 32: 1344 for the upstream configs)",
    )
    parser.add_argument(
        "--max-detections",
        "--max_detections",
        dest="max_detections",
        type=int,
        default=None,
        help="end2end: output rows K per image (default: the original's own NUM_MASKS_TEST, 50, "
        "under --resize original/buckets; 100, the seed's, under --resize seed); "
        "seed layout: written to the metadata as the host-side NMS keep count (default 100)",
    )
    parser.add_argument(
        "--no-verify",
        dest="verify",
        action="store_false",
        help="skip the ONNX Runtime run and the comparison with PyTorch",
    )
    parser.add_argument(
        "--opts",
        nargs="+",
        default=[],
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. --opts RETINANET.INFERENCE_TH 0.1",
    )


def run(args):
    from retinamask.config import load_config
    from retinamask.config.shipped import resolve_model_files
    from retinamask.export import export_onnx
    from retinamask.export.report import format_report

    config, weights, note = resolve_model_files(args.cfg_path, args.weight_path)
    if note:
        print(note)
    cfg = load_config(config, args.opts)
    resize = args.resize
    if args.buckets is not None:
        from retinamask.core.errors import ConfigError
        from retinamask.core.resize import parse_canvases, policy_from_config

        if resize != "buckets":
            raise ConfigError("--buckets goes with --resize buckets", path="command line")
        try:
            resize = policy_from_config(cfg, "buckets", canvases=parse_canvases(args.buckets))
        except ValueError as e:
            raise ConfigError(str(e), path="command line") from None
    report = export_onnx(
        cfg,
        weights,
        args.save_path,
        layout=args.layout,
        batch_size=args.batch_size,
        dynamic_batch=args.dynamic_batch,
        fp16=args.fp16,
        opset=args.opset,
        simplify=args.simplify,
        canvas_side=args.canvas_side,
        max_detections=args.max_detections,
        verify=args.verify,
        int8=args.int8,
        calibration_dir=args.calib,
        calibration_images=args.calib_images,
        resize=resize,
    )
    print(format_report(report))
    verification = report["verification"]
    return EXIT_ITEMS_FAILED if verification is not None and not verification["passed"] else EXIT_OK

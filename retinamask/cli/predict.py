"""retinamask predict: images -> overlay PNGs + detection JSON, with a .pth + config or an exported ONNX."""

import logging

from retinamask.cli import add_resize_argument, report_failures
from retinamask.core.contract import MASK_PASTE_CHOICES
from retinamask.core.errors import ConfigError

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument("--input", "-i", nargs="+", required=True, help="image files and/or folders of images")
    parser.add_argument("--output", "-o", required=True, help="folder for {name}.png overlays and {name}.json")
    source = parser.add_argument_group("model (one of)")
    source.add_argument(
        "--weights",
        help="PyTorch checkpoint (.pth), or retinamask_shapes_small (the shipped model); "
        "with --config unless a config is saved beside it",
    )
    source.add_argument("--config", help="config (shipped name or YAML path) for --weights")
    source.add_argument("--model", help="exported ONNX model (runs without torch)")
    source.add_argument("--url", help="a running 'retinamask serve' (e.g. http://127.0.0.1:8000): it predicts")
    parser.add_argument("--api-key", default=None, help="with --url: the server's key (default: $RETINAMASK_API_KEY)")
    source.description = (
        "none given: the shipped model retinamask_shapes_small (PyTorch; its exported ONNX where torch is absent)"
    )
    parser.add_argument(
        "--input-size",
        type=int,
        default=None,
        help="PyTorch only: run on the seed's fixed SxS canvas instead of the original resize",
    )
    add_resize_argument(parser, "--model: its metadata's; PyTorch: original (seed with --input-size)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "openvino"],
        help="for --model; auto (default): the fastest installed runtime for this CPU",
    )
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda", "tensorrt"], help="for --model")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drawn in overlays (JSON keeps all)")
    parser.add_argument(
        "--mask-paste",
        choices=MASK_PASTE_CHOICES,
        default="original",
        help="masks into the image: original (default: the original's paste on an integer box) or subpixel "
        "(each pixel sampled at its centre: sharper on small objects); not with --url",
    )
    parser.add_argument("--strict", action="store_true", help="stop at the first bad image")
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")


def run(args):
    from retinamask.apps.predict_images import collect_images, predict_images

    predict = _make_predict(args)
    images = collect_images(args.input)
    summary = predict_images(predict, images, args.output, args.score_threshold, args.strict)
    print(f"wrote {len(summary['written'])} overlays + JSON to {summary['output_dir']}")
    report_failures(summary["failed"], "image")
    return summary["exit_code"]


def _make_predict(args):
    if sum(bool(v) for v in (args.model, args.weights or args.config, args.url)) > 1:
        raise ConfigError("give one of --model (ONNX), --weights with --config, or --url", path="command line")
    if args.url and args.mask_paste != "original":
        raise ConfigError("--mask-paste is the server's with --url (it pastes the masks)", path="command line")
    if args.url:
        import os

        from retinamask.serve.client import RemotePredictor

        return RemotePredictor(args.url, api_key=args.api_key or os.environ.get("RETINAMASK_API_KEY"))
    from retinamask.apps.torch_probe import torch_unavailable
    from retinamask.config.shipped import shipped_onnx_path

    if not (args.model or args.weights or args.config) and torch_unavailable():
        args.model = shipped_onnx_path()
        log.info("no model named and %s: using the shipped model's ONNX %s", torch_unavailable(), args.model.name)
    if args.model:
        from retinamask.apps.onnx_predictor import OnnxPredictor

        return OnnxPredictor(
            args.model, backend=args.backend, device=args.device, resize=args.resize, mask_paste=args.mask_paste
        )
    from retinamask.config.shipped import resolve_model_files

    config, weights, note = resolve_model_files(args.config, args.weights)
    if note:
        log.info("%s", note)
    try:
        if torch_unavailable():
            raise ImportError(torch_unavailable())
        from retinamask.engine.predictor import Predictor
    except ImportError as e:
        raise ConfigError(
            f"the PyTorch model needs torch ({e}): pip install 'retinamask[torch]', "
            "or give an exported model with --model",
            path="command line",
        ) from None
    return Predictor.from_config(
        config, weights, opts=args.opts, canvas_side=args.input_size, resize=args.resize, mask_paste=args.mask_paste
    )

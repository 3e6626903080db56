"""retinamask predict: images -> overlay PNGs + detection JSON; videos, streams and cameras -> annotated MP4 +
per-frame JSONL (tracked with --track); with a .pth + config, an exported ONNX or a running server."""

import logging
from dataclasses import replace
from pathlib import Path

from retinamask.cli import add_precision_argument, add_resize_argument, report_failures, terminate_as_interrupt
from retinamask.core.contract import MASK_PASTE_CHOICES
from retinamask.core.errors import ConfigError, InputError

log = logging.getLogger(__name__)


def add_arguments(parser):
    parser.add_argument(
        "--input",
        "-i",
        nargs="+",
        required=True,
        help="images, video files (found by probing, any extension), folders of both, rtsp/rtmp/http(s)/udp/tcp "
        "URLs, a camera (0 or /dev/video0), or a .txt/.streams file listing such sources one per line",
    )
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        help="folder for {name}.png + {name}.json per image, {name}.mp4 + {name}.jsonl per video",
    )
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
    add_precision_argument(parser, "for --model: ")
    parser.add_argument(
        "--sessions",
        type=int,
        default=None,
        help="for --model on video files: model sessions run at once, a frame each, the cores divided (default: "
        "as infer, 2 on a CPU with 2 cores or more); live sources run one (the latest frame, answered soonest)",
    )
    parser.add_argument("--score-threshold", type=float, default=0.3, help="drawn in overlays (JSON keeps all)")
    parser.add_argument(
        "--mask-paste",
        choices=MASK_PASTE_CHOICES,
        default="original",
        help="masks into the image: original (default: the original's paste on an integer box) or subpixel "
        "(each pixel sampled at its centre: sharper on small objects); not with --url",
    )
    parser.add_argument(
        "--strict", action="store_true", help="stop at the first bad input (an image, a video or a stream)"
    )
    _add_video_arguments(parser)
    parser.add_argument("--opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")


def _add_video_arguments(parser):
    video = parser.add_argument_group("videos, streams and cameras")
    video.add_argument("--track", action="store_true", help="track instances across frames (ByteTrack): track_id")
    video.add_argument("--tracked-only", action="store_true", help="with --track: leave out untracked detections")
    video.add_argument(
        "--track-buffer",
        type=float,
        default=1.0,
        metavar="S",
        help="seconds of the source's time a lost track waits to be found again (default 1.0)",
    )
    video.add_argument("--vid-stride", type=int, default=1, metavar="N", help="keep one frame in N (default 1)")
    video.add_argument(
        "--stream-buffer",
        action="store_true",
        help="live sources: process every frame (bounded buffer; says when it falls behind) instead of the latest",
    )
    video.add_argument("--timeout", type=float, default=10.0, metavar="S", help="seconds to open or read a source")
    video.add_argument("--reconnect", type=int, default=5, metavar="N", help="re-open attempts of a dropped stream")
    video.add_argument("--max-frames", type=int, default=None, metavar="N", help="stop each video after N frames")
    video.add_argument("--duration", type=float, default=None, metavar="S", help="stop each video after S seconds")
    video.add_argument(
        "--no-video",
        action="store_true",
        help="results only: the JSONL (and --save-ytvis / --save-mot files) without the annotated MP4 (no overlay "
        "drawn or H.264 encoded: less CPU a frame)",
    )
    video.add_argument("--no-audio", action="store_true", help="leave the source's audio out of the annotated MP4")
    video.add_argument("--save-ytvis", action="store_true", help="results_ytvis.json (YouTube-VIS results; tracks)")
    video.add_argument("--save-mot", action="store_true", help="{name}.mot.txt and {name}.mots.txt (tracks)")


def run(args):
    from retinamask.apps.predict_images import predict_images
    from retinamask.apps.predict_sources import collect_sources

    video_options = _video_options(args)
    predict = _make_predict(args)
    sources = collect_sources(args.input)
    failed = list(sources.failed)
    if args.strict and failed:
        raise InputError(failed[0]["cause"], path=failed[0]["file"])
    if sources.images:
        images = [Path(source.location) for source in sources.images]
        summary = predict_images(predict, images, args.output, args.score_threshold, args.strict)
        print(f"wrote {len(summary['written'])} overlays + JSON to {summary['output_dir']}")
        failed += summary["failed"]
    if sources.videos:
        from retinamask.apps.predict_videos import predict_videos

        video_options = replace(video_options, category_ids=_category_ids(predict))
        predictors = _file_predictors(args, predict, sources.videos)
        with terminate_as_interrupt():
            summary = predict_videos(predictors, sources.videos, args.output, video_options, strict=args.strict)
        skipped = f", {len(summary['skipped'])} complete from an earlier run kept" if summary["skipped"] else ""
        what = "JSONL results of" if args.no_video else "annotated videos + JSONL of"
        print(
            f"wrote {what} {len(summary['written'])} videos ({summary['frames']} frames) "
            f"to {summary['output_dir']}{skipped}"
        )
        failed += summary["failed"]
    return report_failures(failed, "input")


def _video_options(args):
    from retinamask.apps.predict_video import FrameOptions
    from retinamask.apps.predict_videos import VideoJobOptions

    for flag, value, least in (("--vid-stride", args.vid_stride, 1), ("--reconnect", args.reconnect, 0)):
        if value < least:
            raise ConfigError(f"{flag} must be >= {least}, got {value}", path="command line")
    for flag, value in (("--timeout", args.timeout), ("--max-frames", args.max_frames), ("--duration", args.duration)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be > 0, got {value}", path="command line")
    track = args.track or args.save_ytvis or args.save_mot or args.tracked_only
    if track and not args.track:
        log.info("--save-ytvis / --save-mot / --tracked-only need tracks: tracking is on")
    frames = FrameOptions(
        vid_stride=args.vid_stride,
        stream_buffer=args.stream_buffer,
        timeout=args.timeout,
        reconnect=args.reconnect,
        max_frames=args.max_frames,
        duration=args.duration,
    )
    return VideoJobOptions(
        frames=frames,
        track=track,
        tracked_only=args.tracked_only,
        lost_seconds=args.track_buffer,
        annotated=not args.no_video,
        audio=not args.no_audio,
        score_threshold=args.score_threshold,
        save_ytvis=args.save_ytvis,
        save_mot=args.save_mot,
    )


def _file_predictors(args, predict, videos):
    """The exported model's sessions for video files: as many as ``infer`` runs (the dataset default: 2 on a CPU
    with 2 cores or more, the cores divided; ``--sessions``), frames running on them at once; else ``predict``."""
    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.runtime.auto_backend import dataset_sessions

    if not isinstance(predict, OnnxPredictor) or all(video.kind == "live" for video in videos):
        return predict
    count, threads, note = dataset_sessions(args.device, args.sessions)
    if count == 1:
        return predict
    if note:
        log.info("video files: %s", note)
    return OnnxPredictor.sessions(
        args.model,
        count,
        threads,
        backend=predict.session.backend,
        device=args.device,
        precision=predict.session.precision,
        resize=args.resize,
        mask_paste=args.mask_paste,
    )


def _category_ids(predict):
    """The dataset category id of each label (YouTube-VIS results): the model's, else COCO's defaults."""
    from retinamask.formats.coco_classes import default_category_ids

    ids = getattr(predict, "category_ids", None) or getattr(getattr(predict, "info", None), "category_ids", None)
    return tuple(int(i) for i in (ids or default_category_ids(predict.class_names or ())))


def _check_precision_for_model(args):
    if args.precision != "fp32":
        raise ConfigError("--precision is for --model (an exported ONNX model)", path="command line")


def _make_predict(args):
    if sum(bool(v) for v in (args.model, args.weights or args.config, args.url)) > 1:
        raise ConfigError("give one of --model (ONNX), --weights with --config, or --url", path="command line")
    if args.url and args.mask_paste != "original":
        raise ConfigError("--mask-paste is the server's with --url (it pastes the masks)", path="command line")
    if args.url:
        _check_precision_for_model(args)
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
            args.model,
            backend=args.backend,
            device=args.device,
            precision=args.precision,
            resize=args.resize,
            mask_paste=args.mask_paste,
        )
    _check_precision_for_model(args)  # the PyTorch path runs fp32
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

"""``retinamask preprocess``: images -> seed-compatible 1344x1344 float32 .bin files + .info list.

Accepts the seed script's flags (``--image_src_path`` ...) and their dashed forms.
Exit codes: 0 all done; 1 some images failed (listed); 2 nothing usable (bad
arguments, no images, unwritable outputs, or the first bad image under --strict).
"""

from retinamask.cli import add_resize_argument, report_failures

HELP = "images -> seed-compatible 1344x1344 float32 .bin files + .info list"


def add_arguments(parser):
    from retinamask.core.jobs import default_workers
    from retinamask.data.preprocess import WORKER_LIMIT

    parser.add_argument(
        "--image_src_path",
        "--image-src-path",
        dest="image_src_path",
        required=True,
        help="folder of images (.jpg .jpeg .png .bmp .webp; not recursive)",
    )
    parser.add_argument(
        "--bin_file_path",
        "--bin-file-path",
        dest="bin_file_path",
        default="./bins",
        help="output folder for the .bin files (default: ./bins)",
    )
    parser.add_argument(
        "--bin_info_name",
        "--bin-info-name",
        dest="bin_info_name",
        default="retinamask_coco2017.info",
        help="output .info list; a sidecar <name>.json is written beside it (default: retinamask_coco2017.info)",
    )
    parser.add_argument(
        "--input_size",
        "--input-size",
        dest="canvas_side",
        metavar="INPUT_SIZE",
        type=int,
        default=1344,
        help="--resize seed: side S of the square model input [1,3,S,S] (default: 1344)",
    )
    add_resize_argument(parser, "the --model's if given, else seed")
    parser.add_argument(
        "--model", default=None, help="an exported model: its resize policy (and test sizes) and mean/std are used"
    )
    parser.add_argument(
        "--min-size",
        "--min_size",
        dest="min_size",
        type=int,
        default=800,
        help="--resize original/buckets without --model: short side (default: 800)",
    )
    parser.add_argument(
        "--max-size",
        "--max_size",
        dest="max_size",
        type=int,
        default=1333,
        help="--resize original/buckets without --model: long side cap (default: 1333)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=default_workers(WORKER_LIMIT),
        help="worker processes (default: min(4, CPUs), here %(default)s)",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="stop at the first bad image (exit code 2) instead of skipping and listing it",
    )


def run(args):
    from retinamask.core.errors import ConfigError
    from retinamask.core.resize import make_policy
    from retinamask.data.preprocess import preprocess_images
    from retinamask.data.transforms import PIXEL_MEAN, PIXEL_STD

    mean, std = PIXEL_MEAN, PIXEL_STD
    if args.model:
        from retinamask.formats.model_info import read_model_info

        info = read_model_info(args.model, resize=args.resize)
        policy, mean, std = info.resize, info.pixel_mean, info.pixel_std
    else:
        try:
            policy = make_policy(args.resize or "seed", args.min_size, args.max_size, canvas_side=args.canvas_side)
        except ValueError as e:
            raise ConfigError(str(e), path="command line") from None
    summary = preprocess_images(
        args.image_src_path,
        args.bin_file_path,
        args.bin_info_name,
        workers=args.workers,
        strict=args.strict,
        mean=mean,
        std=std,
        resize=policy,
    )
    done = len(summary["records"])
    print(
        f"preprocessed {done} of {summary['total']} images into {summary['bin_dir']} "
        f"({summary['written']} written, {summary['resumed']} already complete); "
        f"list: {summary['info_path']}, sidecar: {summary['sidecar_path']}"
    )
    return report_failures(summary["failed"], "image")

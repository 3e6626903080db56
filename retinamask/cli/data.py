"""``retinamask data``: generate datasets.

``retinamask data shapes`` writes the deterministic synthetic shapes dataset
(COCO format, visible-part masks as RLE) that the demo trains and evaluates on;
``retinamask data shapes --video`` writes clips of the same shapes in motion with
per-frame ground truth (YouTube-VIS format) to score tracking on.
"""

import argparse

from retinamask.core.errors import RetinaMaskError

SHAPES_DESCRIPTION = """\
Write a synthetic instance-segmentation dataset in COCO format:
  OUT/<split>/000000.png ...  and  OUT/annotations/instances_<split>.json
Six shape classes (circle 1, rectangle 3, triangle 7, star 12, cross 18, ring 25)
on textured backgrounds; sizes log-uniform from --min-size px to
--max-size-fraction of the image's short side; images 192-384 px per side.
Masks are the visible parts after occlusion, stored as COCO RLE.
The same arguments always give byte-identical files (whatever --workers), and a
split whose annotation file already records the same parameters is skipped.

With --video: clips of the same shapes moving, entering, leaving and occluding
each other, H.264 MP4 (crf 18, yuv420p) at an exact frame rate (--fps 12.5 or
30000/1001), or FFV1 in MKV with --lossless; per-frame visible masks (RLE, null
when hidden or outside), boxes and areas per object in the YouTube-VIS format:
  OUT/<split>/000000.mp4 ...  and  OUT/annotations/instances_<split>.json
Clips depend on --seed and the split name: tune on one split, report on another."""

SHAPES_EXAMPLE = """\
example:
  retinamask data shapes --out data/shapes --num-images 100 --train-images 1000 --seed 0
    -> data/shapes/{train,val}/*.png, data/shapes/annotations/instances_{train,val}.json
  retinamask data shapes --video --out data/clips --num-videos 4 --frames 50 --fps 12.5 --split-name test
    -> data/clips/test/00000{0..3}.mp4, data/clips/annotations/instances_test.json"""


def add_arguments(parser):
    kinds = parser.add_subparsers(dest="data_kind", metavar="KIND")
    shapes = kinds.add_parser(
        "shapes",
        help="synthetic shapes, COCO format (deterministic)",
        description=SHAPES_DESCRIPTION,
        epilog=SHAPES_EXAMPLE,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shapes.add_argument("--out", required=True, metavar="DIR", help="output folder (created if missing)")
    shapes.add_argument(
        "--num-images", type=int, metavar="N", help="number of images in the --split-name split (required for images)"
    )
    shapes.add_argument("--seed", type=int, default=0, metavar="S", help="random seed, >= 0 (default: 0)")
    shapes.add_argument("--split-name", default="val", metavar="NAME", help="name of the N-image split (default: val)")
    shapes.add_argument(
        "--train-images",
        type=int,
        default=0,
        metavar="M",
        help="also write a 'train' split of M images, from a stream independent of the other split (default: 0)",
    )
    shapes.add_argument(
        "--workers", type=int, default=0, metavar="K", help="render in K processes; 0 = in this process (default: 0)"
    )
    shapes.add_argument("--format", choices=("png", "jpg"), default="png", help="image format (default: png, lossless)")
    shapes.add_argument(
        "--min-size", type=float, default=8.0, metavar="PX", help="smallest object size in pixels (default: 8)"
    )
    shapes.add_argument(
        "--max-size-fraction",
        type=float,
        default=0.5,
        metavar="F",
        help="largest object size as a fraction of the image's short side, <= 0.5 (default: 0.5)",
    )
    shapes.add_argument(
        "--max-objects", type=int, metavar="K", help="at most K shapes per image or clip (default: 10; video: 6)"
    )
    shapes.add_argument("--force", action="store_true", help="regenerate even if an identical dataset exists")
    video = shapes.add_argument_group("video (--video)")
    video.add_argument("--video", action="store_true", help="write clips of moving shapes instead of images")
    video.add_argument("--num-videos", type=int, metavar="N", help="number of clips in the --split-name split")
    video.add_argument("--frames", type=int, default=50, metavar="F", help="frames per clip (default: 50)")
    video.add_argument(
        "--fps", default="25", metavar="RATE", help="exact frame rate: 25, 12.5, 30000/1001 (default: 25)"
    )
    video.add_argument("--size", default="320x240", metavar="WxH", help="frame size (default: 320x240)")
    video.add_argument("--lossless", action="store_true", help="FFV1 (rgb) in MKV instead of H.264 MP4")
    video.add_argument(
        "--png-frames", action="store_true", help="also write every frame as OUT/<split>/<clip>/NNNNNN.png"
    )
    shapes.set_defaults(_shapes_parser=shapes)
    parser.set_defaults(_data_parser=parser)


def run(args):
    if args.data_kind != "shapes":
        args._data_parser.print_help()
        return 2
    return run_shapes_videos(args) if args.video else run_shapes(args)


def run_shapes(args):
    """Generate the shapes dataset and print where it went."""
    from retinamask.data.shapes import generate_shapes_dataset

    if args.num_images is None:
        args._shapes_parser.error("the following arguments are required: --num-images (or --video --num-videos)")
    if args.num_videos is not None:
        raise RetinaMaskError("--num-videos goes with --video")
    if args.num_images < 0:
        raise RetinaMaskError(f"--num-images must be >= 0, got {args.num_images}")
    if args.train_images < 0:
        raise RetinaMaskError(f"--train-images must be >= 0, got {args.train_images}")
    if args.workers < 0:
        raise RetinaMaskError(f"--workers must be >= 0, got {args.workers}")
    paths = generate_shapes_dataset(
        args.out,
        args.train_images,
        args.num_images,
        args.seed,
        val_split_name=args.split_name,
        workers=args.workers,
        image_format=args.format,
        min_size=args.min_size,
        max_size_fraction=args.max_size_fraction,
        max_objects=10 if args.max_objects is None else args.max_objects,
        force=args.force,
    )
    for split in ("train", args.split_name):
        if f"{split}_annotations" in paths:
            state = "up to date, kept" if split in paths["skipped"] else "written"
            print(f"{split}: {paths[f'{split}_annotations']} ({state}); images in {paths[f'{split}_images']}")
    return 0


def run_shapes_videos(args):
    """Generate the shapes clips and print where they went."""
    from retinamask.data.shapes_video import generate_shapes_videos, parse_size

    if args.num_videos is None:
        args._shapes_parser.error("the following arguments are required with --video: --num-videos")
    for flag, given in (("--num-images", args.num_images is not None), ("--train-images", args.train_images)):
        if given:
            raise RetinaMaskError(f"{flag} is for images; with --video give --num-videos")
    if args.num_videos < 1:
        raise RetinaMaskError(f"--num-videos must be >= 1, got {args.num_videos}")
    paths = generate_shapes_videos(
        args.out,
        args.num_videos,
        args.seed,
        split=args.split_name,
        size=parse_size(args.size),
        frames=args.frames,
        fps=args.fps,
        max_objects=6 if args.max_objects is None else args.max_objects,
        lossless=args.lossless,
        frames_png=args.png_frames,
        force=args.force,
    )
    state = "up to date, kept" if paths["skipped"] else "written"
    print(f"{args.split_name}: {paths['annotations']} ({state}); {len(paths['clips'])} clips in {paths['videos']}")
    return 0

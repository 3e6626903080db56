"""``retinamask data``: generate datasets.

``retinamask data shapes`` writes the deterministic synthetic shapes dataset
(COCO format, visible-part masks as RLE) that the demo trains and evaluates on.
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
split whose annotation file already records the same parameters is skipped."""

SHAPES_EXAMPLE = """\
example:
  retinamask data shapes --out data/shapes --num-images 100 --train-images 1000 --seed 0
    -> data/shapes/{train,val}/*.png, data/shapes/annotations/instances_{train,val}.json"""


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
        "--num-images", required=True, type=int, metavar="N", help="number of images in the --split-name split"
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
        "--max-objects", type=int, default=10, metavar="K", help="at most K shapes per image (default: 10)"
    )
    shapes.add_argument("--force", action="store_true", help="regenerate even if an identical dataset exists")
    parser.set_defaults(_data_parser=parser)


def run(args):
    if args.data_kind != "shapes":
        args._data_parser.print_help()
        return 2
    return run_shapes(args)


def run_shapes(args):
    """Generate the shapes dataset and print where it went."""
    from retinamask.data.shapes import generate_shapes_dataset

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
        max_objects=args.max_objects,
        force=args.force,
    )
    for split in ("train", args.split_name):
        if f"{split}_annotations" in paths:
            state = "up to date, kept" if split in paths["skipped"] else "written"
            print(f"{split}: {paths[f'{split}_annotations']} ({state}); images in {paths[f'{split}_images']}")
    return 0

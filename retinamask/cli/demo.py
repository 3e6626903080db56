"""retinamask demo: the whole flow on the embedded default (shipped model + synthetic data), offline."""

from retinamask.core.errors import EXIT_OK, RetinaMaskError


def add_arguments(parser):
    parser.add_argument("--output", default="runs/demo", help="working folder (default: runs/demo); reruns reuse it")
    parser.add_argument("--num-images", type=int, default=200, help="synthetic val images (default 200)")
    parser.add_argument(
        "--backend",
        default="auto",
        choices=["auto", "onnxruntime", "openvino"],
        help="auto (default): the fastest installed runtime for this CPU",
    )
    parser.add_argument("--overlays", type=int, default=8, help="overlay PNGs to write (default 8)")
    parser.add_argument(
        "--video-clips", type=int, default=3, help="generated clips to track after the images (default 3; 0: none)"
    )


def run(args):
    from retinamask.apps.demo import SHIPPED_WEIGHTS, run_demo

    if not SHIPPED_WEIGHTS.exists():
        raise RetinaMaskError("the shipped model is missing from this install", path=SHIPPED_WEIGHTS)
    result = run_demo(
        args.output,
        num_images=args.num_images,
        backend=args.backend,
        num_overlays=args.overlays,
        video_clips=args.video_clips,
    )
    print()
    print(
        f"RetinaMask (small, shipped) on {result['num_images']} synthetic images, "
        f"resize {result['resize']}, {result['backend']} CPU:"
    )
    print(
        f"  bbox mAP {result['bbox_mAP']:.3f}   segm mAP {result['segm_mAP']:.3f}   "
        f"{result['fps']:.1f} fps ({result['latency_ms']:.1f} ms/image)"
    )
    print(f"  segm mAP {result['segm_mAP_subpixel']:.3f} with the masks pasted sub-pixel (--convention subpixel)")
    video = result["video"]
    if video:
        tracking = video["tracking"]
        figures = (
            f"MOTA {tracking['mota']:.3f}   IDF1 {tracking['idf1']:.3f}   {tracking['id_switches']} ID switches"
            if tracking
            else "tracking figures: pip install 'retinamask[track-eval]'"
        )
        print(f"  video: {video['clips']} clips tracked at {video['fps']:.1f} frames/s   {figures}")
    print(f"  overlays: {result['overlays']}   videos: {video['videos'] if video else '-'}")
    print(f"  summary: {args.output}/demo_summary.json")
    return EXIT_OK

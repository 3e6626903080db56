"""retinamask demo: the whole flow on the embedded default, offline."""

import numpy as np


def add_arguments(parser):
    parser.add_argument("--output", default="runs/demo", help="where to write results (default: runs/demo)")


def run(args):
    # Until the embedded model ships: the real R-50 RetinaMask (random weights) end to end on a
    # generated image, to show the model, pre- and post-processing run.
    from ..engine.predictor import Predictor

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8)
    predictor = Predictor.from_config("retinanet_mask_R-50-FPN_2x_adjust_std011_ms")
    result = predictor(image)
    print(f"R-50-FPN RetinaMask (random weights) on a 480x640 image: {len(result)} detections, "
          f"masks {result.masks.shape}")
    return 0

"""The exported model's contract, as constants: one home for the names and numbers that the
exporter writes, the runtime reads and the file formats keep (docs/onnx_contract.md).

``SEED_CANVAS_SIDE`` is the Ascend seed's square model input side S (1344 x 1344), called
``canvas_side`` in the code; the seed's ``--input-size`` flag and the files' key for it keep the
seed's name.
"""

# output layouts: end2end (final detections, NMS in the graph) and seed (the seed's 1000 candidates)
LAYOUTS = ("end2end", "seed")
OUTPUT_NAMES = {
    "end2end": ("boxes", "labels", "scores", "masks"),
    "seed": ("bboxs", "labels", "scores", "masks"),
}
SEED_NUM_CANDIDATES = 1000  # rows of every seed-layout output
DEFAULT_MAX_DETECTIONS = 100
DEFAULT_MASK_RESOLUTION = 28
DEFAULT_NMS_THRESHOLD = 0.4

# the seed's fixed square canvas: long side 1344, zero-padded to 1344 x 1344
SEED_CANVAS_SIDE = 1344

# inputs and metadata
IMAGE_SIZES_INPUT = "image_sizes"  # int64 [B, 2] (h, w) of each image's valid region (any-canvas models)
META_PREFIX = "retinamask."
RESIZE_METADATA_KEY = "retinamask.resize"
CANVAS_SIDE_METADATA_KEY = "retinamask.input_size"  # S of a square (seed policy) model
# the JSON key of S (None: a model that takes any canvas) in the preprocess sidecar, infer's images.json
# and the JSON summaries and reports: the seed's name for it
CANVAS_SIDE_KEY = "input_size"

# the original's normalisation: BGR, 0..255
PIXEL_MEAN = (102.9801, 115.9465, 122.7717)
PIXEL_STD = (1.0, 1.0, 1.0)

# evaluation conventions: the original RetinaMask's mapping to COCO results, the seed's, or the original's
# with the sub-pixel mask paste (ops/masks.py: sharper on small objects, not the original's numbers)
CONVENTIONS = ("original", "seed", "subpixel")
# the mask pastes predict and serve offer (ops/masks.py): the original's, or the sub-pixel one
MASK_PASTE_CHOICES = ("original", "subpixel")

# image files infer, predict and preprocess take
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

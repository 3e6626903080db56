"""Class names and COCO category ids (torch-free)."""

COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush",
)

# COCO category id of each contiguous label 1..80 (label - 1 indexes this tuple).
COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)


def class_names_from_config(cfg):
    """Foreground class names in label order (label 1 first): cfg.CLASS_NAMES, else COCO's 80
    (when RETINANET.NUM_CLASSES is 81), else generic ``class_<label>``."""
    num_foreground = cfg.RETINANET.NUM_CLASSES - 1
    if cfg.CLASS_NAMES:
        names = tuple(cfg.CLASS_NAMES)
        if len(names) != num_foreground:
            from retinamask.core.errors import ConfigError

            raise ConfigError(f"CLASS_NAMES has {len(names)} names but RETINANET.NUM_CLASSES - 1 = {num_foreground}")
        return names
    if num_foreground == len(COCO_CLASS_NAMES):
        return COCO_CLASS_NAMES
    return tuple(f"class_{i}" for i in range(1, num_foreground + 1))

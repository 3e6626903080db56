"""The COCO folder layout: ``ROOT/<split>/`` holds a split's images and ``ROOT/annotations/instances_<split>.json``
its annotations (COCO's own ``coco/val2017`` + ``coco/annotations/instances_val2017.json``; ``retinamask data
shapes`` writes the same). One home for the two paths, both ways."""

from pathlib import Path

ANNOTATION_PREFIX = "instances_"


def annotation_file(root, split):
    """ROOT/annotations/instances_<split>.json."""
    return Path(root) / "annotations" / f"{ANNOTATION_PREFIX}{split}.json"


def image_dir_of(ann_file):
    """The image folder of an annotation file in this layout: coco/annotations/instances_val2017.json ->
    coco/val2017 (a file not named instances_*: its stem is taken as the split)."""
    ann_file = Path(ann_file)
    stem = ann_file.stem
    split = stem[len(ANNOTATION_PREFIX) :] if stem.startswith(ANNOTATION_PREFIX) else stem
    return ann_file.parent.parent / split

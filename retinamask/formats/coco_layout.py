"""The COCO folder layout: ``ROOT/<split>/`` holds a split's images and ``ROOT/annotations/instances_<split>.json``
its annotations (COCO's own ``coco/val2017`` + ``coco/annotations/instances_val2017.json``; ``retinamask data
shapes`` writes the same). One home for the two paths, both ways."""

from pathlib import Path

from retinamask.core.errors import InputError

ANNOTATION_PREFIX = "instances_"
DEFAULT_SPLIT = "val2017"  # evaluate's split when no annotation file is named (COCO's)


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


def find_annotation_file(root, split=DEFAULT_SPLIT):
    """(annotation file, None or a note) for ``evaluate --coco_path ROOT`` with no ``--ann_file``.

    ROOT/annotations/instances_<split>.json where it exists; else the one ``instances_*.json`` there (the note
    says it is taken: ``retinamask data shapes`` writes ``instances_val.json``), or the one of a val split
    (``instances_val*``) among a train and a val file. Several candidates: InputError naming them. No
    annotation file at all: the default path (reading it says it is not found)."""
    wanted = annotation_file(root, split)
    if wanted.is_file():
        return wanted, None
    found = sorted(Path(root, "annotations").glob(f"{ANNOTATION_PREFIX}*.json"))
    if not found:
        return wanted, None
    val = [path for path in found if path.stem[len(ANNOTATION_PREFIX) :].startswith("val")]
    if len(found) > 1 and len(val) != 1:
        names = ", ".join(path.name for path in found)
        raise InputError(
            f"not found, and {wanted.parent} holds {len(found)} annotation files ({names}): name one with --ann_file",
            wanted,
        )
    which = "the only annotation file there" if len(found) == 1 else "the only one of a val split there"
    taken = found[0] if len(found) == 1 else val[0]
    return taken, f"{wanted.name} is not in {wanted.parent}: using {taken} ({which})"

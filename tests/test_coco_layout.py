"""The COCO folder layout's two paths, and that they are each other's inverse on what
``retinamask data shapes`` writes."""

from pathlib import Path

from retinamask.data.shapes import generate_shapes_dataset
from retinamask.formats.coco_layout import annotation_file, image_dir_of


def test_the_layouts_paths_both_ways(tmp_path):
    assert annotation_file("coco", "val2017") == Path("coco/annotations/instances_val2017.json")
    assert image_dir_of("coco/annotations/instances_val2017.json") == Path("coco/val2017")
    assert image_dir_of("data/annotations/my_split.json") == Path("data/my_split")  # not instances_*: the stem
    written = generate_shapes_dataset(tmp_path / "shapes", num_train=0, num_val=2, seed=3)
    assert written["val_annotations"] == annotation_file(tmp_path / "shapes", "val")
    assert image_dir_of(written["val_annotations"]) == written["val_images"]

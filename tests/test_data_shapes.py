"""The synthetic shapes dataset: determinism, COCO validity, occlusion, sizes, CLI."""

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from pycocotools.coco import COCO

from retinamask.cli import main
from retinamask.core.errors import RetinaMaskError
from retinamask.data.shapes import generate_shapes_dataset, shapes_parameters
from retinamask.data.shapes_render import CATEGORIES, MIN_VISIBLE_AREA, render_shapes_image

NUM_VAL = 40

# pycocotools' decode trips a numpy 2 deprecation that is not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")


def _all_files(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


def _load_rgb(path):
    return cv2.imread(str(path), cv2.IMREAD_COLOR)[:, :, ::-1]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("shapes")
    return generate_shapes_dataset(root, 6, NUM_VAL, seed=11)


@pytest.fixture(scope="module")
def val_coco(dataset):
    return COCO(str(dataset["val_annotations"]))


def test_layout_and_returned_paths(dataset):
    root = dataset["root"]
    assert dataset["train_annotations"] == root / "annotations" / "instances_train.json"
    assert dataset["val_annotations"] == root / "annotations" / "instances_val.json"
    assert len(list(dataset["train_images"].glob("*.png"))) == 6
    assert len(list(dataset["val_images"].glob("*.png"))) == NUM_VAL
    assert dataset["skipped"] == []


def test_same_seed_gives_identical_files_whatever_the_workers(tmp_path):
    generate_shapes_dataset(tmp_path / "a", 3, 5, seed=5)
    generate_shapes_dataset(tmp_path / "b", 3, 5, seed=5, workers=2)
    files_a, files_b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    assert len(files_a) == 3 + 5 + 2
    assert files_a == files_b


def test_other_seed_and_other_split_give_other_images(tmp_path):
    generate_shapes_dataset(tmp_path / "a", 2, 2, seed=5)
    generate_shapes_dataset(tmp_path / "b", 2, 2, seed=6)
    a, b = _all_files(tmp_path / "a"), _all_files(tmp_path / "b")
    for name in ("train/000000.png", "val/000000.png", "val/000001.png"):
        assert a[name] != b[name]
    assert a["train/000000.png"] != a["val/000000.png"]
    assert a["annotations/instances_val.json"] != b["annotations/instances_val.json"]


def test_coco_loads_with_standard_keys(val_coco, dataset):
    assert len(val_coco.getImgIds()) == NUM_VAL
    image = val_coco.loadImgs(val_coco.getImgIds()[0])[0]
    assert set(image) >= {"id", "file_name", "width", "height"}
    annotation = val_coco.loadAnns(val_coco.getAnnIds())[0]
    assert set(annotation) >= {"id", "image_id", "category_id", "segmentation", "area", "bbox", "iscrowd"}
    assert annotation["iscrowd"] == 0
    assert isinstance(annotation["segmentation"]["counts"], str)
    ids = [a["id"] for a in val_coco.loadAnns(val_coco.getAnnIds())]
    assert len(set(ids)) == len(ids)
    info = json.loads(dataset["val_annotations"].read_text())["info"]
    assert info["generator_parameters"]["seed"] == 11


def test_masks_bbox_area_agree_with_the_pixels(val_coco, dataset):
    params = shapes_parameters(11)
    contrasts = []
    for image_id in val_coco.getImgIds()[:12]:
        record = val_coco.loadImgs(image_id)[0]
        pixels = _load_rgb(dataset["val_images"] / record["file_name"])
        assert pixels.shape == (record["height"], record["width"], 3)
        rendered, instances = render_shapes_image(params, "val", image_id - 1)
        assert np.array_equal(pixels, rendered)  # lossless: the file holds exactly what was drawn
        annotations = val_coco.loadAnns(val_coco.getAnnIds(imgIds=image_id))
        assert len(annotations) == len(instances)
        for annotation, (category_id, drawn_mask) in zip(annotations, instances):
            mask = val_coco.annToMask(annotation).astype(bool)
            assert annotation["category_id"] == category_id
            assert np.array_equal(mask, drawn_mask)
            assert annotation["area"] == mask.sum()
            ys, xs = np.nonzero(mask)
            x0, y0 = xs.min(), ys.min()
            assert annotation["bbox"] == [x0, y0, xs.max() - x0 + 1, ys.max() - y0 + 1]
            # No anti-aliased fringe: the mask's edge pixels have the shape's colour and
            # the pixels just outside it do not.
            as_u8 = mask.astype(np.uint8)
            kernel = np.ones((3, 3), np.uint8)
            inner = mask & ~cv2.erode(as_u8, kernel, borderType=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
            outer = cv2.dilate(as_u8, kernel).astype(bool) & ~mask
            colour = pixels[mask].astype(float).mean(axis=0)
            assert np.abs(pixels[inner].astype(float).mean(axis=0) - colour).max() < 25
            if outer.any():
                contrasts.append(np.linalg.norm(pixels[outer].astype(float).mean(axis=0) - colour))
    assert np.median(contrasts) > 50


def test_visible_masks_are_disjoint_and_occlusion_happens(val_coco):
    touching_pairs = 0
    for image_id in val_coco.getImgIds():
        masks = [val_coco.annToMask(a) for a in val_coco.loadAnns(val_coco.getAnnIds(imgIds=image_id))]
        assert masks, "every image has at least one instance"
        assert np.sum(masks, axis=0).max() <= 1
        for i, earlier in enumerate(masks):
            assert earlier.sum() >= MIN_VISIBLE_AREA
            grown = cv2.dilate(earlier, np.ones((3, 3), np.uint8)).astype(bool)
            touching_pairs += sum(bool((grown & later.astype(bool)).any()) for later in masks[i + 1 :])
    assert touching_pairs >= 5


def test_occluded_parts_belong_to_the_occluder(val_coco, dataset):
    """Where a later shape covers part of an earlier convex shape, those pixels are in
    the later mask only and show the later shape's colour."""
    convex = {c["id"] for c in CATEGORIES if c["name"] in ("circle", "rectangle", "triangle")}
    carved = 0
    for image_id in val_coco.getImgIds():
        pixels = _load_rgb(dataset["val_images"] / val_coco.loadImgs(image_id)[0]["file_name"]).astype(float)
        annotations = val_coco.loadAnns(val_coco.getAnnIds(imgIds=image_id))
        masks = [val_coco.annToMask(a).astype(bool) for a in annotations]
        for i, annotation in enumerate(annotations):
            if annotation["category_id"] not in convex:
                continue
            points = np.stack(np.nonzero(masks[i])[::-1], axis=1).astype(np.int32)
            hull = np.zeros(masks[i].shape, np.uint8)
            cv2.fillConvexPoly(hull, cv2.convexHull(points), 1)
            for later in masks[i + 1 :]:
                covered = hull.astype(bool) & later
                if covered.sum() < 10:
                    continue
                carved += 1
                assert not (covered & masks[i]).any()
                seen = pixels[covered].mean(axis=0)
                earlier_colour, later_colour = pixels[masks[i]].mean(axis=0), pixels[later].mean(axis=0)
                assert np.linalg.norm(seen - later_colour) < np.linalg.norm(seen - earlier_colour)
    assert carved >= 3


def test_categories_non_contiguous_named_and_all_used(val_coco):
    categories = val_coco.loadCats(val_coco.getCatIds())
    ids = sorted(c["id"] for c in categories)
    assert len(ids) >= 6
    assert ids != list(range(ids[0], ids[0] + len(ids)))
    assert len({c["name"] for c in categories}) == len(categories)
    assert all(c["supercategory"] for c in categories)
    assert ids == sorted(c["id"] for c in CATEGORIES)
    used = {a["category_id"] for a in val_coco.loadAnns(val_coco.getAnnIds())}
    assert used == set(ids)


def test_object_sizes_span_small_to_half_the_image(val_coco):
    sides, fractions = [], []
    for annotation in val_coco.loadAnns(val_coco.getAnnIds()):
        image = val_coco.loadImgs(annotation["image_id"])[0]
        side = max(annotation["bbox"][2:])
        sides.append(side)
        fractions.append(side / min(image["width"], image["height"]))
    sides = np.array(sides)
    assert sides.min() <= 12
    assert max(fractions) >= 0.4
    assert max(fractions) <= 0.52
    # log-uniform-ish: every octave from 8 px up holds a fair share
    counts = np.histogram(sides, [0, 16, 32, 64, 1000])[0]
    assert (counts >= 0.05 * len(sides)).all(), counts


def test_image_sizes_vary_and_are_not_square(val_coco):
    sizes = [(i["width"], i["height"]) for i in val_coco.loadImgs(val_coco.getImgIds())]
    assert all(192 <= w <= 384 and 192 <= h <= 384 for w, h in sizes)
    assert any(w > h for w, h in sizes) and any(h > w for w, h in sizes)
    assert len(set(sizes)) >= NUM_VAL // 2


def test_rerun_with_same_parameters_is_skipped_and_changes_regenerate(tmp_path):
    first = generate_shapes_dataset(tmp_path, 0, 4, seed=1)
    json_path = first["val_annotations"]
    stamp = json_path.stat().st_mtime_ns
    assert generate_shapes_dataset(tmp_path, 0, 4, seed=1)["skipped"] == ["val"]
    assert json_path.stat().st_mtime_ns == stamp

    (first["val_images"] / "000002.png").unlink()  # an incomplete split is regenerated
    assert generate_shapes_dataset(tmp_path, 0, 4, seed=1)["skipped"] == []
    assert (first["val_images"] / "000002.png").is_file()

    (first["val_images"] / ".000003.png.abc123.tmp").write_bytes(b"partial")  # an interrupted write
    generate_shapes_dataset(tmp_path, 0, 2, seed=1)  # fewer images: stale files go
    assert sorted(p.name for p in first["val_images"].iterdir()) == ["000000.png", "000001.png"]
    assert len(json.loads(json_path.read_text())["images"]) == 2


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(num_train=0, num_val=0, seed=0),
        dict(num_train=-1, num_val=2, seed=0),
        dict(num_train=0, num_val=2, seed=-1),
        dict(num_train=2, num_val=2, seed=0, val_split_name="train"),
        dict(num_train=0, num_val=2, seed=0, val_split_name="../x"),
        dict(num_train=0, num_val=2, seed=0, max_size_fraction=0.8),
        dict(num_train=0, num_val=2, seed=0, image_format="bmp"),
    ],
)
def test_bad_arguments_raise_user_errors(tmp_path, kwargs):
    with pytest.raises(RetinaMaskError):
        generate_shapes_dataset(tmp_path, **kwargs)
    assert not (tmp_path / "annotations").exists()


def test_cli_end_to_end(tmp_path, capsys):
    out = tmp_path / "data"
    argv = ["data", "shapes", "--out", str(out), "--num-images", "3", "--seed", "4", "--train-images", "2"]
    assert main(argv) == 0
    assert "written" in capsys.readouterr().out
    train = COCO(str(out / "annotations" / "instances_train.json"))
    assert len(train.getImgIds()) == 2
    assert len(list((out / "val").glob("*.png"))) == 3

    assert main(argv) == 0
    assert "up to date" in capsys.readouterr().out

    assert main(["data", "shapes", "--out", str(out), "--num-images", "2", "--split-name", "test"]) == 0
    assert (out / "annotations" / "instances_test.json").is_file()
    assert len(list((out / "test").glob("*.png"))) == 2


def test_cli_bad_arguments_give_one_line_errors(tmp_path, capsys):
    out = str(tmp_path / "data")
    bad = (["--num-images", "-3"], ["--num-images", "2", "--seed", "-1"], ["--num-images", "2", "--workers", "-1"])
    for extra in bad:
        assert main(["data", "shapes", "--out", out, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and "\n" not in err
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "shapes", "--out", out])  # --num-images is required
    assert exit_info.value.code == 2

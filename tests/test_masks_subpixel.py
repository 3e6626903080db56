"""The sub-pixel mask paste (``paste="subpixel"``): each pixel samples the M x M grid at its centre,
checked against torch's grid_sample written out independently; its fused RLE route; and what it is
for: a small object's own mask, projected as the training targets are and pasted back, matches the
object more closely than through the original's integer-box paste."""

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
import torch.nn.functional as F

from retinamask.decode.outputs import decode_outputs
from retinamask.modeling.losses import project_masks_on_boxes
from retinamask.ops.masks import encode_masks, paste_and_encode_masks, paste_masks, paste_masks_subpixel


def _grid_sample_paste(probs, boxes, height, width, threshold=0.5):
    """Reference: the box's span [x1, x2 + 1] holds the M cells; pixel centres sampled bilinearly
    (align_corners=False: cell centres at (i + 0.5) / M of the span, zeros beyond the grid)."""
    masks = []
    for prob, (x1, y1, x2, y2) in zip(probs, boxes):
        xs = (np.arange(width) + 0.5 - x1) / (x2 + 1 - x1) * 2 - 1
        ys = (np.arange(height) + 0.5 - y1) / (y2 + 1 - y1) * 2 - 1
        grid_y, grid_x = np.meshgrid(ys, xs, indexing="ij")
        grid = torch.from_numpy(np.stack([grid_x, grid_y], -1)[None]).to(torch.float64)
        sampled = F.grid_sample(torch.from_numpy(prob).to(torch.float64)[None, None], grid, align_corners=False)
        masks.append((sampled[0, 0].numpy() > threshold).astype(np.uint8))
    return np.stack(masks)


@pytest.fixture
def random_masks():
    rng = np.random.default_rng(3)
    height, width, n = 70, 90, 12
    probs = rng.random((n, 28, 28)).astype(np.float32)
    x1 = rng.uniform(-15, 80, n)
    y1 = rng.uniform(-15, 60, n)
    sizes = rng.uniform(3, 45, (n, 2))
    boxes = np.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], 1).astype(np.float32)
    return probs, boxes, height, width


def test_subpixel_paste_samples_each_pixel_centre(random_masks):
    probs, boxes, height, width = random_masks
    ours, areas = paste_masks_subpixel(probs, boxes, height, width, return_areas=True)
    reference = _grid_sample_paste(probs, boxes, height, width)
    assert ours.shape == reference.shape == (len(probs), height, width) and ours.dtype == np.uint8
    # OpenCV interpolates at 1/32-pixel positions: a pixel within that of the 0.5 level may flip
    differ = np.count_nonzero(ours != reference)
    assert differ <= 0.002 * reference.sum(), differ
    assert reference.sum() > 1000  # the boxes do paste something
    np.testing.assert_array_equal(areas, ours.reshape(len(probs), -1).sum(1))


def test_subpixel_fused_rle_equals_the_pasted_masks(random_masks):
    probs, boxes, height, width = random_masks
    masks, areas = paste_masks_subpixel(probs, boxes, height, width, return_areas=True)
    rles, fused_areas = paste_and_encode_masks(probs, boxes, height, width, paste="subpixel", return_areas=True)
    assert rles == encode_masks(masks)
    np.testing.assert_array_equal(fused_areas, areas)


def _small_star(height=40, width=40):
    """A 13-px five-pointed star (binary) at a non-integer centre."""
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    angle = np.arctan2(ys - 17.3, xs - 21.6)
    radius = np.hypot(ys - 17.3, xs - 21.6)
    return (radius < 3.5 + 3.0 * (np.cos(5 * angle) + 1) / 2).astype(np.uint8)


def test_a_small_objects_own_mask_comes_back_sharper_than_through_the_original_paste():
    mask = _small_star()
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    box = np.array([[cols[0], rows[0], cols[-1], rows[-1]]], np.float32)  # +1 convention: the last pixel
    probs = project_masks_on_boxes(torch.from_numpy(mask[None]), torch.from_numpy(box), torch.tensor([0])).numpy()
    truth = mask_util.encode(np.asfortranarray(mask[:, :, None]))

    def iou(pasted):
        return mask_util.iou(encode_masks(pasted), truth, [0])[0, 0]

    sharp, original = iou(paste_masks_subpixel(probs, box, *mask.shape)), iou(paste_masks(probs, box, *mask.shape))
    assert sharp > 0.95 and sharp > original + 0.03, (sharp, original)


def test_decode_outputs_takes_the_subpixel_paste(random_masks):
    probs, boxes, height, width = random_masks
    n = len(probs)
    outputs = (boxes, np.arange(1, n + 1) % 3 + 1, np.linspace(0.9, 0.2, n, dtype=np.float32), probs[:, None])
    detections = decode_outputs(outputs, "end2end", (height, width), (height, width), mask_paste="subpixel")
    np.testing.assert_array_equal(detections.masks, paste_masks_subpixel(probs, detections.boxes, height, width))
    with pytest.raises(ValueError, match="mask_paste"):
        decode_outputs(outputs, "end2end", (height, width), (height, width), mask_paste="nearest")


def test_the_subpixel_convention_is_the_original_with_the_subpixel_paste(random_masks):
    from retinamask.decode.coco_results import image_coco_results

    probs, boxes, height, width = random_masks
    n = len(probs)
    outputs = (boxes, np.arange(1, n + 1) % 3 + 1, np.linspace(0.9, 0.2, n, dtype=np.float32), probs[:, None])
    args = (outputs, "end2end", 7, (height, width), (height, width), [1, 3, 5])
    original, _ = image_coco_results(*args)
    sharp, areas = image_coco_results(*args, convention="subpixel")
    detections = decode_outputs(outputs, "end2end", (height, width), (height, width), mask_paste="subpixel")
    expected = encode_masks(detections.masks)
    assert [r["segmentation"] for r in sharp] == expected
    assert [r["segmentation"] for r in original] != expected  # the original's paste differs on these boxes
    for ours, theirs in zip(sharp, original):
        assert {k: v for k, v in ours.items() if k != "segmentation"} == {
            k: v for k, v in theirs.items() if k != "segmentation"
        }
    np.testing.assert_array_equal(areas, detections.mask_areas)


def test_the_predictor_and_predict_take_the_subpixel_paste(tmp_path, capsys):
    from PIL import Image

    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.cli import main
    from retinamask.config.shipped import shipped_onnx_path
    from retinamask.data.shapes import generate_shapes_dataset

    data = generate_shapes_dataset(tmp_path / "shapes", num_train=0, num_val=2, seed=7)
    image_path = sorted(data["val_images"].iterdir())[0]
    image = np.asarray(Image.open(image_path).convert("RGB"))
    sharp = OnnxPredictor(shipped_onnx_path(), backend="onnxruntime", mask_paste="subpixel")(image)
    plain = OnnxPredictor(shipped_onnx_path(), backend="onnxruntime")(image)
    assert len(sharp.boxes) > 0
    np.testing.assert_array_equal(sharp.boxes, plain.boxes)
    np.testing.assert_array_equal(sharp.masks, paste_masks_subpixel(sharp.mask_probs, sharp.boxes, *image.shape[:2]))
    assert (sharp.masks != plain.masks).any()
    with pytest.raises(ValueError, match="mask_paste must be one of"):
        OnnxPredictor(shipped_onnx_path(), mask_paste="nearest")

    argv = ["predict", "--input", str(image_path), "--output", str(tmp_path / "out"), "--mask-paste", "subpixel"]
    assert main([*argv, "--model", str(shipped_onnx_path()), "--backend", "onnxruntime"]) == 0
    assert (tmp_path / "out" / f"{image_path.stem}.json").exists()
    capsys.readouterr()
    assert main([*argv, "--url", "http://127.0.0.1:9"]) == 2
    assert "--mask-paste is the server's with --url" in capsys.readouterr().err

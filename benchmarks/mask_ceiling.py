"""The segm mAP that a perfect model would reach with M x M masks: the ceiling the mask head's
resolution puts on the embedded model (issue 18).

Every ground-truth object becomes one result with score 1: its ground-truth box, and as its mask the
ground-truth mask projected onto that box at M x M (``project_masks_on_boxes``, the training target:
each cell holds the fraction of it the object covers) and pasted back with the original's paste
(``paste_and_encode_masks``, threshold 0.5), i.e. the best a model could predict at that resolution.
"binary" rows threshold the cells at 0.5 first (the original's binary targets). bbox mAP of these
results is 1 by construction; what segm loses is the resolution (and the paste) alone. The
"subpixel" row pastes with ``paste="subpixel"`` instead. Then the shipped model (its ONNX, OpenVINO or
ONNX Runtime as ``auto`` picks, fp32) on the same images, its masks through either paste.

    .venv/bin/python -m benchmarks.mask_ceiling [--workdir DIR] [--num-images 200] [--seed 7]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from pycocotools.coco import COCO

from benchmarks.tables import number, table_head, table_row
from retinamask.apps.demo import DEMO_VAL_SEED
from retinamask.data.shapes import generate_shapes_dataset
from retinamask.evaluation.coco_eval import evaluate_coco
from retinamask.modeling.losses import project_masks_on_boxes
from retinamask.ops.coco_results import detections_to_coco_results
from retinamask.ops.masks import paste_and_encode_masks

PASTES = ("original", "subpixel")

RESOLUTIONS = (14, 28, 56)
COLUMNS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def ceiling_results(coco, resolution, binary, paste="original"):
    """One score-1 result per ground-truth object, its mask at ``resolution`` (see the module)."""
    results = []
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        annotations = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        if not annotations:
            continue
        masks = torch.from_numpy(np.stack([coco.annToMask(a) for a in annotations]))
        xywh = np.array([a["bbox"] for a in annotations], dtype=np.float64)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:] - 1.0], axis=1).astype(np.float32)
        index = torch.arange(len(annotations))
        probs = project_masks_on_boxes(masks, torch.from_numpy(boxes), index, resolution).numpy()
        if binary:
            probs = (probs >= 0.5).astype(np.float32)
        rles = paste_and_encode_masks(probs, boxes, info["height"], info["width"], paste=paste)
        categories = [a["category_id"] for a in annotations]
        results += detections_to_coco_results(image_id, boxes, np.ones(len(boxes)), categories, rles)
    return results


def shipped_model_results(coco, image_dir):
    """{paste: COCO results} of the shipped model over the split's images, its masks pasted both ways."""
    from PIL import Image

    from retinamask.apps.onnx_predictor import OnnxPredictor
    from retinamask.config.shipped import shipped_onnx_path

    predictor = OnnxPredictor(shipped_onnx_path())
    category_ids = sorted(coco.getCatIds())
    results = {paste: [] for paste in PASTES}
    for image_id in sorted(coco.getImgIds()):
        info = coco.loadImgs(image_id)[0]
        with Image.open(Path(image_dir) / info["file_name"]) as image:
            prepared = predictor.prepare(np.asarray(image.convert("RGB")))
        detections = predictor.finish(predictor.run([prepared])[0], prepared, paste=False)
        categories = np.asarray(category_ids)[detections.labels - 1]
        for paste in PASTES:
            rles = paste_and_encode_masks(
                detections.mask_probs, detections.boxes, info["height"], info["width"], paste=paste
            )
            results[paste] += detections_to_coco_results(
                image_id, detections.boxes, detections.scores, categories, rles
            )
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the generated split here")
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--seed", type=int, default=DEMO_VAL_SEED, help="the shapes split (default: the demo's)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        data = generate_shapes_dataset(
            workdir / f"seed{args.seed}", num_train=0, num_val=args.num_images, seed=args.seed
        )
        coco = COCO(str(data["val_annotations"]))
        print(f"segm mAP of perfect M x M masks on ground-truth boxes, seed {args.seed}, {args.num_images} images\n")
        print("\n".join(table_head("mask M x M", "targets", *(f"segm {c}:" for c in COLUMNS))))
        rows = {}
        cases = [(m, binary, "original") for m in RESOLUTIONS for binary in (False, True)] + [(28, False, "subpixel")]
        for resolution, binary, paste in cases:
            results = ceiling_results(coco, resolution, binary, paste)
            stats = evaluate_coco(coco.dataset, results, iou_types=("segm",))["segm"]
            rows[(resolution, binary, paste)] = stats
            label = f"{resolution}" + (", sub-pixel paste" if paste == "subpixel" else "")
            kind = "binary" if binary else "fractional (trained)"
            print(table_row(label, kind, *(number(stats[c], 3) for c in COLUMNS)))
        print("\nthe shipped model on the same images, its masks through each paste\n")
        print("\n".join(table_head("paste", "bbox AP:", *(f"segm {c}:" for c in COLUMNS))))
        for paste, results in shipped_model_results(coco, data["val_images"]).items():
            stats = evaluate_coco(coco.dataset, results)
            rows[("shipped", paste)] = stats["segm"]
            print(table_row(paste, number(stats["bbox"]["AP"], 3), *(number(stats["segm"][c], 3) for c in COLUMNS)))
    return rows


if __name__ == "__main__":
    main()

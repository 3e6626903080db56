"""Seed-layout model outputs made from a COCO ground truth, for evaluation tests: 1000
candidates per image written as the seed's legacy ``{name}_1.bin`` ... ``_4.bin``."""

import cv2
import numpy as np
import pycocotools.mask as mask_util

S = 448  # model input size (the demo's)
ROWS = 1000


def write_seed_outputs(folder, dataset, seed):
    """1000 candidates per image from the ground truth: 1-3 jittered copies of each object (some
    pushed past the border), fillers that NMS removes (odd images: < 100 survive) or keeps (even
    images: > 100 survive), scores rounded to 0.01 (ties); masks from the object's own mask."""
    rng = np.random.default_rng(seed)
    label_of = {c["id"]: i + 1 for i, c in enumerate(dataset["categories"])}
    by_image = {}
    for ann in dataset["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in dataset["images"]:
        h, w = image["height"], image["width"]
        ratio = S / max(h, w)
        rows = []
        for ann in by_image.get(image["id"], []):
            x, y, bw, bh = ann["bbox"]
            mask = mask_util.decode(ann["segmentation"])[int(y) : int(np.ceil(y + bh)), int(x) : int(np.ceil(x + bw))]
            probs = cv2.resize(mask.astype(np.float32), (28, 28), interpolation=cv2.INTER_LINEAR)
            for copy in range(rng.integers(1, 4)):
                box = np.array([x, y, x + bw, y + bh]) + rng.normal(0, 0.06, 4) * [bw, bh, bw, bh]
                if copy == 1:  # past the border of the image (clipped back by the conventions differently)
                    box[2] += rng.uniform(0, 6)
                    box[3] += rng.uniform(0, 6)
                noisy = np.clip(probs * 0.9 + 0.05 + rng.normal(0, 0.08, probs.shape), 0, 1)
                rows.append((box, label_of[ann["category_id"]], rng.uniform(0.3, 1.0), noisy))
        base = list(rows) or [(np.array([0.3 * w, 0.3 * h, 0.6 * w, 0.6 * h]), 1, 0.5, np.full((28, 28), 0.6))]
        while len(rows) < ROWS:
            if image["id"] % 2:  # near-copies of an object: suppressed by NMS
                box, label, _, probs = base[rng.integers(len(base))]
                box = box + rng.normal(0, 0.01, 4) * (box[2] - box[0] + 1)
            else:
                bw, bh = rng.uniform(4, w * 0.5), rng.uniform(4, h * 0.5)
                x0, y0 = rng.uniform(-4, w - bw + 4), rng.uniform(-4, h - bh + 4)
                box, label = np.array([x0, y0, x0 + bw, y0 + bh]), int(rng.integers(1, len(label_of) + 1))
                probs = np.clip(rng.uniform(0, 1, (28, 28)), 0, 1)
            rows.append((box, label, rng.uniform(0.01, 0.35), probs))
        boxes = np.clip(np.array([r[0] for r in rows[:ROWS]]) * ratio, 0, S).astype(np.float32)
        labels = np.array([r[1] for r in rows[:ROWS]], dtype=np.int32)
        scores = np.round(np.array([r[2] for r in rows[:ROWS]]), 2).astype(np.float32)
        masks = np.stack([r[3] for r in rows[:ROWS]]).astype(np.float32)[:, None]
        name = image["file_name"].rsplit(".", 1)[0]
        for index, array in enumerate((boxes, labels, scores, masks), start=1):
            array.tofile(folder / f"{name}_{index}.bin")

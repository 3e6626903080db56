"""Prediction: the detections of one image in original image coordinates (torch-free)."""

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Prediction:
    """Detections of one image, in original image coordinates, sorted by score.

    boxes float32 [D, 4] xyxy; scores float32 [D]; labels int64 [D] (1-based);
    class_names list of D names; masks uint8 [D, H, W] (0/1); mask_probs float32 [D, 28, 28];
    image_size (H, W).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list
    masks: np.ndarray
    mask_probs: np.ndarray
    image_size: tuple
    extras: dict = field(default_factory=dict)

    def __len__(self):
        return len(self.scores)

    def to_json(self, score_threshold=0.0):
        """A JSON-ready dict; masks as COCO RLE."""
        from retinamask.ops.masks import encode_masks

        keep = np.flatnonzero(self.scores >= score_threshold)
        rles = encode_masks(self.masks[keep]) if len(keep) else []
        return {
            "height": int(self.image_size[0]),
            "width": int(self.image_size[1]),
            "detections": [
                {
                    "label": int(self.labels[i]),
                    "class_name": self.class_names[i],
                    "score": round(float(self.scores[i]), 6),
                    "box_xyxy": [round(float(v), 3) for v in self.boxes[i]],
                    "mask_rle": rle,
                }
                for i, rle in zip(keep, rles)
            ],
        }

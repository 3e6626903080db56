"""Detections: the one result type, the detections of one image in its own pixels (torch-free).

Made by the PyTorch ``Predictor`` (engine), the ``OnnxPredictor`` (apps) and decode (raw model
outputs -> detections, used by evaluate and Ray). Turned into predict's JSON and COCO results by
:mod:`retinamask.ops.coco_results`. ``Prediction`` is its public name since the first release.
"""

from dataclasses import dataclass

import numpy as np


@dataclass
class Detections:
    """Detections of one image, in the original image's pixels.

    With N detections and an image of ``image_hw`` = (H, W):

    * boxes float32 [N, 4] x1, y1, x2, y2 (inclusive pixels);
    * scores float32 [N]: descending for the predictors; for decode, the model's order
      (end2end) or the NMS order (seed);
    * labels int64 [N], 1-based contiguous (label L is class ``L - 1`` of the model);
    * class_names: list of N names (None where decode made them: it knows no names);
    * masks uint8 [N, H, W] of 0/1, stored column-major (``ops.masks.paste_masks``), or None
      where they were not pasted;
    * mask_probs float32 [N, M, M]: the model's mask probabilities for each row's class (or None);
    * image_hw (H, W) of the original image;
    * mask_areas int64 [N]: pixel counts of ``masks`` (None where not counted).

    The label dtype does not reach any output: predict's JSON and COCO results write Python ints.
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    class_names: list | None = None
    masks: np.ndarray | None = None
    mask_probs: np.ndarray | None = None
    image_hw: tuple | None = None
    mask_areas: np.ndarray | None = None

    def __len__(self):
        return len(self.scores)

    def sorted_by_score(self):
        """These detections by descending score (a stable sort: ties keep their order)."""
        return self.take(np.argsort(-self.scores, kind="stable"))

    def take(self, indices):
        """The detections at ``indices`` (int array), in that order."""
        indices = np.asarray(indices, dtype=np.int64)

        def pick(values):
            if values is None:
                return None
            return [values[i] for i in indices] if isinstance(values, list) else values[indices]

        return Detections(
            boxes=self.boxes[indices],
            scores=self.scores[indices],
            labels=self.labels[indices],
            class_names=pick(self.class_names),
            masks=pick(self.masks),
            mask_probs=pick(self.mask_probs),
            image_hw=self.image_hw,
            mask_areas=pick(self.mask_areas),
        )


Prediction = Detections  # the public name (retinamask.Prediction, README): the same type

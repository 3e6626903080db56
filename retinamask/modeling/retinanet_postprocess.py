"""RetinaNet inference: candidates per level -> decoded boxes -> class-wise NMS -> top detections.

Reproduces the original's ``rpn/retinanet_infer.py`` (see shared/reference/README.md):
strict score threshold, top-n per level per image over (anchor, class) pairs, decoding
with the +1 convention, clipping to the unpadded image, class-wise NMS with +1 areas and a
detections-per-image cap that keeps ties (kthvalue).
"""

import torch
from torchvision.ops import batched_nms

from retinamask.modeling.box_coder import BoxCoder
from retinamask.modeling.retinanet_head import flatten_level


def clip_boxes(boxes, height, width):
    """Clip xyxy boxes [K, 4] to [0, width - 1] x [0, height - 1] (empty boxes are kept)."""
    x1 = boxes[:, 0].clamp(min=0, max=width - 1)
    y1 = boxes[:, 1].clamp(min=0, max=height - 1)
    x2 = boxes[:, 2].clamp(min=0, max=width - 1)
    y2 = boxes[:, 3].clamp(min=0, max=height - 1)
    return torch.stack((x1, y1, x2, y2), dim=1)


def nms_plus_one(boxes, scores, labels, iou_threshold):
    """Class-wise NMS with the original's +1 box areas: indices kept, by decreasing score.

    Adding 1 to x2, y2 makes torchvision's areas and intersections those of the original
    (it differs only where an IoU equals the threshold exactly: the original suppresses, we keep).
    """
    grown = torch.cat((boxes[:, :2], boxes[:, 2:] + 1), dim=1)
    return batched_nms(grown, scores, labels, iou_threshold)


def keep_top_with_ties(scores, k):
    """Indices of the entries whose score is >= the k-th largest score (all if len <= k)."""
    n = scores.shape[0]
    if n <= k or k <= 0:
        return torch.arange(n, device=scores.device)
    threshold, _ = torch.kthvalue(scores.cpu(), n - k + 1)
    return torch.nonzero(scores >= threshold.item()).squeeze(1)


class RetinaNetPostProcessor:
    """Turns head outputs into detections, one dict per image.

    __call__(anchors, logits, box_regression, image_sizes) with anchors[l] [H_l*W_l*A, 4],
    logits[l] [N, A*K, H_l, W_l], box_regression[l] [N, A*4, H_l, W_l], image_sizes [(h, w)] ->
    [{"boxes": [D, 4] xyxy, "scores": [D], "labels": [D] int64 in 1..K}], sorted by score.
    """

    def __init__(
        self,
        num_classes,
        score_threshold=0.05,
        pre_nms_top_n=1000,
        nms_threshold=0.4,
        detections_per_image=100,
        box_coder=None,
    ):
        self.num_classes = num_classes
        self.score_threshold = score_threshold
        self.pre_nms_top_n = pre_nms_top_n
        self.nms_threshold = nms_threshold
        self.detections_per_image = detections_per_image
        self.box_coder = box_coder or BoxCoder()

    def candidates(self, anchors, logits, box_regression, image_sizes):
        """Per-image candidates of all levels: list of dicts boxes/scores/labels/levels/anchor_index."""
        per_image = [[] for _ in image_sizes]
        for level, (level_anchors, level_logits, level_reg) in enumerate(zip(anchors, logits, box_regression)):
            # float32 under autocast too (as the export graphs): decoding, NMS offsets, numpy outputs
            scores, deltas = flatten_level(level_logits.float(), level_reg.float(), self.num_classes)
            scores = scores.sigmoid()
            is_candidate = scores > self.score_threshold
            top_n = is_candidate.flatten(1).sum(1).clamp(max=self.pre_nms_top_n)
            for i, (h, w) in enumerate(image_sizes):
                cand_scores, order = scores[i][is_candidate[i]].topk(int(top_n[i]), sorted=False)
                anchor_index, class_index = is_candidate[i].nonzero()[order].unbind(1)
                boxes = self.box_coder.decode(deltas[i][anchor_index], level_anchors[anchor_index])
                per_image[i].append(
                    {
                        "boxes": clip_boxes(boxes, h, w),
                        "scores": cand_scores,
                        "labels": class_index + 1,
                        "levels": torch.full_like(anchor_index, level),
                        "anchor_index": anchor_index,
                    }
                )
        return [{k: torch.cat([c[k] for c in levels]) for k in levels[0]} for levels in per_image]

    def __call__(self, anchors, logits, box_regression, image_sizes):
        results = []
        for cand in self.candidates(anchors, logits, box_regression, image_sizes):
            keep = nms_plus_one(cand["boxes"], cand["scores"], cand["labels"], self.nms_threshold)
            keep = keep[keep_top_with_ties(cand["scores"][keep], self.detections_per_image)]
            results.append({k: cand[k][keep] for k in ("boxes", "scores", "labels")})
        return results

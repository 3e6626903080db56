"""Export-friendly wrappers around a RetinaMask: fixed canvas, static output shapes, no Python
control flow on tensor values, so that ``torch.onnx.export(dynamo=True)`` gives a graph
without If/Loop nodes.

* :class:`End2EndGraph` -- the original's inference (threshold, per-level top-n, decode, clip,
  class-wise NMS, top-K, mask head on the kept boxes) with K padded output rows.
* :class:`SeedGraph` -- the Ascend seed's graph: global top-1000 candidates, no NMS, mask head
  on all of them (NMS happens on the host).

Both take ``images`` [B, 3, S, S] (normalised BGR, zero padded, see docs/onnx_contract.md) and
reuse the model's modules and building blocks; they add only the batching, static-shape and
padding logic around them. End2EndGraph also takes a canvas of any size with the images' true
sizes (the ``original`` / ``buckets`` resize policies, exported with dynamic H and W).
"""

import copy

import torch
from torch import nn
from torchvision.ops import nms

from retinamask.core.contract import OUTPUT_NAMES, SEED_NUM_CANDIDATES
from retinamask.core.errors import ConfigError
from retinamask.modeling.layers import FrozenBatchNorm2d
from retinamask.modeling.retinanet_head import flatten_level
from retinamask.modeling.retinanet_postprocess import clip_boxes

END2END_OUTPUTS = OUTPUT_NAMES["end2end"]
SEED_OUTPUTS = OUTPUT_NAMES["seed"]


def _check_model(model, canvas_side):
    if model.mask is None:
        raise ConfigError("the export layouts need the mask head: set MODEL.MASK_ON True")
    if canvas_side <= 0 or canvas_side % 32:
        # The FPN's nearest x2 top-down path needs C3..C5 sizes that halve exactly.
        raise ConfigError(f"input size must be a positive multiple of 32, got {canvas_side}")


def _compute_dtype(model):
    return next(model.backbone.parameters()).dtype


def dense_predictions(model, images):
    """Backbone + RetinaNet head on ``images`` [B, 3, S, S].

    Returns (features [P3..P7], levels) where levels is a list over P3..P7 of
    (scores [B, HWA, C] float32 sigmoid, deltas [B, HWA, 4] float32, anchors [HWA, 4] float32),
    anchor order (y, x, a) and C = foreground classes (label = class index + 1).
    """
    features = model.backbone(images.to(_compute_dtype(model)))
    anchors, logits, box_regression = model.rpn(features)
    num_classes = model.rpn.head.num_classes
    levels = []
    for level_anchors, level_logits, level_regression in zip(anchors, logits, box_regression):
        scores, deltas = flatten_level(level_logits.float(), level_regression.float(), num_classes)
        levels.append((scores.sigmoid(), deltas, level_anchors.float()))
    return features, levels


def top_candidates(scores, deltas, anchors, k, box_coder):
    """Top ``k`` (anchor, class) pairs per image, decoded.

    scores [B, N, C], deltas [B, N, 4], anchors [N, 4] -> (boxes [B, k, 4] unclipped,
    scores [B, k] descending, labels [B, k] int64 1-based).
    """
    num_classes = scores.shape[2]
    top_scores, index = scores.flatten(1).topk(k, dim=1)
    anchor_index = torch.div(index, num_classes, rounding_mode="floor")
    labels = index - anchor_index * num_classes + 1
    top_deltas = deltas.gather(1, anchor_index.unsqueeze(-1).expand(-1, -1, 4))
    boxes = box_coder.decode(top_deltas, anchors[anchor_index])
    return boxes, top_scores, labels


def nms_by_group(boxes, scores, groups, iou_threshold, max_coordinate=None, pitch=None):
    """NMS within each group (class, or image x class) with the original's +1 box areas.

    boxes [M, 4] xyxy within [0, max_coordinate - 1], scores [M], groups [M] int64 >= 0 ->
    indices kept [M'], by decreasing score. A single ``torchvision.ops.nms`` (one ONNX
    NonMaxSuppression) on boxes moved so that groups never overlap; as in
    ``nms_plus_one``, x2 + 1 and y2 + 1 give torchvision the original's +1 geometry.
    """
    grown = torch.cat((boxes[:, :2], boxes[:, 2:] + 1), dim=1)
    # Tiles on a 2-D grid rather than one long row: offsets stay small, so float32 keeps the
    # coordinates to ~1e-3 px (a 1-D offset of 80 classes x 1345 px would round to ~8e-3 px).
    if pitch is None:  # a float, or a 0-d tensor (canvases of any size): > every grown coordinate
        pitch = float(max_coordinate + 1)
    columns = 16
    column = torch.remainder(groups, columns).to(boxes.dtype)
    row = torch.div(groups, columns, rounding_mode="floor").to(boxes.dtype)
    offsets = torch.stack((column, row, column, row), dim=1) * pitch
    return nms(grown + offsets, scores, iou_threshold)


def _mask_probabilities(model, features, boxes, labels, image_index):
    """Mask head on the given boxes: boxes [R, 4], labels [R] (1-based), image_index [R] ->
    [R, M, M] float32 probabilities of each box's class channel."""
    rois = torch.cat((image_index.unsqueeze(1).to(boxes.dtype), boxes), dim=1)
    return model.mask(features, rois, labels).float().sigmoid()


class End2EndGraph(nn.Module):
    """The original's inference as one graph with K padded rows per image.

    forward(images [B, 3, S, S]) -> (boxes [B, K, 4] float32 (canvas pixels, clipped to
    [0, S-1]), labels [B, K] int32 (1-based, -1 on padding), scores [B, K] float32 (descending,
    0 on padding), masks [B, K, 1, M, M] float32 (probability of the row's class, 0 on padding)).
    With ``canvas_side`` None the canvas may have any size: forward(images [B, 3, H, W],
    image_sizes [B, 2] int64 (h, w) of each image's valid region), boxes clipped to
    [0, w-1] x [0, h-1] per image, as the original clips them (``candidates_in_images``).

    Per level: sigmoid scores, top ``pre_nms_top_n`` (anchor, class) pairs above the score
    threshold, decoded; class-wise NMS per image; the top K of what survives; the mask head
    runs only on those rows. The thresholds come from the model's post-processor
    (RETINANET.INFERENCE_TH, PRE_NMS_TOP_N, NMS_TH).

    Differences to the eager model: a static top-K cannot keep ties at the K-th score (the
    eager ``keep_top_with_ties`` does), and every one of the K rows gets a mask, whereas the
    eager model keeps only its NUM_MASKS_TEST (50) best detections; K = 50 gives the
    original's 50.
    """

    def __init__(self, model, canvas_side, max_detections=100):
        super().__init__()
        _check_model(model, canvas_side or 32)
        if max_detections <= 0:
            raise ConfigError(f"max detections must be positive, got {max_detections}")
        postprocessor = model.rpn.postprocessor
        self.model = model
        self.canvas_side = int(canvas_side) if canvas_side else None  # None: any canvas, with image_sizes
        self.max_detections = int(max_detections)
        self.num_classes = model.rpn.head.num_classes
        self.score_threshold = float(postprocessor.score_threshold)
        self.pre_nms_top_n = int(postprocessor.pre_nms_top_n)
        self.nms_threshold = float(postprocessor.nms_threshold)
        self.box_coder = postprocessor.box_coder

    def forward(self, images, image_sizes=None):
        features, levels = dense_predictions(self.model, images)
        if self.canvas_side is None:
            boxes, scores, labels = self.candidates_in_images(levels, image_sizes)
            # tiles as wide as the largest valid region: groups never overlap
            pitch = image_sizes.max().to(boxes.dtype) + 1
        else:
            boxes, scores, labels = self.candidates(levels)
            pitch = float(self.canvas_side + 1)
        batch, num_candidates = scores.shape
        k = self.max_detections

        # NMS over the candidates above the threshold of all images at once (groups image x class).
        flat_scores = scores.reshape(-1)
        above = torch.nonzero(flat_scores > self.score_threshold).squeeze(1)
        image_index = torch.div(above, num_candidates, rounding_mode="floor")
        groups = image_index * self.num_classes + labels.reshape(-1)[above] - 1
        keep = above[
            nms_by_group(boxes.reshape(-1, 4)[above], flat_scores[above], groups, self.nms_threshold, pitch=pitch)
        ]

        # Top K per image among the survivors; -1 marks the rest (sigmoid scores are >= 0).
        kept_scores = torch.full_like(flat_scores, -1.0).index_put((keep,), flat_scores[keep])
        kept_scores = kept_scores.view(batch, num_candidates)
        if num_candidates < k:  # a tiny canvas: fewer candidates than output rows
            kept_scores = nn.functional.pad(kept_scores, (0, k - num_candidates), value=-1.0)
            boxes = nn.functional.pad(boxes, (0, 0, 0, k - num_candidates))
            labels = nn.functional.pad(labels, (0, k - num_candidates), value=1)
        top_scores, order = kept_scores.topk(k, dim=1)
        valid = top_scores >= 0
        boxes = boxes.gather(1, order.unsqueeze(-1).expand(-1, -1, 4)) * valid.unsqueeze(-1)
        labels = torch.where(valid, labels.gather(1, order), -1)
        scores = torch.where(valid, top_scores, 0.0)
        masks = self.masks(features, boxes, labels, valid)
        return boxes, labels.to(torch.int32), scores, masks

    def candidates(self, levels):
        """Per level the top ``pre_nms_top_n`` pairs, decoded and clipped to the canvas.

        Returns boxes [B, N, 4], scores [B, N], labels [B, N] (int64, 1-based), all levels
        concatenated (N = sum over levels of min(pre_nms_top_n, H*W*A*C)). The score
        threshold is applied afterwards: the top-n above the threshold are exactly the
        top-n overall that pass it.
        """
        boxes, scores, labels = [], [], []
        for level_scores, deltas, anchors in levels:
            k = min(self.pre_nms_top_n, level_scores.shape[1] * level_scores.shape[2])
            level_boxes, level_top, level_labels = top_candidates(level_scores, deltas, anchors, k, self.box_coder)
            boxes.append(level_boxes)
            scores.append(level_top)
            labels.append(level_labels)
        boxes = torch.cat(boxes, dim=1)
        canvas = self.canvas_side
        boxes = clip_boxes(boxes.reshape(-1, 4), canvas, canvas).view(boxes.shape)
        return boxes, torch.cat(scores, dim=1), torch.cat(labels, dim=1)

    def candidates_in_images(self, levels, image_sizes):
        """:meth:`candidates` for a canvas of any size: boxes clipped to each image's valid region
        ``image_sizes`` [B, 2] (h, w) as the original clips them ([0, w-1] x [0, h-1]).

        Every level is first extended by ``ceil(pre_nms_top_n / C)`` anchors that score -1, so
        that its top-n has a static size on any canvas (a small canvas has fewer (anchor,
        class) pairs than pre_nms_top_n); those rows never pass the score threshold.
        """
        boxes, scores, labels = [], [], []
        for level_scores, deltas, anchors in levels:
            batch, _, num_classes = level_scores.shape
            extra = -(-self.pre_nms_top_n // num_classes)
            level_scores = torch.cat((level_scores, level_scores.new_full((batch, extra, num_classes), -1.0)), 1)
            deltas = torch.cat((deltas, deltas.new_zeros((batch, extra, 4))), 1)
            anchors = torch.cat((anchors, anchors.new_zeros((extra, 4))), 0)
            level_boxes, level_top, level_labels = top_candidates(
                level_scores, deltas, anchors, self.pre_nms_top_n, self.box_coder
            )
            boxes.append(level_boxes)
            scores.append(level_top)
            labels.append(level_labels)
        boxes = torch.cat(boxes, dim=1)
        limits = (image_sizes.to(boxes.dtype) - 1).flip(1).repeat(1, 2).unsqueeze(1)  # [B, 1, 4] (w-1, h-1, ...)
        boxes = torch.minimum(boxes.clamp(min=0), limits)
        return boxes, torch.cat(scores, dim=1), torch.cat(labels, dim=1)

    def masks(self, features, boxes, labels, valid):
        """Mask probabilities [B, K, 1, M, M] for the valid rows (zeros elsewhere); the mask head
        runs on the valid rows only."""
        batch, k = valid.shape
        rows = torch.nonzero(valid.reshape(-1)).squeeze(1)
        probs = _mask_probabilities(
            self.model,
            features,
            boxes.reshape(-1, 4)[rows],
            labels.reshape(-1)[rows],
            torch.div(rows, k, rounding_mode="floor"),
        )
        masks = probs.new_zeros((batch * k,) + tuple(probs.shape[1:])).index_put((rows,), probs)
        return masks.view(batch, k, 1, probs.shape[-2], probs.shape[-1])


class SeedGraph(nn.Module):
    """The Ascend seed's graph: no threshold, no NMS, mask head on every candidate.

    forward(images [B, 3, S, S]) -> (bboxs [B, 1000, 4] float32 clamped to [0, S],
    labels [B, 1000] int32 (1-based), scores [B, 1000] float32 (descending),
    masks [B, 1000, 1, M, M] float32 (probability of the row's class)).

    The 1000 rows are the global top-1000 (anchor, class) sigmoid scores over all levels.
    """

    def __init__(self, model, canvas_side, num_candidates=SEED_NUM_CANDIDATES):
        super().__init__()
        _check_model(model, canvas_side)
        self.model = model
        self.canvas_side = int(canvas_side)
        self.num_candidates = int(num_candidates)
        self.box_coder = model.rpn.postprocessor.box_coder

    def forward(self, images):
        features, levels = dense_predictions(self.model, images)
        scores = torch.cat([level[0] for level in levels], dim=1)
        deltas = torch.cat([level[1] for level in levels], dim=1)
        anchors = torch.cat([level[2] for level in levels], dim=0)
        boxes, scores, labels = top_candidates(scores, deltas, anchors, self.num_candidates, self.box_coder)
        boxes = boxes.clamp(min=0, max=self.canvas_side)
        batch, k = scores.shape
        image_index = torch.arange(batch, device=images.device).view(-1, 1).expand(batch, k).reshape(-1)
        probs = _mask_probabilities(self.model, features, boxes.reshape(-1, 4), labels.reshape(-1), image_index)
        masks = probs.view(batch, k, 1, probs.shape[-2], probs.shape[-1])
        return boxes, labels.to(torch.int32), scores, masks


class Float32RoIAlign(nn.Module):
    """Runs a pooler in float32 inside a float16 model: RoIAlign (and the box levels) stay in
    float32, which every runtime supports; the pooled features go back to the model's dtype."""

    def __init__(self, pooler):
        super().__init__()
        self.pooler = pooler

    def forward(self, features, rois):
        return self.pooler([f.float() for f in features], rois.float()).to(features[0].dtype)


def half_precision_copy(model):
    """A copy of ``model`` whose convolutions run in float16 (for ``--fp16``).

    The backbone, RetinaNet head and mask head convolutions become float16; anchors, box
    decoding, NMS and RoIAlign stay float32 (the graphs cast around them). FrozenBatchNorm is
    first folded to scale/shift in float32 (weight = w / sqrt(var), bias = b - mean * scale,
    var = 1, mean = 0) so that no tiny variance under- or overflows in float16.
    """
    model = copy.deepcopy(model)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, FrozenBatchNorm2d):
                scale = module.weight * module.running_var.rsqrt()
                module.bias.copy_(module.bias - module.running_mean * scale)
                module.weight.copy_(scale)
                module.running_mean.zero_()
                module.running_var.fill_(1.0)
    model.backbone.half()
    model.rpn.head.half()
    model.mask.half()
    extractor = model.mask.feature_extractor
    extractor.pooler = Float32RoIAlign(extractor.pooler)
    return model

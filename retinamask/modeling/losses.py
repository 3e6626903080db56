"""The RetinaMask training objective, as in the original's ``rpn/retinanet_loss.py``,
``layers/adjust_smooth_l1_loss.py`` and ``roi_heads/mask_head/loss.py``.

* RetinaNet classification: anchors matched to ground truth by IoU (+1 box convention)
  with ``MODEL.RPN.FG_IOU_THRESHOLD`` / ``BG_IOU_THRESHOLD`` and the original's
  low-quality matches; anchors between the thresholds are ignored; sigmoid focal loss
  summed over anchors and classes, divided by (number of positive anchors + images).
* RetinaNet box regression: smooth L1 on ``BoxCoder.encode`` targets of the positive
  anchors, summed, divided by 4 x positives; with ``RETINANET.SELFADJUST_SMOOTH_L1`` the
  beta of each coordinate follows running statistics of the errors (``AdjustSmoothL1Loss``).
* Mask: proposals = the RetinaNet detections of the current step (no gradient) + the
  ground-truth boxes; proposals with IoU >= ``ROI_HEADS.FG_IOU_THRESHOLD`` with a
  ground-truth box are positives; binary cross-entropy (mean over pixels of the positives)
  between the mask logits of the ground-truth class and the ground-truth mask cropped to
  the proposal and resized to 28 x 28.

Where this differs from the original (each is a guard against a degenerate case, or a
bound on compute, and changes nothing in the ordinary case), it says so below.

Targets are one dict per image: ``boxes`` float [G, 4] xyxy with the +1 convention
(x2 = x + w - 1) in input pixels, ``labels`` int64 [G] in 1..K, ``masks`` uint8 [G, h, w]
(the image's valid region or more: the padded canvas is fine).
"""

import torch
from torch.nn import functional as F
from torchvision.ops import roi_align, sigmoid_focal_loss

from retinamask.modeling.box_coder import BoxCoder
from retinamask.modeling.retinanet_head import flatten_level

LOSS_NAMES = ("loss_retina_cls", "loss_retina_reg", "loss_mask")


def box_iou_plus_one(boxes1, boxes2):
    """IoU matrix [M, N] of xyxy boxes [M, 4] and [N, 4] with the original's ``boxlist_iou``
    convention: width = x2 - x1 + 1, intersection width = min(x2) - max(x1) + 1 (at least 0)."""
    area1 = (boxes1[:, 2] - boxes1[:, 0] + 1) * (boxes1[:, 3] - boxes1[:, 1] + 1)
    area2 = (boxes2[:, 2] - boxes2[:, 0] + 1) * (boxes2[:, 3] - boxes2[:, 1] + 1)
    top_left = torch.max(boxes1[:, None, :2], boxes2[None, :, :2])
    bottom_right = torch.min(boxes1[:, None, 2:], boxes2[None, :, 2:])
    wh = (bottom_right - top_left + 1).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area1[:, None] + area2[None, :] - inter)


class Matcher:
    """Assigns each prediction (anchor or proposal) the index of a ground-truth box, or a
    negative code, from an IoU matrix [G, P] (the original's ``modeling/matcher.py``).

    Returns int64 [P]: the matched ground truth where the best IoU >= ``high_threshold``,
    ``BELOW_LOW_THRESHOLD`` (-1) where it is < ``low_threshold``, ``BETWEEN_THRESHOLDS``
    (-2) in between. With ``allow_low_quality_matches`` every ground truth also claims the
    predictions it overlaps most (ties included), which then keep their own best ground
    truth as the match (as the original does); ``low_quality_threshold`` > 0 restricts this
    to ground truths whose best IoU reaches it.

    Difference: a ground truth whose best IoU is 0 (it overlaps no prediction at all)
    claims nothing, where the original would tie it with every prediction it misses and
    turn them all into positives. With no ground truth at all every prediction is
    ``BELOW_LOW_THRESHOLD`` (the original raises).
    """

    BELOW_LOW_THRESHOLD = -1
    BETWEEN_THRESHOLDS = -2

    def __init__(self, high_threshold, low_threshold, allow_low_quality_matches=False, low_quality_threshold=0.0):
        if low_threshold > high_threshold:
            raise ValueError(f"low threshold {low_threshold} > high threshold {high_threshold}")
        self.high_threshold = high_threshold
        self.low_threshold = low_threshold
        self.allow_low_quality_matches = allow_low_quality_matches
        self.low_quality_threshold = low_quality_threshold

    def __call__(self, quality):
        if quality.shape[0] == 0:
            return torch.full((quality.shape[1],), self.BELOW_LOW_THRESHOLD, dtype=torch.int64, device=quality.device)
        best, matches = quality.max(dim=0)
        best_matches = matches.clone()
        matches[best < self.low_threshold] = self.BELOW_LOW_THRESHOLD
        matches[(best >= self.low_threshold) & (best < self.high_threshold)] = self.BETWEEN_THRESHOLDS
        if self.allow_low_quality_matches:
            best_per_gt = quality.max(dim=1).values
            claims = best_per_gt > 0
            if self.low_quality_threshold > 0:
                claims &= best_per_gt >= self.low_quality_threshold
            _, claimed = torch.nonzero((quality == best_per_gt[:, None]) & claims[:, None], as_tuple=True)
            matches[claimed] = best_matches[claimed]
        return matches


class SmoothL1Loss:
    """Sum of smooth L1 over all elements: 0.5 x^2 / beta where |x| < beta, |x| - beta / 2 elsewhere."""

    def __init__(self, beta=0.11):
        self.beta = beta

    def __call__(self, pred, target):
        """pred, target: [K, 4] -> scalar (sum)."""
        return smooth_l1_sum(pred, target, pred.new_tensor(self.beta))

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class AdjustSmoothL1Loss:
    """The original's self-adjusting smooth L1 (``RETINANET.SELFADJUST_SMOOTH_L1``).

    Per coordinate c, running statistics of the absolute errors |pred - target| of the
    positive anchors, updated on every call with momentum 0.1:
    ``running_mean = 0.9 running_mean + 0.1 mean``, ``running_var = 0.9 running_var + 0.1 var``
    (unbiased variance), starting from mean = ``beta``, var = 0. The beta used is
    ``clamp(running_mean - running_var, 1e-3, beta)``, with the statistics after the update.

    Difference: the update is skipped when fewer than 2 positives are given (the original
    would write NaN into the statistics for 0 positives, and the unbiased variance of
    1 value is NaN too). The statistics are not model weights: the trainer stores
    them in its checkpoints (``state_dict``) so that a resumed run continues identically.
    """

    def __init__(self, num_features=4, beta=0.11, momentum=0.1):
        self.beta = beta
        self.momentum = momentum
        self.running_mean = torch.full((num_features,), float(beta))
        self.running_var = torch.zeros(num_features)

    def current_beta(self):
        """[num_features] beta per coordinate from the running statistics."""
        return (self.running_mean - self.running_var).clamp(min=1e-3, max=self.beta)

    def __call__(self, pred, target):
        """pred, target: [K, 4] -> scalar (sum); updates the running statistics first."""
        error = (pred - target).abs()
        if error.shape[0] >= 2:
            with torch.no_grad():
                detached = error.detach().to(self.running_mean.device)
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * detached.mean(dim=0))
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * detached.var(dim=0))
        return smooth_l1_sum(pred, target, self.current_beta().to(pred.device, pred.dtype))

    def state_dict(self):
        return {"running_mean": self.running_mean.clone(), "running_var": self.running_var.clone()}

    def load_state_dict(self, state):
        self.running_mean = state["running_mean"].clone().float()
        self.running_var = state["running_var"].clone().float()


def smooth_l1_sum(pred, target, beta):
    """Sum of smooth L1 with ``beta`` a scalar tensor or one value per column [4]."""
    error = (pred - target).abs()
    loss = torch.where(error < beta, 0.5 * error * error / beta, error - 0.5 * beta)
    return loss.sum()


class RetinaNetLoss:
    """Focal classification loss and smooth L1 regression loss of the RetinaNet head.

    __call__(anchors, logits, box_regression, targets) with anchors[l] [H_l*W_l*A, 4] (the same
    for every image), logits[l] [N, A*K, H_l, W_l], box_regression[l] [N, A*4, H_l, W_l]
    -> (classification loss, regression loss), scalars.
    """

    def __init__(self, num_classes, matcher, box_coder, alpha=0.25, gamma=2.0, regression_loss=None):
        self.num_classes = num_classes
        self.matcher = matcher
        self.box_coder = box_coder
        self.alpha = alpha
        self.gamma = gamma
        self.regression_loss = regression_loss or SmoothL1Loss()

    def prepare_targets(self, anchors, targets):
        """anchors [A_total, 4], targets -> (labels [N, A_total] int64: -1 ignored, 0 background,
        k > 0 class; matched ground-truth box of each anchor [N, A_total, 4])."""
        labels, matched_boxes = [], []
        for target in targets:
            gt_boxes = target["boxes"].to(anchors.dtype)
            matches = self.matcher(box_iou_plus_one(gt_boxes, anchors))
            if gt_boxes.shape[0]:
                index = matches.clamp(min=0)
                labels_per_image = target["labels"].to(torch.int64)[index]
                boxes_per_image = gt_boxes[index]
            else:
                labels_per_image = torch.zeros_like(matches)
                boxes_per_image = torch.zeros_like(anchors)
            labels_per_image = torch.where(matches == Matcher.BELOW_LOW_THRESHOLD, 0, labels_per_image)
            labels_per_image = torch.where(matches == Matcher.BETWEEN_THRESHOLDS, -1, labels_per_image)
            labels.append(labels_per_image)
            matched_boxes.append(boxes_per_image)
        return torch.stack(labels), torch.stack(matched_boxes)

    def __call__(self, anchors, logits, box_regression, targets):
        flat_logits, flat_regression = zip(
            *(
                flatten_level(level_logits, level_regression, self.num_classes)
                for level_logits, level_regression in zip(logits, box_regression)
            )
        )
        flat_logits = torch.cat(flat_logits, dim=1)  # [N, A_total, K]
        flat_regression = torch.cat(flat_regression, dim=1)  # [N, A_total, 4]
        all_anchors = torch.cat(anchors, dim=0)
        labels, matched_boxes = self.prepare_targets(all_anchors, targets)
        num_images = labels.shape[0]

        positive = labels > 0
        num_positive = int(positive.sum())
        valid = labels >= 0
        one_hot = F.one_hot(labels.clamp(min=0), self.num_classes + 1)[..., 1:].to(flat_logits.dtype)
        cls_loss = sigmoid_focal_loss(
            flat_logits[valid], one_hot[valid], alpha=self.alpha, gamma=self.gamma, reduction="sum"
        ) / (num_positive + num_images)

        anchor_index = positive.nonzero(as_tuple=True)[1]
        regression_targets = self.box_coder.encode(matched_boxes[positive], all_anchors[anchor_index])
        # The original divides by 4 x positives even when that is 0 (NaN); a batch without
        # positive anchors contributes 0 here.
        reg_loss = self.regression_loss(flat_regression[positive], regression_targets) / (max(num_positive, 1) * 4)
        return cls_loss, reg_loss

    def state_dict(self):
        return self.regression_loss.state_dict()

    def load_state_dict(self, state):
        self.regression_loss.load_state_dict(state)


def project_masks_on_boxes(gt_masks, boxes, matched_index, resolution=28):
    """Mask targets: each ground-truth mask cropped to a box and resized to ``resolution``.

    gt_masks: uint8/bool [G, H, W] of one image; boxes: [P, 4] xyxy (+1 convention: the box
    covers pixels x1..x2, i.e. the continuous span [x1, x2 + 1], where the mask is pasted
    back at inference); matched_index: int64 [P] into gt_masks. Returns float32 [P, M, M]
    in [0, 1]: RoIAlign (aligned, 2 x 2 samples per cell) of the binary mask, i.e. the
    fraction of each cell the mask covers (as torchvision's Mask R-CNN does).

    Differences from the original, which rasterises its polygons cropped to [x1, x2]
    (width x2 - x1) into a binary M x M grid: the span includes the last pixel,
    consistent with the paste at inference; and cells on the boundary keep their
    fractional coverage, so that the bilinear upsampling of the paste (threshold 0.5)
    puts the edge between cells instead of on the 28-cell grid (with perfect predictions
    on the shapes validation set: segm AP 0.85 instead of 0.83 with binary targets).
    """
    if boxes.shape[0] == 0:
        return torch.zeros((0, resolution, resolution), dtype=torch.float32, device=boxes.device)
    rois = torch.cat((matched_index[:, None].to(boxes.dtype), boxes[:, :2], boxes[:, 2:] + 1), dim=1)
    masks = gt_masks[:, None].to(torch.float32)
    sampled = roi_align(
        masks, rois.to(torch.float32), (resolution, resolution), spatial_scale=1.0, sampling_ratio=2, aligned=True
    )
    return sampled[:, 0].clamp(0.0, 1.0)


class MaskLoss:
    """Mask loss on the positive proposals of each image.

    __call__(mask_head, features, proposals, targets): proposals [P_i, 4] per image (the
    detections followed by the ground-truth boxes). A proposal is positive where its best
    IoU with a ground-truth box is >= ``fg_iou_threshold`` (no low-quality matches); it
    takes that box's label and mask. At most ``max_positives_per_image`` positives per
    image are used, chosen at random (``ROI_HEADS.BATCH_SIZE_PER_IMAGE x POSITIVE_FRACTION``,
    the positive quota of the original's ROI sampler; the original's RetinaMask feeds all
    detections and only the loss keeps positives, so the cap, 128 by default, only bounds
    the compute when an image has very many overlapping detections). The mask head runs
    on the positives only: the proposals the original also runs it on get no loss.
    Returns the binary cross-entropy with logits averaged over all positive pixels
    (0 with a gradient path when there is no positive).
    """

    def __init__(self, matcher, resolution=28, max_positives_per_image=128):
        self.matcher = matcher
        self.resolution = resolution
        self.max_positives_per_image = max_positives_per_image

    def select_positives(self, proposals, target):
        """(positive proposal boxes [K, 4], their matched ground-truth index [K])."""
        gt_boxes = target["boxes"].to(proposals.dtype)
        if gt_boxes.shape[0] == 0 or proposals.shape[0] == 0:
            return proposals[:0], torch.zeros(0, dtype=torch.int64, device=proposals.device)
        matches = self.matcher(box_iou_plus_one(gt_boxes, proposals))
        keep = torch.nonzero(matches >= 0).squeeze(1)
        if 0 <= self.max_positives_per_image < keep.numel():
            keep = keep[torch.randperm(keep.numel(), device=keep.device)[: self.max_positives_per_image]]
        return proposals[keep], matches[keep]

    def __call__(self, mask_head, features, proposals, targets):
        rois, labels, mask_targets = [], [], []
        for image_index, (proposals_per_image, target) in enumerate(zip(proposals, targets)):
            boxes, matched = self.select_positives(proposals_per_image, target)
            rois.append(torch.cat((torch.full_like(boxes[:, :1], image_index), boxes), dim=1))
            labels.append(target["labels"].to(torch.int64)[matched])
            mask_targets.append(project_masks_on_boxes(target["masks"], boxes, matched, self.resolution))
        rois = torch.cat(rois)
        if rois.shape[0] == 0:
            # Keeps every mask-head parameter in the graph (zero gradient), as the original does.
            return sum(p.sum() for p in mask_head.parameters()) * 0.0
        logits = mask_head(features, rois, torch.cat(labels))
        return F.binary_cross_entropy_with_logits(logits, torch.cat(mask_targets).to(logits.dtype))


class RetinaMaskLoss:
    """The callable set as ``model.loss``: features, anchors and head outputs -> loss dict.

    __call__(features [P3..P7], anchors, logits, box_regression, image_sizes [(h, w)] * N,
    targets) -> {"loss_retina_cls", "loss_retina_reg", "loss_mask"} (scalars; "loss_mask"
    only when the model has a mask head).

    Not an ``nn.Module``, so that the model's state dict stays the inference one; its own
    state (the self-adjusting smooth L1 statistics) is in ``state_dict()``.
    """

    def __init__(self, model, retinanet_loss, mask_loss=None):
        self._model = model
        self.retinanet_loss = retinanet_loss
        self.mask_loss = mask_loss

    def __call__(self, features, anchors, logits, box_regression, image_sizes, targets):
        cls_loss, reg_loss = self.retinanet_loss(anchors, logits, box_regression, targets)
        losses = {"loss_retina_cls": cls_loss, "loss_retina_reg": reg_loss}
        if self.mask_loss is not None and self._model.mask is not None:
            with torch.no_grad():
                detections = self._model.rpn.postprocessor(
                    anchors, [x.detach() for x in logits], [x.detach() for x in box_regression], image_sizes
                )
            proposals = [
                torch.cat((det["boxes"], target["boxes"].to(det["boxes"].dtype)))
                for det, target in zip(detections, targets)
            ]
            losses["loss_mask"] = self.mask_loss(self._model.mask, features, proposals, targets)
        return losses

    def state_dict(self):
        return {"retinanet": self.retinanet_loss.state_dict()}

    def load_state_dict(self, state):
        self.retinanet_loss.load_state_dict(state.get("retinanet", {}))


def build_loss(model, cfg):
    """The ``RetinaMaskLoss`` of a model built from ``cfg`` (not attached; see attach_losses)."""
    r = cfg.RETINANET
    anchor_matcher = Matcher(
        cfg.MODEL.RPN.FG_IOU_THRESHOLD,
        cfg.MODEL.RPN.BG_IOU_THRESHOLD,
        allow_low_quality_matches=r.LOW_QUALITY_MATCHES,
        low_quality_threshold=r.LOW_QUALITY_THRESHOLD,
    )
    if r.SELFADJUST_SMOOTH_L1:
        regression_loss = AdjustSmoothL1Loss(4, beta=r.BBOX_REG_BETA)
    else:
        regression_loss = SmoothL1Loss(beta=r.BBOX_REG_BETA)
    retinanet_loss = RetinaNetLoss(
        r.NUM_CLASSES - 1,
        anchor_matcher,
        BoxCoder((10.0, 10.0, 5.0, 5.0)),
        alpha=r.LOSS_ALPHA,
        gamma=r.LOSS_GAMMA,
        regression_loss=regression_loss,
    )
    mask_loss = None
    if cfg.MODEL.MASK_ON:
        h = cfg.MODEL.ROI_HEADS
        mask_matcher = Matcher(h.FG_IOU_THRESHOLD, h.BG_IOU_THRESHOLD, allow_low_quality_matches=False)
        mask_loss = MaskLoss(
            mask_matcher,
            resolution=cfg.MODEL.ROI_MASK_HEAD.RESOLUTION,
            max_positives_per_image=int(h.BATCH_SIZE_PER_IMAGE * h.POSITIVE_FRACTION),
        )
    return RetinaMaskLoss(model, retinanet_loss, mask_loss)


def attach_losses(model, cfg):
    """Set ``model.loss`` to the training objective described by ``cfg``; returns it."""
    loss = build_loss(model, cfg)
    model.loss = loss
    return loss


__all__ = [
    "LOSS_NAMES",
    "AdjustSmoothL1Loss",
    "MaskLoss",
    "Matcher",
    "RetinaMaskLoss",
    "RetinaNetLoss",
    "SmoothL1Loss",
    "attach_losses",
    "box_iou_plus_one",
    "build_loss",
    "project_masks_on_boxes",
]

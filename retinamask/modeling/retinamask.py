"""RetinaMask: ResNet-FPN backbone, RetinaNet detector, and a mask head on the top detections."""

import torch
from torch import nn

from retinamask.modeling.anchors import build_anchor_generator
from retinamask.modeling.box_coder import BoxCoder
from retinamask.modeling.fpn import build_backbone
from retinamask.modeling.mask_head import build_mask_head
from retinamask.modeling.poolers import map_levels
from retinamask.modeling.retinanet_head import RetinaNetHead
from retinamask.modeling.retinanet_postprocess import RetinaNetPostProcessor, keep_top_with_ties


class RetinaNetModule(nn.Module):
    """``anchor_generator`` + ``head`` (the original's ``rpn`` module) and the box post-processor."""

    def __init__(self, anchor_generator, head, postprocessor):
        super().__init__()
        self.anchor_generator = anchor_generator
        self.head = head
        self.postprocessor = postprocessor

    def forward(self, features):
        """[P3..P7] -> (anchors per level, logits per level, box regression per level)."""
        logits, box_regression = self.head(features)
        return self.anchor_generator(features), logits, box_regression


class RetinaMask(nn.Module):
    """The whole model, with the original's module names (``backbone``, ``rpn``, ``mask``).

    Inference: ``forward(images [N, 3, H, W], image_sizes [(h, w)] * N)`` with images already
    normalised (BGR 0-255 minus mean) and zero-padded, sizes of the valid regions.
    Returns per image a dict: ``boxes`` [D, 4] xyxy in input pixels, ``scores`` [D],
    ``labels`` [D] (1-based), ``mask_logits`` [D, 28, 28], ``mask_probs`` [D, 28, 28], ``mask_levels`` [D],
    with D <= num_masks_test (ties kept) when the mask head is on, else <= detections_per_image.

    Training: ``forward(images, image_sizes, targets)`` returns a dict of losses
    (see ``retinamask.modeling.losses``).
    """

    def __init__(self, backbone, rpn, mask=None, num_masks_test=50, class_names=()):
        super().__init__()
        self.backbone = backbone
        self.rpn = rpn
        self.mask = mask
        self.num_masks_test = num_masks_test
        self.class_names = tuple(class_names)
        self.loss = None  # set by retinamask.modeling.losses.attach_losses for training

    def forward(self, images, image_sizes, targets=None):
        features = self.backbone(images)
        anchors, logits, box_regression = self.rpn(features)
        if self.training:
            if self.loss is None or targets is None:
                raise ValueError("training needs targets and a loss (retinamask.modeling.losses.attach_losses)")
            return self.loss(features, anchors, logits, box_regression, image_sizes, targets)
        detections = self.rpn.postprocessor(anchors, logits, box_regression, image_sizes)
        if self.mask is not None:
            detections = self.predict_masks(features, detections)
        return detections

    def predict_masks(self, features, detections):
        """Keep the top ``num_masks_test`` detections per image (ties kept) and add their masks."""
        detections = [
            {k: v[keep] for k, v in det.items()}
            for det in detections
            for keep in [keep_top_with_ties(det["scores"], self.num_masks_test)]
        ]
        rois = torch.cat(
            [
                torch.cat((torch.full_like(det["boxes"][:, :1], i), det["boxes"]), dim=1)
                for i, det in enumerate(detections)
            ]
        )
        labels = torch.cat([det["labels"] for det in detections])
        logits = self.mask(features, rois, labels).float() if rois.shape[0] else rois.new_zeros((0, 28, 28))
        levels = map_levels(
            rois[:, 1:],
            min_level=self.mask.feature_extractor.pooler.min_level,
            max_level=self.mask.feature_extractor.pooler.max_level,
        )
        start = 0
        for det in detections:
            n = det["boxes"].shape[0]
            det["mask_logits"] = logits[start : start + n]
            det["mask_probs"] = logits[start : start + n].sigmoid()
            det["mask_levels"] = levels[start : start + n]
            start += n
        return detections


def build_model(cfg):
    """The RetinaMask described by a config (see ``retinamask.config``); eval mode, float32, CPU."""
    from retinamask.config.classes import class_names_from_config

    r = cfg.RETINANET
    anchor_generator = build_anchor_generator(cfg)
    num_foreground = r.NUM_CLASSES - 1
    head = RetinaNetHead(
        cfg.MODEL.BACKBONE.OUT_CHANNELS,
        anchor_generator.num_anchors_per_location,
        num_foreground,
        r.NUM_CONVS,
        cfg.MODEL.USE_GN,
        r.PRIOR_PROB,
    )
    postprocessor = RetinaNetPostProcessor(
        num_foreground,
        score_threshold=r.INFERENCE_TH,
        pre_nms_top_n=r.PRE_NMS_TOP_N,
        nms_threshold=r.NMS_TH,
        detections_per_image=r.DETECTIONS_PER_IMG,
        box_coder=BoxCoder((10.0, 10.0, 5.0, 5.0)),
    )
    mask = build_mask_head(cfg) if cfg.MODEL.MASK_ON else None
    model = RetinaMask(
        build_backbone(cfg),
        RetinaNetModule(anchor_generator, head, postprocessor),
        mask,
        num_masks_test=r.NUM_MASKS_TEST,
        class_names=class_names_from_config(cfg),
    )
    return model.eval()

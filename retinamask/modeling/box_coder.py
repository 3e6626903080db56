"""Box encoding/decoding with the original's conventions (width = x2 - x1 + 1)."""

import math

import torch

# Largest log-scale change applied when decoding (the original's bbox_xform_clip).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """(dx, dy, dw, dh) deltas <-> xyxy boxes, relative to reference boxes (anchors)."""

    def __init__(self, weights=(10.0, 10.0, 5.0, 5.0), bbox_xform_clip=BBOX_XFORM_CLIP):
        self.weights = weights
        self.bbox_xform_clip = bbox_xform_clip

    def encode(self, gt_boxes, anchors):
        """gt_boxes, anchors: [K, 4] xyxy -> regression targets [K, 4]."""
        wx, wy, ww, wh = self.weights
        ex_w = anchors[:, 2] - anchors[:, 0] + 1
        ex_h = anchors[:, 3] - anchors[:, 1] + 1
        ex_cx = anchors[:, 0] + 0.5 * ex_w
        ex_cy = anchors[:, 1] + 0.5 * ex_h
        gt_w = gt_boxes[:, 2] - gt_boxes[:, 0] + 1
        gt_h = gt_boxes[:, 3] - gt_boxes[:, 1] + 1
        gt_cx = gt_boxes[:, 0] + 0.5 * gt_w
        gt_cy = gt_boxes[:, 1] + 0.5 * gt_h
        return torch.stack(
            (
                wx * (gt_cx - ex_cx) / ex_w,
                wy * (gt_cy - ex_cy) / ex_h,
                ww * torch.log(gt_w / ex_w),
                wh * torch.log(gt_h / ex_h),
            ),
            dim=1,
        )

    def decode(self, deltas, anchors):
        """deltas: [..., 4] (dx, dy, dw, dh), anchors: [..., 4] xyxy -> boxes [..., 4] xyxy.

        The right/bottom edge is ``centre + size / 2 - 1`` (the +1 convention).
        """
        anchors = anchors.to(deltas.dtype)
        wx, wy, ww, wh = self.weights
        widths = anchors[..., 2] - anchors[..., 0] + 1
        heights = anchors[..., 3] - anchors[..., 1] + 1
        ctr_x = anchors[..., 0] + 0.5 * widths
        ctr_y = anchors[..., 1] + 0.5 * heights
        dx = deltas[..., 0] / wx
        dy = deltas[..., 1] / wy
        dw = torch.clamp(deltas[..., 2] / ww, max=self.bbox_xform_clip)
        dh = torch.clamp(deltas[..., 3] / wh, max=self.bbox_xform_clip)
        pred_ctr_x = dx * widths + ctr_x
        pred_ctr_y = dy * heights + ctr_y
        pred_w = torch.exp(dw) * widths
        pred_h = torch.exp(dh) * heights
        return torch.stack(
            (
                pred_ctr_x - 0.5 * pred_w,
                pred_ctr_y - 0.5 * pred_h,
                pred_ctr_x + 0.5 * pred_w - 1,
                pred_ctr_y + 0.5 * pred_h - 1,
            ),
            dim=-1,
        )

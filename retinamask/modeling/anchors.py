"""RetinaNet anchors with the original's "legacy +1" geometry."""

import math

import torch
from torch import nn


def cell_anchors(stride, sizes, aspect_ratios):
    """The A = len(ratios) * len(sizes) anchors of one grid cell: [A, 4] xyxy, float64.

    Ratio-major order (anchor a = ratio_index * len(sizes) + size_index). Widths are
    round(sqrt(stride**2 / r)), heights round(width * r), then scaled to each size;
    centred on ((stride - 1) / 2, (stride - 1) / 2) with the +1 width convention.
    """
    ctr = 0.5 * (stride - 1)
    rows = []
    for ratio in aspect_ratios:
        base_w = round(math.sqrt(stride * stride / ratio))
        base_h = round(base_w * ratio)
        for size in sizes:
            w = base_w * (size / stride)
            h = base_h * (size / stride)
            rows.append([ctr - 0.5 * (w - 1), ctr - 0.5 * (h - 1), ctr + 0.5 * (w - 1), ctr + 0.5 * (h - 1)])
    return torch.tensor(rows, dtype=torch.float64)


class AnchorGenerator(nn.Module):
    """Anchors for every level; buffers ``cell_anchors.{i}`` as in original checkpoints.

    forward: list of L feature maps [N, C, H_l, W_l] -> list of L tensors [H_l * W_l * A, 4]
    (xyxy in input pixels, flat order (y, x, a)); the same for every image of the batch.
    """

    def __init__(
        self,
        sizes=(32, 64, 128, 256, 512),
        strides=(8, 16, 32, 64, 128),
        aspect_ratios=(0.5, 1.0, 2.0),
        octave=2.0,
        scales_per_octave=3,
    ):
        super().__init__()
        self.strides = tuple(strides)
        self.cell_anchors = nn.Module()
        for i, (stride, size) in enumerate(zip(strides, sizes)):
            octave_sizes = [size * octave ** (k / scales_per_octave) for k in range(scales_per_octave)]
            cells = cell_anchors(stride, octave_sizes, aspect_ratios).to(torch.float32)
            self.cell_anchors.register_buffer(str(i), cells)

    @property
    def num_anchors_per_location(self):
        return getattr(self.cell_anchors, "0").shape[0]

    def forward(self, features):
        anchors = []
        for i, (feature, stride) in enumerate(zip(features, self.strides)):
            cells = getattr(self.cell_anchors, str(i))
            h, w = feature.shape[-2:]
            device = cells.device
            shift_x = torch.arange(0, w, dtype=torch.float32, device=device) * stride
            shift_y = torch.arange(0, h, dtype=torch.float32, device=device) * stride
            yy, xx = torch.meshgrid(shift_y, shift_x, indexing="ij")
            shifts = torch.stack((xx, yy, xx, yy), dim=-1).reshape(-1, 1, 4)
            anchors.append((shifts + cells.view(1, -1, 4)).reshape(-1, 4))
        return anchors


def build_anchor_generator(cfg):
    r = cfg.RETINANET
    return AnchorGenerator(r.ANCHOR_SIZES, r.ANCHOR_STRIDES, r.ASPECT_RATIOS, r.OCTAVE, r.SCALES_PER_OCTAVE)

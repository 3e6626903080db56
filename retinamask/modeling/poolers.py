"""Multi-level RoIAlign as in the original (legacy alignment, +1 box areas for the level)."""

import math

import torch
from torch import nn
from torchvision.ops import roi_align


def map_levels(boxes, canonical_scale=224, canonical_level=4, min_level=3, max_level=5, eps=1e-6):
    """Pyramid level of each box [K, 4]: floor(canonical_level + log2(sqrt(area) / 224 + eps)),
    area with +1 sizes, clamped to [min_level, max_level]. Returns [K] int64 levels."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    levels = torch.floor(canonical_level + torch.log2(torch.sqrt(area) / canonical_scale + eps))
    return levels.clamp(min=min_level, max=max_level).to(torch.int64)


class MultiLevelRoIAlign(nn.Module):
    """forward(features [P3, P4, P5, ...], rois [K, 5] (batch_index, x1, y1, x2, y2)) -> [K, C, R, R].

    Each RoI is pooled from one level chosen by ``map_levels`` (RoIAlign aligned=False,
    fixed sampling ratio), exactly like the original's ``Pooler``.
    """

    def __init__(self, output_size=14, scales=(1 / 8, 1 / 16, 1 / 32), sampling_ratio=2, canonical_level=4):
        super().__init__()
        self.output_size = output_size
        self.scales = tuple(scales)
        self.sampling_ratio = sampling_ratio
        self.canonical_level = canonical_level
        self.min_level = int(-math.log2(self.scales[0]))
        self.max_level = int(-math.log2(self.scales[-1]))

    def forward(self, features, rois):
        levels = (
            map_levels(
                rois[:, 1:], canonical_level=self.canonical_level, min_level=self.min_level, max_level=self.max_level
            )
            - self.min_level
        )
        num_rois = rois.shape[0]
        channels = features[0].shape[1]
        out = features[0].new_zeros((num_rois, channels, self.output_size, self.output_size))
        for index, (feature, scale) in enumerate(zip(features, self.scales)):
            selected = torch.nonzero(levels == index).squeeze(1)
            pooled = roi_align(
                feature,
                rois[selected],
                self.output_size,
                spatial_scale=scale,
                sampling_ratio=self.sampling_ratio,
                aligned=False,
            )
            out[selected] = pooled.to(out.dtype)
        return out

"""The RetinaNet head: classification and box towers shared across pyramid levels."""

import math

from torch import nn

from retinamask.modeling.layers import group_norm


def _tower(channels, num_convs, use_gn):
    """num_convs x (conv3x3 -> [GroupNorm] -> ReLU); indices match the original's Sequential."""
    layers = []
    for _ in range(num_convs):
        layers.append(nn.Conv2d(channels, channels, kernel_size=3, padding=1))
        if use_gn:
            layers.append(group_norm(channels))
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RetinaNetHead(nn.Module):
    """forward: [P3..P7] -> (logits, box_regression), one tensor per level.

    logits[l]: [N, A * K, H_l, W_l], channel a * K + (label - 1) (K = foreground classes);
    box_regression[l]: [N, A * 4, H_l, W_l], channel a * 4 + (dx, dy, dw, dh).
    """

    def __init__(self, in_channels, num_anchors, num_classes, num_convs=4, use_gn=False, prior_prob=0.01):
        super().__init__()
        self.num_classes = num_classes
        self.cls_tower = _tower(in_channels, num_convs, use_gn)
        self.bbox_tower = _tower(in_channels, num_convs, use_gn)
        self.cls_logits = nn.Conv2d(in_channels, num_anchors * num_classes, kernel_size=3, padding=1)
        self.bbox_pred = nn.Conv2d(in_channels, num_anchors * 4, kernel_size=3, padding=1)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, std=0.01)
                nn.init.constant_(module.bias, 0)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features):
        logits = [self.cls_logits(self.cls_tower(f)) for f in features]
        box_regression = [self.bbox_pred(self.bbox_tower(f)) for f in features]
        return logits, box_regression


def flatten_level(logits, box_regression, num_classes):
    """One level's head outputs in anchor order (y, x, a).

    logits [N, A*K, H, W] -> [N, H*W*A, K]; box_regression [N, A*4, H, W] -> [N, H*W*A, 4].
    """
    n, _, h, w = logits.shape
    logits = logits.view(n, -1, num_classes, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, num_classes)
    box_regression = box_regression.view(n, -1, 4, h, w).permute(0, 3, 4, 1, 2).reshape(n, -1, 4)
    return logits, box_regression

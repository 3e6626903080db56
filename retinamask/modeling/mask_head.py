"""The RetinaMask mask branch: multi-level RoIAlign, 4 convs, deconv, per-class predictor."""

import torch
from torch import nn
from torch.nn import functional as F

from retinamask.modeling.poolers import MultiLevelRoIAlign


class MaskFeatureExtractor(nn.Module):
    """Pooler + ``mask_fcn1..n`` (conv3x3 + ReLU): rois [K, 5] -> [K, C_last, R, R]."""

    def __init__(self, in_channels, conv_channels=(256, 256, 256, 256), pooler=None):
        super().__init__()
        self.pooler = pooler or MultiLevelRoIAlign()
        self.num_convs = len(conv_channels)
        for i, channels in enumerate(conv_channels, start=1):
            conv = nn.Conv2d(in_channels, channels, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(conv.bias, 0)
            self.add_module(f"mask_fcn{i}", conv)
            in_channels = channels
        self.out_channels = in_channels

    def forward(self, features, rois):
        x = self.pooler(features, rois)
        for i in range(1, self.num_convs + 1):
            x = F.relu(getattr(self, f"mask_fcn{i}")(x))
        return x


class MaskPredictor(nn.Module):
    """ConvTranspose 2x2/2 + ReLU, then 1x1 conv to one logit map per class (incl. background).

    [K, C, R, R] -> [K, num_classes, 2R, 2R]; channel = label.
    """

    def __init__(self, in_channels, num_classes, deconv_channels=256):
        super().__init__()
        self.conv5_mask = nn.ConvTranspose2d(in_channels, deconv_channels, kernel_size=2, stride=2)
        self.mask_fcn_logits = nn.Conv2d(deconv_channels, num_classes, kernel_size=1)
        for layer in (self.conv5_mask, self.mask_fcn_logits):
            nn.init.kaiming_normal_(layer.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(layer.bias, 0)

    def forward(self, x):
        return self.mask_fcn_logits(F.relu(self.conv5_mask(x)))


class MaskHead(nn.Module):
    """forward(features [P3..P7], rois [K, 5], labels [K]) -> mask logits of each RoI's class [K, 2R, 2R]."""

    def __init__(self, feature_extractor, predictor):
        super().__init__()
        self.feature_extractor = feature_extractor
        self.predictor = predictor

    def forward(self, features, rois, labels):
        logits = self.predictor(self.feature_extractor(features, rois))
        return select_class(logits, labels)


def select_class(logits, labels):
    """logits [K, num_classes, M, M], labels [K] -> [K, M, M] (the channel of each label)."""
    index = torch.arange(logits.shape[0], device=logits.device)
    return logits[index, labels]


def build_mask_head(cfg):
    m = cfg.MODEL.ROI_MASK_HEAD
    pooler = MultiLevelRoIAlign(m.POOLER_RESOLUTION, m.POOLER_SCALES, m.POOLER_SAMPLING_RATIO, m.CANONICAL_LEVEL)
    extractor = MaskFeatureExtractor(cfg.MODEL.BACKBONE.OUT_CHANNELS, m.CONV_LAYERS, pooler)
    predictor = MaskPredictor(extractor.out_channels, cfg.RETINANET.NUM_CLASSES, deconv_channels=m.CONV_LAYERS[-1])
    return MaskHead(extractor, predictor)

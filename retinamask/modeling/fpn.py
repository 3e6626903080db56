"""Feature pyramid with the extra P6/P7 levels of RetinaNet (original module names)."""

from torch import nn
from torch.nn import functional as F


class LastLevelP6P7(nn.Module):
    """P6 = conv3x3/2 on P5 (the FPN output, as in the original), P7 = conv3x3/2 on ReLU(P6)."""

    def __init__(self, channels):
        super().__init__()
        self.p6 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        self.p7 = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=1)
        for conv in (self.p6, self.p7):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            nn.init.constant_(conv.bias, 0)

    def forward(self, p5):
        p6 = self.p6(p5)
        p7 = self.p7(F.relu(p6))
        return [p6, p7]


class FPN(nn.Module):
    """Top-down pyramid on C3..C5 -> P3..P7, all with ``out_channels`` channels.

    Laterals ``fpn_inner{k}`` (1x1) and outputs ``fpn_layer{k}`` (3x3) for k = 2, 3, 4 are the
    original's names for C3, C4, C5 (its ``fpn_inner1`` on C2 does not exist in the p3p7 model).

    forward: [C2, C3, C4, C5] -> [P3, P4, P5, P6, P7]; Pk: [N, out_channels, H/2**k, W/2**k].
    """

    def __init__(self, in_channels_c3_c5, out_channels):
        super().__init__()
        self.levels = (2, 3, 4)
        for k, in_channels in zip(self.levels, in_channels_c3_c5):
            inner = nn.Conv2d(in_channels, out_channels, kernel_size=1)
            layer = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=1)
            for conv in (inner, layer):
                nn.init.kaiming_uniform_(conv.weight, a=1)
                nn.init.constant_(conv.bias, 0)
            self.add_module(f"fpn_inner{k}", inner)
            self.add_module(f"fpn_layer{k}", layer)
        self.top_blocks = LastLevelP6P7(out_channels)

    def forward(self, features):
        c3_c5 = features[1:]
        last_inner = self.fpn_inner4(c3_c5[-1])
        results = [self.fpn_layer4(last_inner)]
        for k, feature in zip((3, 2), (c3_c5[1], c3_c5[0])):
            top_down = F.interpolate(last_inner, scale_factor=2.0, mode="nearest")
            last_inner = getattr(self, f"fpn_inner{k}")(feature) + top_down
            results.insert(0, getattr(self, f"fpn_layer{k}")(last_inner))
        return results + self.top_blocks(results[-1])


class Backbone(nn.Sequential):
    """``body`` (ResNet) followed by ``fpn``: images [N,3,H,W] -> [P3..P7]."""

    def __init__(self, body, fpn):
        super().__init__()
        self.body = body
        self.fpn = fpn

    def forward(self, images):
        return self.fpn(self.body(images))


def build_backbone(cfg):
    from retinamask.modeling.resnet import build_resnet

    res2 = cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    fpn = FPN((res2 * 2, res2 * 4, res2 * 8), cfg.MODEL.BACKBONE.OUT_CHANNELS)
    return Backbone(build_resnet(cfg), fpn)

"""ResNet / ResNeXt body with the original's module names (``stem``, ``layer1``..``layer4``).

Matches maskrcnn-benchmark's ``modeling/backbone/resnet.py`` for the configs RetinaMask
uses: stride in the 1x1 conv of each first block (``STRIDE_IN_1X1``), FrozenBatchNorm
(``*WithFixedBatchNorm``) or GroupNorm (``*WithGN``) after every conv, no conv biases.
"""

from torch import nn
from torch.nn import functional as F

from retinamask.core.errors import ConfigError
from retinamask.modeling.layers import FrozenBatchNorm2d, group_norm

# blocks per stage (res2, res3, res4, res5)
BLOCK_COUNTS = {"R-50": (3, 4, 6, 3), "R-101": (3, 4, 23, 3), "R-152": (3, 8, 36, 3)}

NORMS = {
    "StemWithFixedBatchNorm": FrozenBatchNorm2d,
    "BottleneckWithFixedBatchNorm": FrozenBatchNorm2d,
    "StemWithGN": group_norm,
    "BottleneckWithGN": group_norm,
}


class Stem(nn.Module):
    """conv 7x7/2 -> norm -> ReLU -> max-pool 3x3/2: [N,3,H,W] -> [N,C,H/4,W/4]."""

    def __init__(self, out_channels, norm):
        super().__init__()
        self.conv1 = nn.Conv2d(3, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm(out_channels)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (groups) -> 1x1 residual block; the stride sits in the 1x1 or the 3x3 conv."""

    def __init__(self, in_channels, bottleneck_channels, out_channels, num_groups, stride, stride_in_1x1, norm):
        super().__init__()
        self.downsample = None
        if in_channels != out_channels:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
                norm(out_channels),
            )
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = nn.Conv2d(in_channels, bottleneck_channels, kernel_size=1, stride=stride_1x1, bias=False)
        self.bn1 = norm(bottleneck_channels)
        self.conv2 = nn.Conv2d(
            bottleneck_channels,
            bottleneck_channels,
            kernel_size=3,
            stride=stride_3x3,
            padding=1,
            groups=num_groups,
            bias=False,
        )
        self.bn2 = norm(bottleneck_channels)
        self.conv3 = nn.Conv2d(bottleneck_channels, out_channels, kernel_size=1, bias=False)
        self.bn3 = norm(out_channels)

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class ResNet(nn.Module):
    """ResNet body returning the res2..res5 feature maps (strides 4, 8, 16, 32).

    forward: images [N,3,H,W] -> [C2, C3, C4, C5], Ck: [N, res2_out * 2**(k-2), H/2**k, W/2**k].
    """

    def __init__(
        self,
        block_counts,
        stem_out_channels=64,
        res2_out_channels=256,
        num_groups=1,
        width_per_group=64,
        stride_in_1x1=True,
        stem_norm=FrozenBatchNorm2d,
        block_norm=FrozenBatchNorm2d,
        freeze_at=2,
    ):
        super().__init__()
        self.stem = Stem(stem_out_channels, stem_norm)
        in_channels = stem_out_channels
        bottleneck = num_groups * width_per_group
        out_channels = res2_out_channels
        for index, count in enumerate(block_counts):
            blocks = []
            for block_index in range(count):
                stride = 2 if index > 0 and block_index == 0 else 1
                blocks.append(
                    Bottleneck(in_channels, bottleneck, out_channels, num_groups, stride, stride_in_1x1, block_norm)
                )
                in_channels = out_channels
            self.add_module(f"layer{index + 1}", nn.Sequential(*blocks))
            bottleneck *= 2
            out_channels *= 2
        self.freeze_at = freeze_at
        self._freeze()

    def _freeze(self):
        """Stop gradients through the stem (freeze_at >= 1) and layer1..layer(freeze_at-1)."""
        stages = [self.stem] + [getattr(self, f"layer{i}") for i in range(1, 5)]
        for stage in stages[: self.freeze_at]:
            for p in stage.parameters():
                p.requires_grad_(False)

    def forward(self, x):
        x = self.stem(x)
        outputs = []
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            outputs.append(x)
        return outputs


def build_resnet(cfg):
    """The ResNet body described by ``cfg.MODEL.BACKBONE`` / ``cfg.MODEL.RESNETS``."""
    r = cfg.MODEL.RESNETS
    conv_body = cfg.MODEL.BACKBONE.CONV_BODY
    depth = conv_body.rsplit("-FPN", 1)[0]
    if r.BLOCK_COUNTS:
        block_counts = tuple(r.BLOCK_COUNTS)
    elif depth in BLOCK_COUNTS:
        block_counts = BLOCK_COUNTS[depth]
    else:
        raise ConfigError(
            f"MODEL.BACKBONE.CONV_BODY {conv_body!r} is not one of "
            f"{', '.join(k + '-FPN' for k in BLOCK_COUNTS)} (or set MODEL.RESNETS.BLOCK_COUNTS)"
        )
    for key in (r.STEM_FUNC, r.TRANS_FUNC):
        if key not in NORMS:
            raise ConfigError(f"unsupported MODEL.RESNETS function {key!r} (supported: {', '.join(NORMS)})")
    return ResNet(
        block_counts,
        stem_out_channels=r.STEM_OUT_CHANNELS,
        res2_out_channels=r.RES2_OUT_CHANNELS,
        num_groups=r.NUM_GROUPS,
        width_per_group=r.WIDTH_PER_GROUP,
        stride_in_1x1=r.STRIDE_IN_1X1,
        stem_norm=NORMS[r.STEM_FUNC],
        block_norm=NORMS[r.TRANS_FUNC],
        freeze_at=cfg.MODEL.BACKBONE.FREEZE_CONV_BODY_AT,
    )

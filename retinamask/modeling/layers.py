"""Normalisation layers of the original: FrozenBatchNorm2d (no eps) and GroupNorm."""

import math

import torch
from torch import nn


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, as in maskrcnn-benchmark.

    Unlike ``torchvision.ops.FrozenBatchNorm2d`` there is no epsilon:
    ``y = x * weight / sqrt(running_var) + (bias - running_mean * weight / sqrt(running_var))``.
    Checkpoints of the original carry all four buffers.
    """

    def __init__(self, num_features):
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x):
        """x: [N, C, H, W] -> [N, C, H, W]."""
        scale = self.weight * self.running_var.rsqrt()
        bias = self.bias - self.running_mean * scale
        return x * scale.view(1, -1, 1, 1) + bias.view(1, -1, 1, 1)


def group_norm(num_channels):
    """GroupNorm with 32 groups (fewer where the channel count is small or not divisible)."""
    return nn.GroupNorm(math.gcd(32, num_channels), num_channels)

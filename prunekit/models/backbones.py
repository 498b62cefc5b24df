"""VGG-16 and MobileNetV2 trunks with output stride 8, under the same per-task ASPP heads as the
DeepLab-ResNets (``MultiTaskDeepLab``): the structured-pruning paper's VGG-16 and AdapMTL's
second architecture. ``width`` scales every channel count.

- ``vgg16``: the 13 convolutions of VGG-16 with BatchNorm; the fourth pooling keeps the size
  and the fifth block is dilated by 2 (DeepLab-LargeFOV), so features are 1/8 of the input.
- ``mobilenetv2``: MobileNetV2's inverted residual blocks (expansion 6, ReLU6, depthwise 3x3);
  the strides after 1/8 become dilations 2 and 4, as in DeepLab's MobileNetV2.
"""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .deeplab import MultiTaskDeepLab, scaled

# channels of each convolution, block by block (a max-pool after each of the first four)
VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
# (expansion, channels, blocks, stride) as in the MobileNetV2 paper
MOBILENETV2_STAGES = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                      (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


def conv_bn_relu(in_channels: int, out_channels: int, dilation: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation,
                      bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)]


class DilatedVGG16(nn.Module):
    def __init__(self, width: float = 1.0):
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for index, block in enumerate(VGG16_BLOCKS):
            dilation = 2 if index == 4 else 1
            for channels in block:
                channels = scaled(channels, width)
                layers += conv_bn_relu(in_channels, channels, dilation)
                in_channels = channels
            if index < 3:
                layers.append(nn.MaxPool2d(2, 2, ceil_mode=True))
            elif index == 3:  # keeps the size: the fifth block is dilated instead
                layers.append(nn.MaxPool2d(3, 1, padding=1))
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, expansion: int, stride: int,
                 dilation: int):
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [nn.Conv2d(in_channels, hidden, 1, bias=False), nn.BatchNorm2d(hidden),
                       nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, padding=dilation, dilation=dilation,
                             groups=hidden, bias=False),
                   nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                   nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
        self.block = nn.Sequential(*layers)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.residual else out


class DilatedMobileNetV2(nn.Module):
    def __init__(self, width: float = 1.0):
        super().__init__()
        stem = scaled(32, width)
        layers: list[nn.Module] = [nn.Conv2d(3, stem, 3, 2, padding=1, bias=False),
                                   nn.BatchNorm2d(stem), nn.ReLU6(inplace=True)]
        in_channels, reduction, dilation = stem, 2, 1
        for expansion, channels, count, stride in MOBILENETV2_STAGES:
            channels = scaled(channels, width)
            if stride == 2 and reduction == 8:  # past 1/8: dilate instead of striding
                stride, dilation = 1, dilation * 2
            elif stride == 2:
                reduction *= 2
            for index in range(count):
                layers.append(InvertedResidual(in_channels, channels, expansion,
                                               stride if index == 0 else 1, dilation))
                in_channels = channels
        self.features = nn.Sequential(*layers)
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def vgg16(task_channels: Mapping[str, int], width: float = 1.0) -> MultiTaskDeepLab:
    return MultiTaskDeepLab(task_channels, width, backbone=DilatedVGG16(width))


def mobilenetv2(task_channels: Mapping[str, int], width: float = 1.0) -> MultiTaskDeepLab:
    return MultiTaskDeepLab(task_channels, width, backbone=DilatedMobileNetV2(width))

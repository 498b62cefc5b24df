"""DeepLab-ResNet as used in the DiSparse and AdapMTL multi-task experiments.

A ResNet-34 trunk (BasicBlock, [3, 4, 6, 3]) or ResNet-50 trunk (Bottleneck, [3, 4, 6, 3], four
times wider outputs) whose last two stages trade stride for dilation, so the feature map is 1/8
of the input, and one DeepLab-v2 ASPP head per task: four parallel branches with dilation rates
6, 12, 18 and 24 whose outputs are summed, then upsampled to the input size. ``width`` scales
every channel count, so the same architecture fits a laptop CPU or a GPU. Other trunks with the
same heads: ``prunekit.models.backbones``.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..core.layout import MultiTaskLayout

RESNET34_BLOCKS = (3, 4, 6, 3)
RESNET50_BLOCKS = (3, 4, 6, 3)  # of Bottleneck blocks
STAGE_CHANNELS = (64, 128, 256, 512)
STAGE_STRIDES = (1, 2, 1, 1)
STAGE_DILATIONS = (1, 1, 2, 4)
ASPP_RATES = (6, 12, 18, 24)
ASPP_HIDDEN = 1024


def scaled(channels: int, width: float) -> int:
    return max(4, int(round(channels * width)))


def shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential | None:
    """A residual block's 1x1 projection of its input, where the identity does not fit."""
    if stride == 1 and in_channels == out_channels:
        return None
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                         nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int, dilation: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, 1, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.downsample = shortcut(in_channels, channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (dilated), 1x1 expand to ``EXPANSION`` times the channels."""

    EXPANSION = 4

    def __init__(self, in_channels: int, channels: int, stride: int, dilation: int):
        super().__init__()
        out_channels = channels * self.EXPANSION
        self.conv1 = nn.Conv2d(in_channels, channels, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride, padding=dilation,
                               dilation=dilation, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.conv3 = nn.Conv2d(channels, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + identity)


class DilatedResNet(nn.Module):
    """ResNet trunk with output stride 8 (stages 3 and 4 dilated by 2 and 4)."""

    def __init__(self, blocks: Sequence[int] = RESNET34_BLOCKS, width: float = 1.0,
                 block: type[nn.Module] = BasicBlock):
        super().__init__()
        stem = scaled(64, width)
        self.conv1 = nn.Conv2d(3, stem, 7, 2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.maxpool = nn.MaxPool2d(3, 2, padding=1)
        in_channels = stem
        expansion = getattr(block, "EXPANSION", 1)
        stages = []
        for count, channels, stride, dilation in zip(
                blocks, STAGE_CHANNELS, STAGE_STRIDES, STAGE_DILATIONS):
            channels = scaled(channels, width)
            layers = [block(in_channels, channels, stride, dilation)]
            layers += [block(channels * expansion, channels, 1, dilation)
                       for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            in_channels = channels * expansion
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))


class ASPPBranch(nn.Sequential):
    def __init__(self, in_channels: int, hidden: int, out_channels: int, rate: int,
                 dropout: float):
        super().__init__(
            nn.Conv2d(in_channels, hidden, 3, padding=rate, dilation=rate),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, hidden, 1),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Conv2d(hidden, out_channels, 1),
        )


class ASPPHead(nn.Module):
    """DeepLab-v2 atrous spatial pyramid: parallel dilated branches, summed."""

    def __init__(self, in_channels: int, out_channels: int, width: float = 1.0,
                 rates: Sequence[int] = ASPP_RATES, dropout: float = 0.5):
        super().__init__()
        hidden = scaled(ASPP_HIDDEN, width)
        self.branches = nn.ModuleList(
            ASPPBranch(in_channels, hidden, out_channels, rate, dropout) for rate in rates)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return sum(branch(x) for branch in self.branches)


class MultiTaskDeepLab(nn.Module):
    """Shared dilated ResNet backbone and one ASPP head per task.

    ``forward`` returns ``{task: prediction}``, each upsampled to the input's height and width.
    """

    def __init__(self, task_channels: Mapping[str, int], width: float = 1.0,
                 blocks: Sequence[int] = RESNET34_BLOCKS, backbone: nn.Module | None = None):
        super().__init__()
        self.backbone = backbone if backbone is not None else DilatedResNet(blocks, width)
        self.heads = nn.ModuleDict({
            task: ASPPHead(self.backbone.out_channels, channels, width)
            for task, channels in task_channels.items()
        })

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        size = x.shape[-2:]
        return {
            task: F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
            for task, head in self.heads.items()
        }

    def layout(self) -> MultiTaskLayout:
        return MultiTaskLayout(shared=["backbone"],
                               heads={task: [f"heads.{task}"] for task in self.heads})


def deeplab_resnet34(task_channels: Mapping[str, int], width: float = 1.0) -> MultiTaskDeepLab:
    return MultiTaskDeepLab(task_channels, width, RESNET34_BLOCKS)


def deeplab_resnet50(task_channels: Mapping[str, int], width: float = 1.0) -> MultiTaskDeepLab:
    return MultiTaskDeepLab(task_channels, width,
                            backbone=DilatedResNet(RESNET50_BLOCKS, width, Bottleneck))

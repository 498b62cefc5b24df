"""Filter removal on DeepLab-ResNet: rebuild layers without removed channels (a smaller model).

Channels are removed by *channel group*: a set of channels written by one or more convolutions
(the producers, each with the BatchNorm after it or none) and read by other convolutions (the
readers). Removing channel ``i`` of a group takes filter ``i`` out of every producer, channel ``i``
out of their BatchNorms and input channel ``i`` out of every reader, so the rest of the network
sees the same values. A group is named by the weight of its first producer. The groups are found
by walking the modules:

* block-internal: ``<block>.conv1.weight`` per ``BasicBlock``: ``conv1`` + ``bn1``, read by
  ``conv2``;
* ASPP hidden: ``<branch>.0.weight`` and ``<branch>.3.weight`` per ``ASPPBranch``: convolution
  0 read by 3, convolution 3 read by 6 (no BatchNorm);
* residual stream of a ``DilatedResNet``: the stem (``conv1`` + ``bn1``) starts a stream; a block
  without downsample reads it with ``conv1`` and adds to it with ``conv2`` + ``bn2`` (the identity
  shortcut carries it through, so the channel leaves the block's input and output together); a
  block with downsample reads it with ``conv1`` and ``downsample.0`` and starts a new stream,
  ``<block>.downsample.0.weight``, written by ``downsample.0`` + ``.1`` and ``conv2`` + ``bn2``.
  The last stream is the backbone's output: it is a group only where its readers are known, in a
  ``MultiTaskDeepLab`` whose heads are ASPP heads (convolution 0 of every branch of every head).

The heads' output channels are never removed. ``zero_filters`` gives the masked equivalent: the
producers' filters and BatchNorm scale and shift are zeroed, so in evaluation mode the channel is
zero after the BatchNorm, stays zero through residual sums, ReLU and max pooling, and the readers
see nothing from it; the smaller model computes the same function.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from ..errors import PrunekitError, UnknownNameError
from .deeplab import (ASPPBranch, ASPPHead, BasicBlock, Bottleneck, DilatedResNet,
                      MultiTaskDeepLab)

# {channel group name: bool tensor of shape (channels,), True = keep}
FilterMasks = dict[str, torch.Tensor]


@dataclass
class ChannelGroup:
    name: str
    producers: list[tuple[str, nn.Conv2d, nn.Module | None]]
    readers: list[nn.Conv2d] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.producers[0][1].out_channels

    def removal_cost(self) -> int:
        """Parameters removed per channel removed, at the current shapes."""
        def per_channel(conv: nn.Conv2d, channels: int) -> int:
            return channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1]

        cost = sum(per_channel(conv, conv.out_channels) for conv in self.readers)
        for _, conv, bn in self.producers:
            cost += per_channel(conv, conv.in_channels) + (conv.bias is not None)
            cost += 2 if bn is not None and bn.affine else 0
        return cost

    def weight_names(self) -> list[str]:
        return [name for name, _, _ in self.producers]


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _stream_groups(prefix: str, net: DilatedResNet,
                   output_readers: list[nn.Conv2d] | None) -> list[ChannelGroup]:
    """The residual streams of ``net``; the last only when ``output_readers`` are known."""
    stream = ChannelGroup(_join(prefix, "conv1.weight"),
                          [(_join(prefix, "conv1.weight"), net.conv1, net.bn1)])
    streams = [stream]
    for name, block in net.named_modules(prefix=prefix):
        if not isinstance(block, (BasicBlock, Bottleneck)):
            continue
        stream.readers.append(block.conv1)
        if block.downsample is not None:
            stream.readers.append(block.downsample[0])
            name0 = _join(name, "downsample.0.weight")
            stream = ChannelGroup(name0, [(name0, block.downsample[0], block.downsample[1])])
            streams.append(stream)
        last = "conv3" if isinstance(block, Bottleneck) else "conv2"  # adds to the stream
        stream.producers.append((_join(name, f"{last}.weight"), getattr(block, last),
                                 getattr(block, last.replace("conv", "bn"))))
    if output_readers is None:
        return streams[:-1]
    stream.readers.extend(output_readers)
    return streams


def _backbone_readers(model: MultiTaskDeepLab) -> list[nn.Conv2d] | None:
    heads = list(model.heads.values())
    if not all(isinstance(head, ASPPHead) for head in heads):
        return None
    return [branch[0] for head in heads for branch in head.branches]


def channel_groups(model: nn.Module) -> list[ChannelGroup]:
    """The removable channel groups of ``model``, ordered by their first producer in the model."""
    output_readers = {id(m.backbone): _backbone_readers(m) for m in model.modules()
                      if isinstance(m, MultiTaskDeepLab)}
    groups = []
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            weight = _join(name, "conv1.weight")
            groups.append(ChannelGroup(weight, [(weight, module.conv1, module.bn1)],
                                       [module.conv2]))
        elif isinstance(module, Bottleneck):
            for index, reader in ((1, module.conv2), (2, module.conv3)):
                weight = _join(name, f"conv{index}.weight")
                groups.append(ChannelGroup(weight, [(weight, getattr(module, f"conv{index}"),
                                                     getattr(module, f"bn{index}"))], [reader]))
        elif isinstance(module, ASPPBranch):
            for conv, reader in ((0, 3), (3, 6)):
                weight = _join(name, f"{conv}.weight")
                groups.append(ChannelGroup(weight, [(weight, module[conv], None)],
                                           [module[reader]]))
        elif isinstance(module, DilatedResNet):
            groups += _stream_groups(name, module, output_readers.get(id(module)))
    order = {id(module): index for index, module in enumerate(model.modules())}
    return sorted(groups, key=lambda group: order[id(group.producers[0][1])])


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> list[ChannelGroup]:
    """The model's channel groups, after checking ``masks`` against them."""
    groups = channel_groups(model)
    by_name = {group.name: group for group in groups}
    for name, mask in masks.items():
        if name not in by_name:
            raise UnknownNameError("removable channel group", name, by_name)
        channels = by_name[name].channels
        if (not isinstance(mask, torch.Tensor) or mask.shape != (channels,)
                or mask.dtype != torch.bool):
            raise PrunekitError(f"filter mask of {name!r} must be a bool tensor of shape "
                                f"({channels},)")
        if not mask.any():
            raise PrunekitError(f"filter mask of {name!r} removes every channel of the group; "
                                f"keep at least one")
    return groups


def sliced_conv(conv: nn.Conv2d, out_keep: torch.Tensor | None = None,
                in_keep: torch.Tensor | None = None) -> nn.Conv2d:
    """A copy of ``conv`` keeping the given output and input channels."""
    weight = conv.weight.detach()
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None:
        weight = weight[:, in_keep]
    copy = nn.Conv2d(weight.shape[1], weight.shape[0], conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, bias=conv.bias is not None,
                     padding_mode=conv.padding_mode).to(weight.device, weight.dtype)
    with torch.no_grad():
        copy.weight.copy_(weight)
        if conv.bias is not None:
            bias = conv.bias.detach()
            copy.bias.copy_(bias if out_keep is None else bias[out_keep])
    return copy.train(conv.training)


def sliced_batchnorm(bn: nn.BatchNorm2d, keep: torch.Tensor) -> nn.BatchNorm2d:
    reference = next(iter(bn.buffers()), None) if bn.weight is None else bn.weight
    copy = nn.BatchNorm2d(int(keep.sum()), bn.eps, bn.momentum, bn.affine,
                          bn.track_running_stats).to(reference.device, reference.dtype)
    with torch.no_grad():
        for attribute in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, attribute)
            if source is not None:
                getattr(copy, attribute).copy_(source.detach()[keep])
        if bn.num_batches_tracked is not None:
            copy.num_batches_tracked.copy_(bn.num_batches_tracked)
    return copy.train(bn.training)  # a new module starts in training mode


@torch.no_grad()
def remove_filters(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild, in place, every layer touched by ``masks`` (keyed by group name) without the
    removed channels. A convolution both producing one group and reading another is rebuilt once.
    """
    out_keep, in_keep, bn_keep = {}, {}, {}  # module -> bool keep tensor
    for group in check_masks(model, masks):
        if group.name not in masks:
            continue
        keep = masks[group.name].to(group.producers[0][1].weight.device)
        for _, conv, bn in group.producers:
            out_keep[conv] = keep
            if bn is not None:
                bn_keep[bn] = keep
        for conv in group.readers:
            in_keep[conv] = keep
    new = {conv: sliced_conv(conv, out_keep.get(conv), in_keep.get(conv))
           for conv in dict.fromkeys([*out_keep, *in_keep])}
    new.update((bn, sliced_batchnorm(bn, keep)) for bn, keep in bn_keep.items())
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if child in new:
                setattr(module, child_name, new[child])
    for net in model.modules():
        if isinstance(net, DilatedResNet):
            blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
            last = blocks[-1] if blocks else None
            output = (net.conv1 if last is None
                      else last.conv3 if isinstance(last, Bottleneck) else last.conv2)
            net.out_channels = output.out_channels
    return model


@torch.no_grad()
def zero_filters(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """The masked equivalent of ``remove_filters``: removed channels are exactly zero.

    Every producer's filter weights and bias, and its BatchNorm's scale and shift, are zeroed, so
    the channel is zero after the BatchNorm (in evaluation mode) wherever it is written.
    """
    for group in check_masks(model, masks):
        if group.name not in masks:
            continue
        removed = ~masks[group.name].to(group.producers[0][1].weight.device)
        for _, conv, bn in group.producers:
            conv.weight[removed] = 0
            if conv.bias is not None:
                conv.bias[removed] = 0
            if bn is not None:
                bn.weight[removed] = 0
                bn.bias[removed] = 0
    return model


def kept_channels(model: nn.Module) -> dict[str, int]:
    """{channel group name: its number of channels now}."""
    return {group.name: group.channels for group in channel_groups(model)}


def shrink_to(model: nn.Module, counts: Mapping[str, int]) -> nn.Module:
    """``remove_filters`` keeping the first ``counts[name]`` channels of each named group: gives a
    model the shapes of an exported smaller one, ready for its ``load_state_dict``."""
    channels = kept_channels(model)
    masks = {}
    for name, count in counts.items():
        if name not in channels:
            raise UnknownNameError("removable channel group", name, channels)
        if int(count) > channels[name]:
            raise PrunekitError(f"channel group {name!r} has {channels[name]} channels; "
                                f"cannot shrink it to {int(count)}")
        if int(count) < channels[name]:  # unchanged groups are left as they are
            masks[name] = torch.arange(channels[name]) < int(count)
    return remove_filters(model, masks)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, image_size: tuple[int, int]) -> int:
    """Multiply-accumulates of the convolutions and linear layers for one image."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output) -> None:
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output[0].numel() * (module.in_channels // module.groups) * kernel

    def linear_hook(module: nn.Linear, inputs, output) -> None:
        nonlocal total
        total += output[0].numel() * module.in_features

    handles = [m.register_forward_hook(conv_hook) for m in model.modules()
               if isinstance(m, nn.Conv2d)]
    handles += [m.register_forward_hook(linear_hook) for m in model.modules()
                if isinstance(m, nn.Linear)]
    was_training = model.training
    model.eval()
    try:
        device = next(model.parameters()).device
        model(torch.zeros(1, 3, *image_size, device=device))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total

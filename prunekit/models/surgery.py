"""Filter removal on DeepLab-ResNet: rebuild layers without pruned filters (a smaller dense model).

A filter mask keeps or removes whole output channels of a convolution. Removing a channel takes
the filter out of its convolution, the channel out of the BatchNorm that follows, and the input
channel out of the convolution that reads it. The removable filters are those whose channel stays
inside one block: ``conv1`` of every residual block (its channel is read only by ``conv2``) and
the first two convolutions of every ASPP branch (their channels are read only by the next 1x1
convolution). Channels of the residual stream (the stem, ``conv2`` and downsample convolutions)
are added across blocks and are not removed here; neither are the heads' output channels.

``zero_filters`` gives the masked equivalent, the same function with the channels held at zero,
so the two can be compared.
"""
from __future__ import annotations

from typing import Iterator, Mapping

import torch
from torch import nn

from ..errors import PrunekitError
from .deeplab import ASPPBranch, BasicBlock

# {name of a removable conv weight: bool tensor of shape (out_channels,), True = keep}
FilterMasks = dict[str, torch.Tensor]


def removable_filters(model: nn.Module) -> Iterator[tuple[str, nn.Conv2d, nn.Module | None,
                                                          nn.Conv2d]]:
    """(weight name, conv, its BatchNorm or None, the conv reading its channels), in model order."""
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        if isinstance(module, BasicBlock):
            yield f"{prefix}conv1.weight", module.conv1, module.bn1, module.conv2
        elif isinstance(module, ASPPBranch):
            yield f"{prefix}0.weight", module[0], None, module[3]
            yield f"{prefix}3.weight", module[3], None, module[6]


def check_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    known = {name: conv for name, conv, _, _ in removable_filters(model)}
    for name, mask in masks.items():
        if name not in known:
            raise PrunekitError(f"{name!r} is not a removable filter tensor; removable: "
                                f"conv1 of residual blocks and the first two ASPP convolutions")
        if mask.shape != (known[name].out_channels,) or mask.dtype != torch.bool:
            raise PrunekitError(f"filter mask of {name!r} must be a bool tensor of shape "
                                f"({known[name].out_channels},)")
        if not mask.any():
            raise PrunekitError(f"filter mask of {name!r} removes every filter; keep at least one")


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
    copy = nn.BatchNorm2d(int(keep.sum()), bn.eps, bn.momentum, bn.affine,
                          bn.track_running_stats).to(bn.weight.device, bn.weight.dtype)
    with torch.no_grad():
        for attribute in ("weight", "bias", "running_mean", "running_var"):
            source = getattr(bn, attribute)
            if source is not None:
                getattr(copy, attribute).copy_(source.detach()[keep])
        if bn.num_batches_tracked is not None:
            copy.num_batches_tracked.copy_(bn.num_batches_tracked)
    return copy.train(bn.training)  # a new module starts in training mode


def replace(model: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise KeyError("module not found in model")


@torch.no_grad()
def remove_filters(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """Rebuild, in place, every layer touched by ``masks`` without the removed filters."""
    check_masks(model, masks)
    names = [name for name, *_ in removable_filters(model) if name in masks]
    for name in names:
        # looked up afresh: the conv may already have been rebuilt as the reader of another
        _, conv, bn, reader = next(f for f in removable_filters(model) if f[0] == name)
        keep = masks[name].to(conv.weight.device)
        replace(model, conv, sliced_conv(conv, out_keep=keep))
        if bn is not None:
            replace(model, bn, sliced_batchnorm(bn, keep))
        replace(model, reader, sliced_conv(reader, in_keep=keep))
    return model


@torch.no_grad()
def zero_filters(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> nn.Module:
    """The masked equivalent of ``remove_filters``: removed channels produce exactly zero.

    The filter's weights and bias, and its BatchNorm's scale and shift, are zeroed, so the
    channel is zero after the BatchNorm (in evaluation mode) and the reader sees nothing from it.
    """
    check_masks(model, masks)
    for name, conv, bn, _ in removable_filters(model):
        if name not in masks:
            continue
        removed = ~masks[name].to(conv.weight.device)
        conv.weight[removed] = 0
        if conv.bias is not None:
            conv.bias[removed] = 0
        if bn is not None:
            bn.weight[removed] = 0
            bn.bias[removed] = 0
    return model


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

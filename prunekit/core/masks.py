"""Masks on a model's parameters: applying them, keeping pruned weights at zero, measuring sparsity."""
from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import PrunekitError
from ..interfaces import Masks
from .layout import ResolvedLayout


class AppliedMasks:
    """Masks bound to a model's parameters. Pruned weights are zeroed now and after every step."""

    def __init__(self, model: nn.Module, masks: Masks):
        params = dict(model.named_parameters())
        missing = sorted(set(masks) - set(params))
        if missing:
            raise KeyError(f"masks name parameters the model lacks: {', '.join(missing)}")
        self.names = list(masks)
        self.pairs = [(params[name], mask.to(params[name].device)) for name, mask in masks.items()]
        self.zero_pruned()

    def named_masks(self) -> Masks:
        """The live masks by parameter name; changing them in place changes what is pruned."""
        return {name: mask for name, (_, mask) in zip(self.names, self.pairs)}

    @torch.no_grad()
    def zero_pruned(self) -> None:
        """Set every pruned weight to exactly zero (call after each optimiser step)."""
        for param, mask in self.pairs:
            param.masked_fill_(~mask, 0.0)

    @torch.no_grad()
    def zero_pruned_gradients(self) -> None:
        """Zero the gradients of pruned weights, so optimiser state never sees them."""
        for param, mask in self.pairs:
            if param.grad is not None:
                param.grad.masked_fill_(~mask, 0.0)


def density(masks: Mapping[str, torch.Tensor], names=None) -> float:
    names = list(masks) if names is None else list(names)
    total = sum(masks[n].numel() for n in names)
    kept = sum(int(masks[n].sum()) for n in names)
    return kept / total if total else 1.0


def sparsity_summary(masks: Masks, layout: ResolvedLayout) -> dict:
    """Achieved sparsity overall, on the shared tensors, per head and per tensor."""
    return {
        "achieved": 1.0 - density(masks, layout.params),
        "shared": 1.0 - density(masks, layout.shared),
        "heads": {task: 1.0 - density(masks, names) for task, names in layout.heads.items()},
        "layers": {name: 1.0 - density(masks, [name]) for name in layout.params},
    }


def measured_sparsity(weights: Mapping[str, torch.Tensor], masks: Masks,
                      layout: ResolvedLayout) -> dict:
    """``sparsity_summary`` counted from ``weights`` (a state dict): a weight is pruned when
    it is zero. ``masked`` is the share ``masks`` prune; a masked weight that is not zero means
    the masks were not applied, and is an error rather than a report that lies."""
    kept = {name: weights[name] != 0 for name in layout.params}
    for name in layout.params:
        leaked = int((kept[name] & ~masks[name].to(kept[name].device)).sum())
        if leaked:
            raise PrunekitError(f"{leaked} pruned weight(s) of {name!r} are not zero in the "
                                "saved model: the masks were not applied")
    return {**sparsity_summary(kept, layout), "masked": 1.0 - density(masks, layout.params)}


def dense_masks(layout: ResolvedLayout) -> Masks:
    return {name: torch.ones_like(p, dtype=torch.bool) for name, p in layout.params.items()}

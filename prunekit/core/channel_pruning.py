"""Structured pruning on a model: the budget a run prunes to, channel importance summed over
steps, which channels go, and the model's cost before and after.

Channels go in groups (``prunekit.models.surgery``): a block's inner channels, an ASPP branch's
hidden channels, or a residual-stream channel with every convolution writing or reading it. A
group is a candidate when the scorer scores all of its producers (``cosprune`` scores only the
shared backbone, so only backbone groups shrink). The run's path is
``prunekit.pipeline.modes.structured``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import nn

from ..errors import PrunekitError
from ..models.surgery import ChannelGroup, channel_groups, count_macs, count_parameters
from ..timing import interleaved_median_ms
from .layout import ResolvedLayout

# share of the candidate channels removed per round when --filters-per-prune is not given
DEFAULT_PRUNE_SHARE = 0.05


@dataclass
class Budget:
    """How small the model must get: ``size(model) <= target * dense``.

    ``names`` None measures the whole model's parameters (``--params-ratio``); otherwise the
    weights the scorer scores (``--sparsity``, as in the element-wise modes).
    """

    target: float
    dense: int
    names: tuple[str, ...] | None

    @classmethod
    def for_run(cls, model: nn.Module, params_ratio: float | None, sparsity: float,
                scored: tuple[str, ...]) -> "Budget":
        names = None if params_ratio is not None else scored
        budget = cls(params_ratio if params_ratio is not None else 1.0 - sparsity, 0, names)
        budget.dense = budget.size(model)
        return budget

    def describe(self) -> str:
        return ("parameters of the whole model" if self.names is None
                else "weights the scorer scores")

    def size(self, model: nn.Module) -> int:
        if self.names is None:
            return count_parameters(model)
        params = dict(model.named_parameters())
        return sum(params[name].numel() for name in self.names)

    def kept(self, model: nn.Module) -> float:
        return self.size(model) / self.dense

    def cost(self, group: ChannelGroup, weight_names: Mapping[int, str]) -> int:
        """What removing one channel of ``group`` takes off ``size`` (at the current shapes).

        ``weight_names`` maps ``id(parameter)`` to its name in the model.
        """
        if self.names is None:
            return group.removal_cost()
        counted = set(self.names)
        producers = sum(conv.weight[0].numel() for _, conv, _ in group.producers
                        if weight_names[id(conv.weight)] in counted)
        readers = sum(conv.weight[:, 0].numel() for conv in group.readers
                      if weight_names[id(conv.weight)] in counted)
        return producers + readers

    def excess(self, model: nn.Module) -> int:
        """Parameters still to remove (0 or less once the budget is met)."""
        return self.size(model) - math.floor(self.target * self.dense)


def candidate_groups(model: nn.Module, scored: set[str]) -> list[ChannelGroup]:
    return [g for g in channel_groups(model) if set(g.weight_names()) <= scored]


class ChannelImportance:
    """Per candidate group, the scorer's importance of each channel, summed over steps."""

    def __init__(self, groups: list[ChannelGroup]):
        self.groups = {group.name: group for group in groups}
        self.sums = {group.name: torch.zeros(group.channels, dtype=torch.float64)
                     for group in groups}

    def add(self, scores: Mapping[str, torch.Tensor]) -> None:
        for name, group in self.groups.items():
            for weight in group.weight_names():
                self.sums[name] += scores[weight].detach().to("cpu", torch.float64)

    def lowest(self, count: int, needed: int,
               cost: Callable[[ChannelGroup], int]) -> dict[str, torch.Tensor]:
        """Keep-masks removing up to ``count`` channels, lowest sums first, until the removed
        ``cost`` (per channel of a group) reaches ``needed``; every group keeps one channel.

        Ties go to the earlier group and lower channel, so runs repeat exactly.
        """
        for name, sums in self.sums.items():
            if not torch.isfinite(sums).all():
                channel = int((~torch.isfinite(sums)).nonzero()[0])
                raise PrunekitError(f"the importance of channel {channel} of {name!r} is "
                                    f"{float(sums[channel])}; lower --finetune-lr, or check the "
                                    "data for NaN/inf")
        order = list(self.groups)
        ranked = sorted((score, index, channel)
                        for index, sums in enumerate(self.sums.values())
                        for channel, score in enumerate(sums.tolist()))
        keep = {name: torch.ones(group.channels, dtype=torch.bool)
                for name, group in self.groups.items()}
        removed = saved = 0
        for score, index, channel in ranked:
            if removed == count or saved >= needed:
                break
            name = order[index]
            if int(keep[name].sum()) == 1:
                continue  # never empty a layer
            keep[name][channel] = False
            removed += 1
            saved += cost(self.groups[name])
        return {name: mask for name, mask in keep.items() if not mask.all()}


def latencies_ms(models: list[nn.Module], image: torch.Tensor, repeats: int = 21) -> list[float]:
    """Median wall-clock milliseconds of one forward pass of each model, in evaluation mode,
    the models taking turns (``interleaved_median_ms``)."""
    modes = [model.training for model in models]
    try:
        for model in models:
            model.eval()
        return interleaved_median_ms(models, image, repeats)
    finally:
        for model, training in zip(models, modes):
            model.train(training)


def model_cost(model: nn.Module, image: torch.Tensor, latency: float) -> dict:
    return {"parameters": count_parameters(model),
            "macs_per_image": count_macs(model, tuple(image.shape[-2:])),
            "latency_ms": round(latency, 3)}


def removed_share(dense: Mapping[str, int], layout: ResolvedLayout) -> dict:
    """Sparsity block of the report: the share of each component's prunable weights removed."""
    params = layout.params

    def share(names) -> float:
        total = sum(dense[n] for n in names)
        return 1.0 - sum(params[n].numel() for n in names) / total if total else 0.0

    return {"achieved": share(layout.params), "shared": share(layout.shared),
            "heads": {task: share(names) for task, names in layout.heads.items()},
            "layers": {name: share([name]) for name in layout.params}}

"""Structured pruning in ``prunekit run``: remove whole channels while training, then shrink.

``--mode iterative`` with a filter scorer (``taylor``, ``cosprune``):

1. dense weights: trained for ``--iterations``, or loaded from ``--init-checkpoint``;
2. rounds: train ``--prune-interval`` steps at ``--finetune-lr`` on the summed task losses,
   adding the scorer's importance of every output channel on each step's batch; remove the
   ``--filters-per-prune`` channels with the lowest sums (never the last channel of a group),
   rebuild the smaller model and reset the sums; repeat until the budget is met;
3. fine-tune for ``--finetune-iterations`` at ``--finetune-lr``, or with
   ``--retrain-from-scratch`` re-initialise the smaller model and train it anew (``prunekit.retrain``).

Channels go in groups (``prunekit.models.surgery``): a block's inner channels, an ASPP branch's
hidden channels, or a residual-stream channel with every convolution writing or reading it. A
group is a candidate when the scorer scores all of its producers (``cosprune`` scores only the
shared backbone, so only backbone groups shrink).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

import torch
from torch import nn

from .core import contract
from .errors import PrunekitError
from .interfaces import JOINT, Masks, ScoringContext
from .core.masks import dense_masks
from .models.surgery import (ChannelGroup, channel_groups, count_macs, count_parameters,
                             kept_channels, remove_filters)
from .timing import interleaved_median_ms, timed
from .core.batch import check_loss, no_progress

if TYPE_CHECKING:
    from .engine import Run

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


def score_batch(run: "Run", batch: dict) -> dict[str, torch.Tensor]:
    """The scorer's per-channel importance of every tensor it scores, on one batch."""
    context = ScoringContext(run.model, run.layout, run.tasks, [batch], run.device, check_loss,
                             no_progress, run.config.seed, input_shape=run.input_shape)
    return contract.score(run.scorer, context)[JOINT]


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


def sample_image(run: "Run") -> torch.Tensor:
    """A batch of the run's images at its batch size, for latency measurements."""
    batch = next(iter(run.val_loader))["image"]
    return batch.to(run.device)


def probe_scored_names(run: "Run") -> tuple[str, ...]:
    """The tensors the scorer scores, from one validation batch (the training order stays as it
    is); each must have one score per output channel."""
    batch = next(iter(run.val_loader))
    scores = score_batch(run, {k: v.to(run.device) for k, v in batch.items()})
    params = dict(run.model.named_parameters())
    for name, value in scores.items():
        if name not in params or tuple(value.shape) != tuple(params[name].shape[:1]):
            raise PrunekitError(f"scorer {run.scorer.name!r} must give one score per output "
                                f"channel of {name!r}, got shape {tuple(value.shape)}")
    return tuple(scores)


def check_reachable(run: "Run", budget: Budget, scored: tuple[str, ...]) -> None:
    """Fail before training when even one channel per candidate group is above the budget."""
    smallest = copy.deepcopy(run.model)
    groups = candidate_groups(smallest, set(scored))
    if not groups:
        raise PrunekitError(f"scorer {run.scorer.name!r} scores no removable channel group of "
                            f"model {run.config.model!r}")
    remove_filters(smallest, {g.name: torch.arange(g.channels) == 0 for g in groups})
    reachable = budget.kept(smallest)
    if reachable > budget.target:
        option = ("--params-ratio" if budget.names is None else "--sparsity")
        limit = (f"at least {reachable:.3f}" if budget.names is None
                 else f"at most {1 - reachable:.3f}")
        raise PrunekitError(f"{option} out of reach for scorer {run.scorer.name!r}: one channel "
                            f"per group it scores keeps {reachable:.3f} of the {budget.describe()}"
                            f"; use {option} {limit}")


def check_structured(run: "Run") -> None:
    """After the model is built: the budget must be reachable with the groups the scorer scores."""
    scored = probe_scored_names(run)
    run.structured_budget = Budget.for_run(run.model, run.config.params_ratio,
                                           run.config.sparsity, scored)
    run.structured_scored = scored
    check_reachable(run, run.structured_budget, scored)
    shared = set(run.layout.shared)
    if not any(group.name in shared for group in channel_groups(run.model)):
        run.warn(f"model {run.config.model!r} has no channel-removal rules for its shared trunk: "
                 "only the heads' channels are removed")


def prune_rounds(run: "Run", budget: Budget, scored: tuple[str, ...]) -> list[dict]:
    """Train, score, remove the lowest channels; until the budget is met."""
    config, rounds = run.config, []
    per_round = config.filters_per_prune or max(1, round(DEFAULT_PRUNE_SHARE * sum(
        g.channels for g in candidate_groups(run.model, set(scored)))))
    while budget.excess(run.model) > 0:
        importance = ChannelImportance(candidate_groups(run.model, set(scored)))

        def accumulate(step: int, batch: dict, optimiser) -> None:
            importance.add(score_batch(run, batch))

        run.train_phase(None, config.prune_interval, config.finetune_lr, "pruning", accumulate)
        names = {id(p): name for name, p in run.model.named_parameters()}
        keep = importance.lowest(per_round, budget.excess(run.model),
                                 lambda group: budget.cost(group, names))
        if not keep:
            raise PrunekitError("no channel left to remove before the budget is met")
        remove_filters(run.model, keep)
        run.relayout()
        rounds.append({"round": len(rounds) + 1,
                       "removed": sum(int((~mask).sum()) for mask in keep.values()),
                       "parameters": count_parameters(run.model),
                       "kept": round(budget.kept(run.model), 6)})
    return rounds


def removed_share(dense: Mapping[str, int], run: "Run") -> dict:
    """Sparsity block of the report: the share of each component's prunable weights removed."""
    params = run.layout.params

    def share(names) -> float:
        total = sum(dense[n] for n in names)
        return 1.0 - sum(params[n].numel() for n in names) / total if total else 0.0

    layout = run.layout
    return {"achieved": share(layout.params), "shared": share(layout.shared),
            "heads": {task: share(names) for task, names in layout.heads.items()},
            "layers": {name: share([name]) for name in layout.params}}


def structured_iterative(run: "Run") -> Masks:
    from .retrain import evaluate_selection, retrain_from_scratch

    config = run.config
    budget, scored = run.structured_budget, run.structured_scored
    run.pretrain()
    dense = copy.deepcopy(run.model)  # the latency before and after is measured side by side
    dense_numel = {name: p.numel() for name, p in run.layout.params.items()}
    dense_selection = None
    if config.retrain_from_scratch:
        with timed(run.timings, "selection"):
            dense_selection = evaluate_selection(run)
    rounds = prune_rounds(run, budget, scored)
    if config.retrain_from_scratch:
        sweep = retrain_from_scratch(run, dense_selection)
    else:
        sweep = None
        run.train_phase(None, config.finetune_iterations, config.finetune_lr, "finetuning")
    with timed(run.timings, "measuring"):
        image = sample_image(run)
        dense_ms, pruned_ms = latencies_ms([dense, run.model], image)
        before, after = model_cost(dense, image, dense_ms), model_cost(run.model, image, pruned_ms)
    del dense
    run.achieved_sparsity = removed_share(dense_numel, run)
    run.report["structured"] = {
        "budget": {"measures": budget.describe(), "target_kept": budget.target,
                   "kept": budget.kept(run.model)},
        "rounds": rounds, "before": before, "after": after,
        "speedup": dense_ms / pruned_ms if pruned_ms else None,
        "latency_batch": list(image.shape),
        "channels": kept_channels(run.model),
        "retraining": sweep,
    }
    return dense_masks(run.layout)

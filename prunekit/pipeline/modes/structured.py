"""Structured pruning: ``--mode iterative`` with a filter scorer (``taylor``, ``cosprune``)
removes whole channels while training, and the model is rebuilt smaller.

1. dense weights: trained for ``--iterations``, or loaded from ``--init-checkpoint``;
2. rounds: train ``--prune-interval`` steps at ``--finetune-lr`` on the summed task losses,
   adding the scorer's importance of every output channel on each step's batch; remove the
   ``--filters-per-prune`` channels with the lowest sums (never the last channel of a group),
   rebuild the smaller model and reset the sums; repeat until the budget is met;
3. fine-tune for ``--finetune-iterations`` at ``--finetune-lr`` (with
   ``--retrain-from-scratch``, ``prunekit.pipeline.modes.retrain`` trains fresh weights instead).

The budget, the channel importance and the costs are in ``prunekit.core.channel_pruning``.
"""
from __future__ import annotations

import copy

import torch

from ...core import contract
from ...core.batch import check_loss, no_progress
from ...core.channel_pruning import (DEFAULT_PRUNE_SHARE, Budget, ChannelImportance,
                                     candidate_groups, latencies_ms, model_cost, removed_share)
from ...core.masks import dense_masks
from ...errors import PrunekitError
from ...interfaces import JOINT, Masks, ScoringContext
from ...models.surgery import channel_groups, count_parameters, kept_channels, remove_filters
from ...timing import timed
from ..context import RunContext
from ..steps import Steps
from .base import Mode
from .pretrained import FINE_TUNING


class Structured(Mode):
    name = "structured"
    options = FINE_TUNING | {"params_ratio", "prune_interval", "filters_per_prune"}
    starts_from_checkpoint = True
    resumable = False
    budget: Budget              # set by check_built
    scored: tuple[str, ...]     # the tensors the scorer scores, one score per output channel
    removed: dict               # the report's sparsity: each component's share removed

    def check_options(self) -> None:
        config = self.config
        if self.scorer.per_task:
            raise PrunekitError(f"scorer {config.scorer!r} scores filters per task; structured "
                                "pruning ranks channels by one joint score ({JOINT: ...})")
        if config.mode != "iterative":
            raise PrunekitError(f"scorer {config.scorer!r} scores whole filters; use --mode "
                                f"iterative, which removes the lowest-scored channels while "
                                f"training, not --mode {config.mode}")
        super().check_options()

    def refuse_rewind(self) -> None:
        raise PrunekitError("--rewind resets surviving weights of an element-wise mask; a "
                            "structured run changes the architecture (see "
                            "--retrain-from-scratch)")

    def one_process_reason(self) -> str:
        return ("structured pruning (a filter scorer) removes channels while training and runs "
                "in one process; drop --nproc / torchrun")

    def reads_score_batches(self) -> bool:
        return False  # channels are scored on each training step's batch

    def plugins_used(self) -> dict[str, str]:
        return {"scorer": self.config.scorer}

    def requested_sparsity(self) -> float | None:
        """None when the budget is a share of parameters instead."""
        return None if self.config.params_ratio else self.config.sparsity

    def check_built(self, ctx: RunContext) -> None:
        """The budget must be reachable with the groups the scorer scores."""
        self.scored = probe_scored_names(ctx)
        self.budget = Budget.for_run(ctx.model, ctx.config.params_ratio, ctx.config.sparsity,
                                     self.scored)
        check_reachable(ctx, self.budget, self.scored)
        shared = set(ctx.layout.shared)
        if not any(group.name in shared for group in channel_groups(ctx.model)):
            ctx.warn(f"model {ctx.config.model!r} has no channel-removal rules for its shared "
                     "trunk: only the heads' channels are removed")

    def execute(self, ctx: RunContext, steps: Steps) -> Masks:
        steps.pretrain()
        dense = copy.deepcopy(ctx.model)  # the latency before and after is measured side by side
        dense_numel = {name: p.numel() for name, p in ctx.layout.params.items()}
        self.before_pruning(ctx)
        rounds = prune_rounds(ctx, steps, self.budget, self.scored)
        retraining = self.after_pruning(ctx, steps)
        with timed(ctx.timings, "measuring"):
            image = sample_image(ctx)
            dense_ms, pruned_ms = latencies_ms([dense, ctx.model], image)
            before = model_cost(dense, image, dense_ms)
            after = model_cost(ctx.model, image, pruned_ms)
        del dense
        self.removed = removed_share(dense_numel, ctx.layout)
        ctx.report["structured"] = {
            "budget": {"measures": self.budget.describe(), "target_kept": self.budget.target,
                       "kept": self.budget.kept(ctx.model)},
            "rounds": rounds, "before": before, "after": after,
            "speedup": dense_ms / pruned_ms if pruned_ms else None,
            "latency_batch": list(image.shape),
            "channels": kept_channels(ctx.model),
            "retraining": retraining,
        }
        return dense_masks(ctx.layout)

    def before_pruning(self, ctx: RunContext) -> None:
        """What the dense model must give before channels go (nothing, unless retraining)."""

    def after_pruning(self, ctx: RunContext, steps: Steps) -> dict | None:
        """Fine-tune the smaller model; returns the report's ``retraining`` record."""
        config = ctx.config
        steps.train_phase(None, config.finetune_iterations, config.finetune_lr, "finetuning")
        return None

    def sparsity(self, ctx: RunContext, checkpoint: dict) -> dict:
        return self.removed


def score_batch(ctx: RunContext, batch: dict) -> dict[str, torch.Tensor]:
    """The scorer's per-channel importance of every tensor it scores, on one batch."""
    context = ScoringContext(ctx.model, ctx.layout, ctx.tasks, [batch], ctx.device, check_loss,
                             no_progress, ctx.config.seed, input_shape=ctx.input_shape)
    return contract.score(ctx.scorer, context)[JOINT]


def sample_image(ctx: RunContext) -> torch.Tensor:
    """A batch of the run's images at its batch size, for latency measurements."""
    batch = next(iter(ctx.val_loader))["image"]
    return batch.to(ctx.device)


def probe_scored_names(ctx: RunContext) -> tuple[str, ...]:
    """The tensors the scorer scores, from one validation batch (the training order stays as it
    is); each must have one score per output channel."""
    batch = next(iter(ctx.val_loader))
    scores = score_batch(ctx, {k: v.to(ctx.device) for k, v in batch.items()})
    params = dict(ctx.model.named_parameters())
    for name, value in scores.items():
        if name not in params or tuple(value.shape) != tuple(params[name].shape[:1]):
            raise PrunekitError(f"scorer {ctx.scorer.name!r} must give one score per output "
                                f"channel of {name!r}, got shape {tuple(value.shape)}")
    return tuple(scores)


def check_reachable(ctx: RunContext, budget: Budget, scored: tuple[str, ...]) -> None:
    """Fail before training when even one channel per candidate group is above the budget."""
    smallest = copy.deepcopy(ctx.model)
    groups = candidate_groups(smallest, set(scored))
    if not groups:
        raise PrunekitError(f"scorer {ctx.scorer.name!r} scores no removable channel group of "
                            f"model {ctx.config.model!r}")
    remove_filters(smallest, {g.name: torch.arange(g.channels) == 0 for g in groups})
    reachable = budget.kept(smallest)
    if reachable > budget.target:
        option = ("--params-ratio" if budget.names is None else "--sparsity")
        limit = (f"at least {reachable:.3f}" if budget.names is None
                 else f"at most {1 - reachable:.3f}")
        raise PrunekitError(f"{option} out of reach for scorer {ctx.scorer.name!r}: one channel "
                            f"per group it scores keeps {reachable:.3f} of the "
                            f"{budget.describe()}; use {option} {limit}")


def prune_rounds(ctx: RunContext, steps: Steps, budget: Budget,
                 scored: tuple[str, ...]) -> list[dict]:
    """Train, score, remove the lowest channels; until the budget is met."""
    config, rounds = ctx.config, []
    per_round = config.filters_per_prune or max(1, round(DEFAULT_PRUNE_SHARE * sum(
        g.channels for g in candidate_groups(ctx.model, set(scored)))))
    while budget.excess(ctx.model) > 0:
        importance = ChannelImportance(candidate_groups(ctx.model, set(scored)))

        def accumulate(step: int, batch: dict, optimiser) -> None:
            importance.add(score_batch(ctx, batch))

        steps.train_phase(None, config.prune_interval, config.finetune_lr, "pruning",
                          accumulate)
        names = {id(p): name for name, p in ctx.model.named_parameters()}
        keep = importance.lowest(per_round, budget.excess(ctx.model),
                                 lambda group: budget.cost(group, names))
        if not keep:
            raise PrunekitError("no channel left to remove before the budget is met")
        remove_filters(ctx.model, keep)
        ctx.relayout()
        rounds.append({"round": len(rounds) + 1,
                       "removed": sum(int((~mask).sum()) for mask in keep.values()),
                       "parameters": count_parameters(ctx.model),
                       "kept": round(budget.kept(ctx.model), 6)})
    return rounds

"""Prune any multi-task ``nn.Module`` from Python.

    from prunekit import MultiTaskLayout, compute_masks, AppliedMasks
    layout = MultiTaskLayout(shared=["encoder"], heads={"seg": ["seg_head"], "depth": ["depth_head"]})
    result = compute_masks(model, layout, tasks, batches, scorer="disparse-snip", arbiter="or",
                           sparsity=0.9)
    masks = AppliedMasks(model, result.masks)   # zeroes pruned weights; call masks.zero_pruned()
                                                # after each optimiser step while training
"""
from __future__ import annotations

import time
from typing import Iterable, Mapping

import torch
from torch import nn

from .errors import PrunekitError
from .interfaces import Arbiter, Masks, Plugin, Scorer, ScoringContext, Thresholder
from .layout import MultiTaskLayout, ResolvedLayout
from .pruning import PruneResult, prune
from .registry import Registry, default_registry
from .tasks import Task
from .training import Progress, check_loss, no_progress


def resolve(kind: str, plugin: str | Plugin, registry: Registry | None = None) -> Plugin:
    """A plugin object from its name (looked up in the registry) or the object itself."""
    if isinstance(plugin, str):
        return (registry or default_registry()).get(kind, plugin)
    return plugin


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise PrunekitError(f"sparsity must be strictly between 0 and 1, got {sparsity}")


def check_scope(thresholder: Thresholder, scope: str | None) -> None:
    if scope is not None and scope not in thresholder.scopes:
        raise PrunekitError(f"thresholder {thresholder.name!r} supports scope "
                            f"{' or '.join(thresholder.scopes)}, not {scope!r}")


def check_arbiter(scorer: Scorer, arbiter: Arbiter, num_tasks: int) -> None:
    if scorer.per_task and num_tasks < arbiter.min_tasks:
        raise PrunekitError(f"arbiter {arbiter.name!r} needs at least {arbiter.min_tasks} tasks, "
                            f"got {num_tasks}")


def compute_masks(model: nn.Module, layout: MultiTaskLayout | ResolvedLayout,
                  tasks: Mapping[str, Task], batches: Iterable[dict],
                  scorer: str | Scorer = "disparse-snip", arbiter: str | Arbiter = "or",
                  thresholder: str | Thresholder = "topk", sparsity: float = 0.9,
                  compensate: bool = True, device: torch.device | str = "cpu",
                  registry: Registry | None = None,
                  progress: Progress = no_progress, seed: int = 0, scope: str | None = None,
                  within: Masks | None = None) -> PruneResult:
    """Score, threshold and merge: the masks at ``sparsity`` for every prunable tensor.

    The result also holds each task's own masks and the seconds spent scoring and pruning.

    ``tasks`` maps task names (the keys of the model's output dict and of the batch targets) to
    ``Task`` objects; ``batches`` yields the scoring batches, already on ``device``. ``seed``
    feeds scorers that draw random numbers; ``scope`` goes to the thresholder (None: its
    default); ``within`` limits the masks to weights still alive (iterative pruning).
    """
    check_sparsity(sparsity)
    scorer = resolve("scorer", scorer, registry)
    arbiter = resolve("arbiter", arbiter, registry)
    thresholder = resolve("thresholder", thresholder, registry)
    resolved = layout.resolve(model) if isinstance(layout, MultiTaskLayout) else layout
    if set(tasks) != set(resolved.tasks):
        raise PrunekitError(f"tasks {list(tasks)} do not match the layout's heads {resolved.tasks}")
    check_arbiter(scorer, arbiter, len(tasks))
    check_scope(thresholder, scope)
    context = ScoringContext(model, resolved, tasks, batches, torch.device(device), check_loss,
                             progress, seed)
    started = time.perf_counter()
    saliency = scorer.score(context)
    scored = time.perf_counter()
    result = prune(saliency, resolved, thresholder, arbiter if scorer.per_task else None,
                   sparsity, compensate, scope, within)
    result.timings = {"scoring": scored - started, "pruning": time.perf_counter() - scored}
    return result

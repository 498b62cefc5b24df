"""Prune any multi-task ``nn.Module`` from Python.

    from . import MultiTaskLayout, compute_masks, AppliedMasks
    layout = MultiTaskLayout(shared=["encoder"], heads={"seg": ["seg_head"], "depth": ["depth_head"]})
    result = compute_masks(model, layout, tasks, batches, scorer="disparse-snip", arbiter="or",
                           sparsity=0.9)
    masks = AppliedMasks(model, result.masks)   # zeroes pruned weights; call masks.zero_pruned()
                                                # after each optimiser step while training
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from .core import contract
from .errors import PrunekitError, UnknownNameError
from .interfaces import INTERFACES, Arbiter, Masks, Plugin, Scorer, ScoringContext, Thresholder
from .core.layout import MultiTaskLayout, ResolvedLayout
from .core.pruning import PruneResult, prune, prune_to_pattern, round_sparsities
from .core.semi_structured import UNCOVERED_POLICIES, Pattern
from .registry import Registry, default_registry
from .tasks import Task
from .core.batch import Progress, check_loss, no_progress


def resolve(kind: str, plugin: str | Plugin, registry: Registry | None = None) -> Plugin:
    """A plugin object from its name (looked up in the registry) or the object itself, which
    must implement the kind's interface with valid declarations (docs/plugins.md)."""
    if isinstance(plugin, str):
        return (registry or default_registry()).get(kind, plugin)
    interface = INTERFACES[kind]
    if not isinstance(plugin, interface):
        raise PrunekitError(f"expected a {kind} name or a prunekit.{interface.__name__} "
                            f"instance, got {plugin!r}")
    problem = contract.declaration_problem(plugin)
    if problem:
        raise contract.PluginError(plugin, problem)
    return plugin


def check_sparsity(sparsity: float) -> None:
    if not isinstance(sparsity, (int, float)) or not 0.0 < sparsity < 1.0:
        raise PrunekitError(f"sparsity must be strictly between 0 and 1, got {sparsity}")


def check_scope(thresholder: Thresholder, scope: str | None) -> None:
    if scope is not None and scope not in thresholder.scopes:
        raise PrunekitError(f"thresholder {thresholder.name!r} supports scope "
                            f"{' or '.join(thresholder.scopes)}, not {scope!r}")


def check_uncovered(policy: str) -> None:
    if policy not in UNCOVERED_POLICIES:
        raise UnknownNameError("policy for tensors the pattern cannot cover", policy,
                               UNCOVERED_POLICIES)


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
                  within: Masks | None = None,
                  input_shape: tuple[int, ...] | None = None,
                  pattern: str | Pattern | None = None, keep: int | None = None,
                  uncovered: str = "dense") -> PruneResult:
    """Score, threshold and merge: the masks at ``sparsity`` for every prunable tensor.

    The result also holds each task's own masks and the seconds spent scoring and pruning.

    ``tasks`` maps task names (the keys of the model's output dict and of the batch targets) to
    ``Task`` objects; ``batches`` yields the scoring batches, already on ``device``. ``seed``
    feeds scorers that draw random numbers; ``scope`` goes to the thresholder (None: its
    default); ``within`` limits the masks to weights still alive (iterative pruning);
    ``input_shape`` is one example input's shape, batch first, for data-free scorers.

    A scorer declaring ``rounds > 1`` is run round after round, the weights pruned so far
    zeroed while it scores. With ``compensate`` (or a joint scorer) masks that miss
    ``sparsity`` by more than ``contract.SPARSITY_TOLERANCE`` are an error naming the plugins.

    ``pattern`` ("2:4", any N:M) replaces the thresholder and ``sparsity``: every task keeps
    ``keep`` (default N) of each group of M on the tensors the pattern covers, shared tensors
    are merged keeping the pattern, and ``uncovered`` ("dense" or "unstructured") says what the
    other tensors do (``prunekit.core.semi_structured``).
    """
    if pattern is not None:
        pattern = pattern if isinstance(pattern, Pattern) else Pattern.parse(pattern)
        check_uncovered(uncovered)
        sparsity = 1.0 - (pattern.n if keep is None else keep) / pattern.m
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
                             progress, seed, input_shape=input_shape, rounds=scorer.rounds)
    merger = arbiter if scorer.per_task else None
    timings = {"scoring": 0.0, "pruning": 0.0}
    result = None
    steps = round_sparsities(sparsity, scorer.rounds, scorer.schedule)
    for number, round_sparsity in enumerate(steps, 1):
        alive = result.masks if result else within
        started = time.perf_counter()
        with pruned_weights_zeroed(resolved, alive):
            saliency = contract.score(scorer, dataclasses.replace(context, round=number))
        scored = time.perf_counter()
        if pattern is None:
            result = prune(saliency, resolved, thresholder, merger, round_sparsity, compensate,
                           scope, alive)
        else:  # the pattern fixes the sparsity; the rounds rescore between prunes
            result = prune_to_pattern(saliency, resolved, merger, pattern, keep, uncovered,
                                      alive)
        timings["scoring"] += scored - started
        timings["pruning"] += time.perf_counter() - scored
    result.timings = timings
    if pattern is None and (compensate or not scorer.per_task):
        contract.check_sparsity_reached(sparsity, result.achieved,
                                        [p for p in (scorer, thresholder, merger) if p])
    return result


@contextlib.contextmanager
def pruned_weights_zeroed(layout: ResolvedLayout, masks: Masks | None) -> Iterator[None]:
    """While inside, the weights outside ``masks`` are zero (as the scorer of a later round
    should see the model); their values come back after."""
    if masks is None:
        yield
        return
    saved = {name: layout.params[name].detach().clone() for name in masks}
    with torch.no_grad():
        for name, mask in masks.items():
            layout.params[name].masked_fill_(~mask.to(layout.params[name].device), 0.0)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, values in saved.items():
                layout.params[name].copy_(values)

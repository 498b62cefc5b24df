"""From saliency to final masks: threshold per task, merge shared tensors, hit the sparsity.

The union of K per-task masks on the shared tensors keeps more than each task asked for, so the
model ends up denser than requested. With ``compensate`` (the default) a bisection finds the
per-task keep ratio at which the achieved overall sparsity matches the requested one.

With an N:M pattern (``prune_to_pattern``) every task keeps ``keep`` of each group of M on the
tensors the pattern covers, and the merge keeps the pattern (``semi_structured.keep_pattern``);
the pattern fixes the sparsity, so nothing is bisected.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from . import contract
from ..errors import PrunekitError
from ..interfaces import JOINT, Arbiter, Masks, Saliency, Thresholder
from ..ops import topk_mask
from .layout import ResolvedLayout
from .masks import density
from .semi_structured import Pattern, coverage, keep_pattern, merge_priority, nm_mask

COMPENSATION_TOLERANCE = 5e-4  # stop the bisection within 0.05 points of the target density
MAX_BISECTION_STEPS = 40


@dataclass
class PruneResult:
    masks: Masks                          # the final mask of every prunable tensor
    task_masks: dict[str, Masks]          # each task's own mask over its tensors (or JOINT)
    keep_ratio: float                     # fraction each task kept of its own tensors
    requested: float                      # requested overall sparsity
    achieved: float                       # achieved overall sparsity
    bisection_steps: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    # the saliency the masks came from, for analysis (task overlap); set to None to free it
    saliency: Saliency | None = None


def round_sparsities(sparsity: float, rounds: int, schedule: str = "exponential") -> list[float]:
    """The sparsity after each of ``rounds`` prunes; the last is exactly ``sparsity``.

    ``exponential``: each round keeps the same share of what is left, 1 - (1 - S) ** (r / R)
    (iterative magnitude pruning, SynFlow). ``linear``: S * r / R.
    """
    if schedule == "linear":
        steps = [sparsity * r / rounds for r in range(1, rounds)]
    else:
        steps = [1 - (1 - sparsity) ** (r / rounds) for r in range(1, rounds)]
    return steps + [sparsity]


def check_finite(saliency: Saliency) -> None:
    for key, tensors in saliency.items():
        for name, scores in tensors.items():
            if not torch.isfinite(scores).all():
                raise PrunekitError(f"saliency of {name!r} for {key!r} is not finite (NaN or inf); "
                                    "the scoring loss or data is broken")


def restrict(masks: Masks, within: Masks | None) -> Masks:
    """Masks that keep nothing outside ``within`` (the weights still alive), when given."""
    if within is None:
        return masks
    return {name: mask & within[name].to(mask.device) for name, mask in masks.items()}


def merge_task_masks(task_masks: dict[str, Masks], layout: ResolvedLayout,
                     arbiter: Arbiter) -> Masks:
    """Shared tensors: the arbiter's merge of every task's mask. Heads: their own task's mask."""
    tasks = list(layout.heads)
    masks = {name: contract.merge(arbiter, [task_masks[t][name] for t in tasks], name)
             for name in layout.shared}
    for task in tasks:
        masks.update({name: task_masks[task][name] for name in layout.heads[task]})
    return {name: masks[name] for name in layout.params}  # model order


def per_task_masks(saliency: Saliency, layout: ResolvedLayout, thresholder: Thresholder,
                   keep_ratio: float, scope: str | None) -> dict[str, Masks]:
    return {task: contract.threshold(thresholder,
                                     {n: saliency[task][n] for n in layout.task_params(task)},
                                     keep_ratio, scope)
            for task in layout.heads}


def ranked_last_outside(saliency: Saliency, within: Masks | None) -> Saliency:
    """Scores in which weights outside ``within`` rank below every weight inside it.

    -inf, not a sentinel value: a scorer's own scores may be negative.
    """
    if within is None:
        return saliency
    return {key: {n: s.masked_fill(~within[n].to(s.device), -math.inf)
                  for n, s in tensors.items()}
            for key, tensors in saliency.items()}


def prune(saliency: Saliency, layout: ResolvedLayout, thresholder: Thresholder,
          arbiter: Arbiter | None, sparsity: float, compensate: bool = True,
          scope: str | None = None, within: Masks | None = None) -> PruneResult:
    """Masks at overall ``sparsity`` from joint or per-task saliency.

    ``scope`` goes to the thresholder. ``within`` (optional masks) are the weights still alive:
    nothing outside them is kept, as when iterative pruning tightens earlier masks.
    """
    check_finite(saliency)
    target = 1.0 - sparsity
    ranked = ranked_last_outside(saliency, within)
    if JOINT in saliency:
        scores = {n: ranked[JOINT][n] for n in layout.params}
        masks = restrict(contract.threshold(thresholder, scores, target, scope), within)
        return PruneResult(masks, {JOINT: masks}, target, sparsity, 1.0 - density(masks),
                           saliency=saliency)
    if arbiter is None:
        raise PrunekitError("per-task saliency needs an arbiter to merge the shared tensors")

    def attempt(keep_ratio: float):
        task_masks = per_task_masks(ranked, layout, thresholder, keep_ratio, scope)
        masks = restrict(merge_task_masks(task_masks, layout, arbiter), within)
        return task_masks, masks, density(masks)

    best = (target, *attempt(target))
    steps = 0
    if compensate:
        low, high = 0.0, 1.0
        while abs(best[3] - target) > COMPENSATION_TOLERANCE and steps < MAX_BISECTION_STEPS:
            ratio = (low + high) / 2
            candidate = (ratio, *attempt(ratio))
            steps += 1
            if abs(candidate[3] - target) < abs(best[3] - target):
                best = candidate
            if candidate[3] > target:
                high = ratio
            else:
                low = ratio
    keep_ratio, task_masks, masks, achieved_density = best
    return PruneResult(masks, task_masks, keep_ratio, sparsity, 1.0 - achieved_density, steps,
                       saliency=saliency)


def prune_to_pattern(saliency: Saliency, layout: ResolvedLayout, arbiter: Arbiter | None,
                     pattern: Pattern, keep: int | None = None, uncovered: str = "dense",
                     within: Masks | None = None) -> PruneResult:
    """Masks keeping ``keep`` (default ``pattern.n``) of every ``pattern.m`` weights in the
    tensors the pattern covers; the others stay dense or, with ``uncovered="unstructured"``,
    keep the same share by plain top-k of the tensor. On shared tensors the arbiter's merge is
    trimmed to the pattern (or to that share) by the tasks' summed normalised saliency."""
    check_finite(saliency)
    keep = pattern.n if keep is None else keep
    covered, _ = coverage(layout.params, pattern.m)
    covered = set(covered)
    ranked = ranked_last_outside(saliency, within)

    def task_mask(scores: torch.Tensor, name: str) -> torch.Tensor:
        if name in covered:
            return nm_mask(scores, keep, pattern.m)
        if uncovered == "dense":
            return torch.ones_like(scores, dtype=torch.bool)
        return topk_mask(scores, round(scores.numel() * keep / pattern.m))

    task_masks = {key: {n: task_mask(s, n) for n, s in tensors.items()}
                  for key, tensors in ranked.items()}
    if JOINT in saliency:
        masks = {n: task_masks[JOINT][n] for n in layout.params}
    elif arbiter is None:
        raise PrunekitError("per-task saliency needs an arbiter to merge the shared tensors")
    else:
        masks = merge_task_masks(task_masks, layout, arbiter)
        totals = {task: sum(float(s.sum()) for s in tensors.values())
                  for task, tensors in saliency.items()}
        for name in layout.shared:
            if name not in covered and uncovered == "dense":
                continue
            priority = merge_priority({t: saliency[t][name] for t in layout.tasks},
                                      {t: task_masks[t][name] for t in layout.tasks}, totals)
            if name in covered:
                masks[name] = keep_pattern(masks[name], priority, keep, pattern.m)
            else:  # the same share as the pattern's, of what the arbiter kept
                count = min(int(masks[name].sum()), round(masks[name].numel() * keep / pattern.m))
                masks[name] = topk_mask(priority.masked_fill(~masks[name], -math.inf), count)
    masks = restrict(masks, within)
    achieved = 1.0 - density(masks)
    return PruneResult(masks, task_masks, keep / pattern.m, 1.0 - keep / pattern.m, achieved,
                       saliency=saliency)

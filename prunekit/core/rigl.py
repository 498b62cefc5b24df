"""Dynamic sparse training as in RigL (Evci et al., 2020): drop weak weights, grow new ones.

Every ``interval`` steps until ``end``, each tensor drops the fraction
alpha/2 * (1 + cos(pi * t / end)) of its active weights with the smallest magnitude and grows the
same number of inactive ones with the highest grow score (the dense gradient's magnitude), never
one it has just dropped. Regrown weights start at zero with their optimiser moments reset, and
every tensor keeps exactly its number of active weights.

With per-task grow scores (``disparse-rigl``) each task proposes its best candidates on a shared
tensor and the arbiter merges the proposals; the merged set is trimmed, or filled, to exactly the
number dropped by the sum of the tasks' scores. Heads grow by their own task's score.

With an N:M pattern, each tensor the pattern covers grows inside the groups it dropped from, as
many as each group dropped (``semi_structured.regrow_in_groups``), by the summed grow score of the
tasks (a head: its task's), so every group keeps its count and the pattern holds.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Mapping

import torch
from torch import nn

from . import contract
from . import distributed
from ..interfaces import JOINT, Arbiter, Saliency, Scorer, ScoringContext
from .layout import ResolvedLayout
from .masks import AppliedMasks
from .semi_structured import Pattern, coverage, regrow_in_groups
from ..ops import topk_mask
from ..tasks import Task
from .batch import check_loss


@dataclass(frozen=True)
class RigLSchedule:
    interval: int        # steps between updates
    end: int             # no update at or after this step
    alpha: float = 0.3   # drop fraction at step 0, cosine-decayed to 0 at ``end``

    @classmethod
    def for_training(cls, iterations: int, interval: int, end_share: float,
                     alpha: float) -> "RigLSchedule":
        """Updates every ``interval`` steps until ``end_share`` of ``iterations``."""
        return cls(interval, max(1, round(end_share * iterations)), alpha)

    @property
    def updates(self) -> int:
        """How many updates fall due in a whole training run."""
        return (self.end - 1) // self.interval

    def due(self, step: int) -> bool:
        return step > 0 and step % self.interval == 0 and step < self.end

    def drop_fraction(self, step: int) -> float:
        return self.alpha / 2 * (1 + math.cos(math.pi * step / self.end))


def best(scores: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` highest ``scores`` among ``allowed`` (ties to the lower index)."""
    return topk_mask(scores.masked_fill(~allowed, -math.inf), count) & allowed


def weakest(weight: torch.Tensor, active: torch.Tensor, count: int) -> torch.Tensor:
    """Mask of the ``count`` active weights of smallest magnitude."""
    return best(-weight.detach().abs().float(), active, count)


def merged_growth(proposals: list[torch.Tensor], combined: torch.Tensor, candidates: torch.Tensor,
                  count: int, arbiter: Arbiter, name: str) -> torch.Tensor:
    """Exactly ``count`` candidates: the arbiter's merge first, by ``combined`` score either way."""
    merged = contract.merge(arbiter, proposals, name) & candidates
    if int(merged.sum()) >= count:
        return best(combined, merged, count)
    return merged | best(combined, candidates & ~merged, count - int(merged.sum()))


def reset_optimiser_state(optimiser: torch.optim.Optimizer, param: nn.Parameter,
                          where: torch.Tensor) -> None:
    """Zero the per-element optimiser state (Adam's moments) of ``param`` at ``where``.

    Per-tensor state such as Adam's step count is shared by the whole tensor and stays, as in
    RigL's reference code.
    """
    for value in optimiser.state.get(param, {}).values():
        if torch.is_tensor(value) and value.shape == param.shape:
            value.masked_fill_(where, 0)


@dataclass
class RigLUpdater:
    """Called after every optimiser step; updates the applied masks in place when due."""

    model: nn.Module
    layout: ResolvedLayout
    tasks: Mapping[str, Task]
    masks: AppliedMasks
    scorer: Scorer
    arbiter: Arbiter
    schedule: RigLSchedule
    seed: int = 0
    pattern: Pattern | None = None
    updates: int = 0
    regrown: int = 0
    seconds: float = 0.0
    history: list[dict] = field(default_factory=list)

    def __post_init__(self):
        self.covered = (set(coverage(self.layout.params, self.pattern.m)[0]) if self.pattern
                        else set())

    def state_dict(self) -> dict:
        """The counts and history a resumed run goes on from (the masks are the run's)."""
        return {"updates": self.updates, "regrown": self.regrown, "seconds": self.seconds,
                "history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.updates, self.regrown = state["updates"], state["regrown"]
        self.seconds, self.history = state["seconds"], list(state["history"])

    def __call__(self, step: int, batch: dict, optimiser: torch.optim.Optimizer) -> None:
        if self.schedule.due(step + 1):
            started = time.perf_counter()
            self.update(step + 1, batch, optimiser)
            self.seconds += time.perf_counter() - started

    def grow_scores(self, batch: dict) -> Saliency:
        device = batch["image"].device
        context = ScoringContext(self.model, self.layout, self.tasks, [batch], device, check_loss,
                                 seed=self.seed, input_shape=(1, *batch["image"].shape[1:]))
        return contract.score(self.scorer, context)

    def growth(self, name: str, saliency: Saliency, candidates: torch.Tensor,
               count: int) -> torch.Tensor:
        if JOINT in saliency:
            return best(saliency[JOINT][name], candidates, count)
        if name not in self.layout.shared:  # a head: its own task decides
            return best(saliency[self.layout.owner(name)][name], candidates, count)
        scores = [saliency[task][name] for task in self.layout.tasks]
        proposals = [best(s, candidates, count) for s in scores]
        return merged_growth(proposals, torch.stack(scores).sum(0), candidates, count,
                             self.arbiter, name)

    def summed_score(self, name: str, saliency: Saliency) -> torch.Tensor:
        """The grow score of ``name``: the joint one, a head's task's, or the tasks' sum."""
        if JOINT in saliency:
            return saliency[JOINT][name]
        if name not in self.layout.shared:
            return saliency[self.layout.owner(name)][name]
        return torch.stack([saliency[task][name] for task in self.layout.tasks]).sum(0)

    @torch.no_grad()
    def update(self, step: int, batch: dict, optimiser: torch.optim.Optimizer) -> None:
        fraction = self.schedule.drop_fraction(step)
        with torch.enable_grad():
            saliency = self.grow_scores(batch)
        params = self.layout.params
        changed = 0
        for name, mask in self.masks.named_masks().items():
            active = int(mask.sum())
            count = min(round(fraction * active), mask.numel() - active)
            if count <= 0:
                continue
            candidates = ~mask  # inactive before the drop: what was just dropped cannot regrow
            dropped = weakest(params[name], mask, count)
            if name in self.covered:
                grow = regrow_in_groups(self.summed_score(name, saliency), candidates, dropped,
                                        self.pattern.m)
            else:
                grow = self.growth(name, saliency, candidates, count)
            updated = mask & ~dropped | grow
            distributed.from_writer([updated])  # under torchrun rank 0 decides for every rank
            grown = updated & ~mask
            mask.copy_(updated)
            params[name].masked_fill_(grown, 0.0)  # even if the caller left stale values there
            reset_optimiser_state(optimiser, params[name], grown)
            changed += int(grown.sum())
        self.masks.zero_pruned()
        self.updates += 1
        self.regrown += changed
        self.history.append({"step": step, "drop_fraction": fraction, "regrown": changed})

"""Arbiters merge the per-task masks of a shared tensor, element by element (DiSparse)."""
from __future__ import annotations

from typing import Sequence

import torch

from prunekit import Arbiter, hookimpl


class UnionArbiter(Arbiter):
    name = "or"
    description = "keep an element when any task keeps it (union)"

    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(masks)).any(dim=0)


class IntersectionArbiter(Arbiter):
    name = "and"
    description = "keep an element only when every task keeps it (intersection)"

    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack(list(masks)).all(dim=0)


class MajorityArbiter(Arbiter):
    name = "majority"
    description = "keep an element when more than half of the tasks keep it (3+ tasks)"
    min_tasks = 3

    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        votes = torch.stack(list(masks)).sum(dim=0)
        return votes * 2 > len(masks)


@hookimpl
def prunekit_register_arbiters(register):
    register(UnionArbiter())
    register(IntersectionArbiter())
    register(MajorityArbiter())

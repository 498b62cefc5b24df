"""A weighted vote over the tasks' masks of a shared tensor."""
from __future__ import annotations

from typing import Sequence

import torch

from prunekit import Arbiter


class WeightedVoteArbiter(Arbiter):
    """Keep an element when the tasks keeping it hold at least half of the vote.

    A task's vote weighs by the inverse of its mask's density on this tensor: a task that keeps
    few of the tensor's weights is surer of each one it keeps than a task keeping most of them.
    With equal densities this is a majority vote with ties kept.
    """

    name = "example-weighted-vote"
    description = "keep an element when tasks holding half the vote keep it; sparser tasks weigh more"

    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        stacked = torch.stack([m.flatten() for m in masks]).to(torch.float64)
        if stacked.shape[1] == 0:
            return masks[0].clone()
        # a task keeping nothing of this tensor weighs as one keeping a single element
        density = stacked.mean(dim=1).clamp_min(1.0 / stacked.shape[1])
        weights = 1.0 / density
        share = (weights[:, None] * stacked).sum(dim=0) / weights.sum()
        return (share >= 0.5).reshape(masks[0].shape)

"""Random pruning: uniform scores drawn from the run's seed, the same on every device."""
from __future__ import annotations

import torch

from prunekit import JOINT, Scorer, ScoringContext, hookimpl


class RandomScorer(Scorer):
    name = "random"
    description = "uniform random scores from the run's seed (the random-pruning baseline)"
    per_task = False
    needs_data = False

    def score(self, context: ScoringContext):
        generator = torch.Generator().manual_seed(context.seed)  # CPU draws: device-independent
        return {JOINT: {name: torch.rand(param.shape, generator=generator).to(param.device)
                        for name, param in context.layout.params.items()}}


@hookimpl
def prunekit_register_scorers(register):
    register(RandomScorer())

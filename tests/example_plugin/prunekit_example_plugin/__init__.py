"""A minimal third-party prunekit plugin: one scorer and one arbiter.

prunekit finds this module through the entry point ``example = prunekit_example_plugin`` in the
group ``prunekit`` (see pyproject.toml) and calls its ``prunekit_register_*`` hooks.
"""
from __future__ import annotations

from typing import Sequence

import torch

from prunekit import JOINT, Arbiter, Saliency, Scorer, ScoringContext, hookimpl


class MagnitudeScorer(Scorer):
    name = "example-magnitude"
    description = "weight magnitude |w| of every prunable tensor, one joint saliency, no data"
    per_task = False
    needs_data = False

    def score(self, context: ScoringContext) -> Saliency:
        # Only the weights matter; context.batches is never read.
        return {JOINT: {name: param.detach().abs()
                        for name, param in context.layout.params.items()}}


class FirstTaskArbiter(Arbiter):
    name = "example-first"
    description = "keep the first task's mask of each shared tensor"

    def merge(self, masks: Sequence[torch.Tensor]) -> torch.Tensor:
        return masks[0].clone()


@hookimpl
def prunekit_register_scorers(register):
    register(MagnitudeScorer())


@hookimpl
def prunekit_register_arbiters(register):
    register(FirstTaskArbiter())

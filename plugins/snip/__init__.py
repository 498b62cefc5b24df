"""SNIP connection sensitivity, joint (``snip``) and per task as in DiSparse (``disparse-snip``).

For a mask m multiplying each weight, |dL/dm| at m = 1 equals |w * dL/dw|; it is summed over the
scoring batches (as the DiSparse reference does) and normalised to sum to one over the tensors a
task scores (its head and the shared backbone).
"""
from __future__ import annotations

import torch

from prunekit import Scorer, ScoringContext, hookimpl
from prunekit.saliency import accumulate_scores, normalise


def connection_sensitivity(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return (weight * grad).abs()


class SnipScorer(Scorer):
    name = "snip"
    description = "SNIP: |dL/dm| of the summed multi-task loss, one joint saliency"
    per_task = False

    def score(self, context: ScoringContext):
        return normalise(accumulate_scores(context, connection_sensitivity, per_task=False))


class DisparseSnipScorer(Scorer):
    name = "disparse-snip"
    description = "DiSparse static: per-task |dL_k/dm| over the shared tensors and task k's head"
    per_task = True

    def score(self, context: ScoringContext):
        return normalise(accumulate_scores(context, connection_sensitivity, per_task=True))


@hookimpl
def prunekit_register_scorers(register):
    register(SnipScorer())
    register(DisparseSnipScorer())

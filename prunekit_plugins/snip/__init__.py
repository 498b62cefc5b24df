"""SNIP connection sensitivity, joint (``snip``) and per task as in DiSparse (``disparse-snip``).

For a mask m multiplying each weight, |dL/dm| at m = 1 equals |w * dL/dw|; it is summed over the
scoring batches (as the DiSparse reference does) and normalised to sum to one over the tensors a
task scores (its head and the shared backbone).

Where this differs from the DiSparse reference code: it scores the model's own weights (the
reference re-draws Xavier-normal weights in a scoring copy, then masks the original), runs one
forward pass per batch for all tasks (the reference runs one per task; the same gradients up to
dropout noise), and the thresholder keeps exactly k weights (the reference keeps every score
>= the k-th, so ties can keep more).
"""
from __future__ import annotations

import torch

from prunekit import GradientScorer, hookimpl


class SnipScorer(GradientScorer):
    name = "snip"
    description = "SNIP: |dL/dm| of the summed multi-task loss, one joint saliency"
    per_task = False

    @staticmethod
    def criterion(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return (weight * grad).abs()  # |dL/dm| for a mask m = 1 multiplying the weight


class DisparseSnipScorer(SnipScorer):
    name = "disparse-snip"
    description = "DiSparse static: per-task |dL_k/dm| over the shared tensors and task k's head"
    per_task = True


@hookimpl
def prunekit_register_scorers(register):
    register(SnipScorer())
    register(DisparseSnipScorer())

"""RigL's grow score: |dL/dw| of the dense gradient, including at pruned (zero) weights.

Pruned weights are zero but still receive a gradient, so this ranks connections that do not
exist yet; dynamic sparse training (``--mode dynamic``) grows the best-ranked ones. ``rigl``
scores the summed loss; ``disparse-rigl`` scores each task, whose growth proposals on the shared
tensors an arbiter merges. Used as a static scorer it ranks weights by gradient magnitude.
"""
from __future__ import annotations

import torch

from prunekit import GradientScorer, hookimpl


class RigLScorer(GradientScorer):
    name = "rigl"
    description = "RigL grow score: |dL/dw| of the dense gradient of the summed loss"
    per_task = False
    grows = True

    @staticmethod
    def criterion(weight: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        return grad.abs()


class DisparseRigLScorer(RigLScorer):
    name = "disparse-rigl"
    description = "per-task RigL grow score |dL_k/dw| over the shared tensors and task k's head"
    per_task = True


@hookimpl
def prunekit_register_scorers(register):
    register(RigLScorer())
    register(DisparseRigLScorer())
